//! The token check, over real gRPC.

mod common;

use common::{TestServer, code, instance};
use tonic::Request;

fn with_auth(config: &mut batchreg::config::Config) {
    config.auth.enabled = true;
    config.auth.tokens = vec![batchreg::config::TokenConfig {
        token: "right-token".to_owned(),
        allow: vec!["prod/*".to_owned()],
    }];
}

/// Everything the server logs in this test binary, at every level.
#[derive(Clone, Default)]
struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn missing_wrong_and_right_tokens() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .init();
    tracing::info!("log capture works");
    let t = TestServer::start(with_auth).await;
    let mut client = t.client().await;

    let missing = client
        .register_instance(instance("prod", "pay", "10.0.0.1", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&missing), 401_002, "{missing:?}");

    let mut wrong = Request::new(instance("prod", "pay", "10.0.0.1", 1));
    wrong
        .metadata_mut()
        .insert("x-polaris-token", "wrong-token".parse().unwrap());
    let wrong = client.register_instance(wrong).await.unwrap().into_inner();
    assert_eq!(code(&wrong), 401_001, "{wrong:?}");
    assert!(
        !wrong.info.unwrap().contains("wrong-token"),
        "the token is never echoed"
    );

    let mut other_namespace = Request::new(instance("staging", "pay", "10.0.0.1", 1));
    other_namespace
        .metadata_mut()
        .insert("x-polaris-token", "right-token".parse().unwrap());
    assert_eq!(
        code(
            &client
                .register_instance(other_namespace)
                .await
                .unwrap()
                .into_inner()
        ),
        401_001
    );
    assert_eq!(
        t.live_instances(),
        0,
        "nothing written for refused requests"
    );

    let mut right = Request::new(instance("prod", "pay", "10.0.0.1", 1));
    right
        .metadata_mut()
        .insert("x-polaris-token", "right-token".parse().unwrap());
    let right = client.register_instance(right).await.unwrap().into_inner();
    assert_eq!(code(&right), 200_000, "{right:?}");
    assert_eq!(
        right.instance.as_ref().unwrap().service_token,
        None,
        "the token is never echoed"
    );

    // The instance's own service_token counts too.
    let mut own = instance("prod", "pay", "10.0.0.1", 2);
    own.service_token = Some("right-token".to_owned());
    assert_eq!(
        code(
            &client
                .register_instance(own.clone())
                .await
                .unwrap()
                .into_inner()
        ),
        200_000
    );
    assert_eq!(t.live_instances(), 2);

    // Deregister is guarded the same way.
    let mut no_token = own.clone();
    no_token.service_token = None;
    assert_eq!(
        code(
            &client
                .deregister_instance(no_token)
                .await
                .unwrap()
                .into_inner()
        ),
        401_002
    );
    assert_eq!(t.live_instances(), 2);
    assert_eq!(
        code(&client.deregister_instance(own).await.unwrap().into_inner()),
        200_000
    );
    assert_eq!(t.live_instances(), 1);
    t.server.shutdown().await.unwrap();
}
