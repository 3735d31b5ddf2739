//! The HTTP port: `/metrics` after known traffic (one server in this test binary, so the
//! counts are exact) and `/healthz`.

mod common;

use std::net::SocketAddr;

use common::metrics::sample;
use common::{TestServer, code, instance};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain HTTP/1.1 GET; returns the status code and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic_and_healthz_answers() {
    let t = TestServer::start(|_| {}).await;
    let http = t.server.http_addr();
    let (status, body) = get(http, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    let mut client = t.client().await;
    for port in 1..=3 {
        let answer = client
            .register_instance(instance("m", "svc", "10.0.0.1", port))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(code(&answer), 200_000);
    }
    let again = client
        .register_instance(instance("m", "svc", "10.0.0.1", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&again), 400_201);
    let bad = client
        .register_instance(instance("m", "svc", "", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&bad), 400_131);
    let gone = client
        .deregister_instance(instance("m", "svc", "10.0.0.1", 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&gone), 200_000);

    let (status, body) = get(http, "/metrics").await;
    assert_eq!(status, 200);
    let requests = |api: &str, code: &str| {
        sample(
            &body,
            &format!("batchreg_requests_total{{api=\"{api}\",protocol=\"grpc\",code=\"{code}\"}}"),
        )
    };
    assert_eq!(requests("register", "200000"), Some(3.0), "{body}");
    assert_eq!(requests("register", "400201"), Some(1.0));
    assert_eq!(requests("register", "400131"), Some(1.0));
    assert_eq!(requests("deregister", "200000"), Some(1.0));
    assert_eq!(
        sample(
            &body,
            "batchreg_request_duration_seconds_count{api=\"register\",protocol=\"grpc\"}"
        ),
        Some(5.0)
    );
    // Three register requests reached the batch layer: not the invalid one, and not
    // the unchanged one, which the registry cache answers on the embedded store.
    assert_eq!(
        sample(&body, "batchreg_queue_wait_seconds_count{api=\"register\"}"),
        Some(3.0)
    );
    assert_eq!(
        sample(&body, "batchreg_batch_size_requests_sum{api=\"register\"}"),
        Some(3.0)
    );
    let flushes: f64 = ["size", "timeout", "idle", "shutdown"]
        .iter()
        .filter_map(|r| {
            sample(
                &body,
                &format!("batchreg_batch_flushes_total{{api=\"register\",reason=\"{r}\"}}"),
            )
        })
        .sum();
    assert_eq!(
        Some(flushes),
        sample(
            &body,
            "batchreg_batch_size_requests_count{api=\"register\"}"
        )
    );
    assert!(body.contains(
        "batchreg_request_duration_seconds_bucket{api=\"register\",protocol=\"grpc\",le=\"0.005\"}"
    ));
    assert!(body.contains("batchreg_queue_depth_requests{api=\"register\"}"));
    // One store transaction per flushed batch (no retries here).
    assert_eq!(
        sample(
            &body,
            "batchreg_store_transaction_duration_seconds_count{engine=\"sqlite\",operation=\"register\",outcome=\"ok\"}"
        ),
        sample(
            &body,
            "batchreg_batch_size_requests_count{api=\"register\"}"
        )
    );
    assert!(
        sample(&body, "batchreg_process_resident_memory_bytes").is_some_and(|v| v > 1e6),
        "{body}"
    );
    assert!(sample(&body, "batchreg_process_open_fds").is_some_and(|v| v > 3.0));
    assert!(sample(&body, "batchreg_process_cpu_seconds_total").is_some());

    // The per-namespace gauges are refreshed from the store every few seconds: 2 instances
    // (3 registered, 1 deregistered) of 1 service in namespace "m".
    let mut counted = None;
    for _ in 0..100 {
        let (_, body) = get(http, "/metrics").await;
        counted = sample(&body, "batchreg_instances_registered{namespace=\"m\"}").zip(sample(
            &body,
            "batchreg_services_registered{namespace=\"m\"}",
        ));
        if counted == Some((2.0, 1.0)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(counted, Some((2.0, 1.0)));

    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_can_be_switched_off() {
    let t = TestServer::start(|c| c.telemetry.metrics = false).await;
    let (status, _) = get(t.server.http_addr(), "/metrics").await;
    assert_eq!(status, 404);
    t.server.shutdown().await.unwrap();
}
