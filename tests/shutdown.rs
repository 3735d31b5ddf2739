//! Shutdown under load, over real gRPC: every request the server accepted is answered
//! with a Polaris code and its instance is stored; every other one is refused with
//! UNAVAILABLE (not processed), never CANCELLED; an open Discover stream ends with
//! UNAVAILABLE instead of holding the server open.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use batchreg::proto::{self, DiscoverRequest};
use common::{TestServer, code, expected_id, instance};
use tokio_stream::StreamExt;

const SUCCESS: u32 = 200_000;

/// What one registration got.
enum Outcome {
    Answered { id: String, code: u32 },
    Refused(tonic::Code),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_cut_by_shutdown_is_answered_or_refused_as_not_processed() {
    let t = TestServer::start(|_| {}).await;
    let db_path = t.db_path.clone();
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(t.client().await);
    }
    let sent = Arc::new(AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for worker in 0..64u32 {
        let mut client = clients[worker as usize % clients.len()].clone();
        let sent = Arc::clone(&sent);
        // Each sends one registration after the other, as a starting fleet does, and
        // stops at its first refusal, as an SDK turns to another server.
        senders.spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0.. {
                sent.fetch_add(1, Ordering::Relaxed);
                let host = format!("10.9.{worker}.{}", i % 250);
                let port = 30_000 + i / 250;
                let id = expected_id("drain", "svc", &host, port);
                match client
                    .register_instance(instance("drain", "svc", &host, port))
                    .await
                {
                    Ok(answer) => outcomes.push(Outcome::Answered {
                        id,
                        code: code(&answer.into_inner()),
                    }),
                    Err(status) => {
                        outcomes.push(Outcome::Refused(status.code()));
                        return outcomes;
                    }
                }
            }
            outcomes
        });
    }
    // A Discover stream open across the shutdown.
    let mut watcher = t.client().await;
    let (requests, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = watcher
        .discover(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("Discover stream opens")
        .into_inner();
    let request = DiscoverRequest {
        r#type: proto::discover_request::DiscoverRequestType::Instance as i32,
        service: Some(proto::Service {
            name: Some("svc".to_owned()),
            namespace: Some("drain".to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    };
    requests.send(request).await.unwrap();
    let first = answers.next().await.expect("an answer").expect("gRPC OK");
    assert!(first.code.is_some());

    // Let the storm run, then stop the server in the middle of it.
    while sent.load(Ordering::Relaxed) < 3_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t.server.shutdown().await.expect("clean shutdown");

    let mut answered = Vec::new();
    let mut refused = 0;
    while let Some(joined) = senders.join_next().await {
        for outcome in joined.unwrap() {
            match outcome {
                Outcome::Answered { id, code } => {
                    assert_eq!(code, SUCCESS, "an accepted request is written");
                    answered.push(id);
                }
                Outcome::Refused(status) => {
                    assert_eq!(
                        status,
                        tonic::Code::Unavailable,
                        "a request the server did not process is refused as such"
                    );
                    refused += 1;
                }
            }
        }
    }
    assert_eq!(refused, 64, "each sender stopped at a refusal");
    assert!(answered.len() >= 3_000 - 64, "answered {}", answered.len());
    let ended = answers.next().await;
    assert!(
        matches!(&ended, Some(Err(status)) if status.code() == tonic::Code::Unavailable),
        "the Discover stream ends with UNAVAILABLE: {ended:?}"
    );

    // Every answered registration is stored, and nothing else.
    let db = rusqlite::Connection::open(&db_path).unwrap();
    let live: i64 = db
        .query_row("SELECT count(*) FROM instance WHERE flag = 0", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(live as usize, answered.len());
    let mut find = db
        .prepare("SELECT count(*) FROM instance WHERE id = ?1 AND flag = 0")
        .unwrap();
    for id in &answered {
        let found: i64 = find.query_row([id], |r| r.get(0)).unwrap();
        assert_eq!(found, 1, "answered {id} is stored");
    }
}
