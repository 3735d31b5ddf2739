#![allow(dead_code)]

//! Discover for the tests: requests, one stream carrying several, answers by id.

use std::collections::HashMap;

pub use batchreg::proto::discover_request::DiscoverRequestType;
use batchreg::proto::polaris_grpc_client::PolarisGrpcClient;
use batchreg::proto::{self, DiscoverRequest, DiscoverResponse, Instance};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// A Discover request of `kind` for a service, with the revision the client holds.
pub fn request(
    kind: DiscoverRequestType,
    namespace: &str,
    name: &str,
    revision: &str,
) -> DiscoverRequest {
    DiscoverRequest {
        r#type: kind as i32,
        service: Some(proto::Service {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            revision: Some(revision.to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One stream: sends every request, then reads as many answers.
pub async fn discover_all(
    client: &mut PolarisGrpcClient<Channel>,
    requests: Vec<DiscoverRequest>,
) -> Vec<DiscoverResponse> {
    let (tx, rx) = mpsc::channel(requests.len().max(1));
    let count = requests.len();
    for request in requests {
        tx.send(request).await.unwrap();
    }
    let mut answers = client
        .discover(ReceiverStream::new(rx))
        .await
        .expect("the stream opens")
        .into_inner();
    let mut got = Vec::with_capacity(count);
    for _ in 0..count {
        got.push(
            answers
                .message()
                .await
                .expect("no stream error")
                .expect("one answer per request"),
        );
    }
    drop(tx);
    got
}

/// One request on a stream of its own.
pub async fn discover(
    client: &mut PolarisGrpcClient<Channel>,
    request: DiscoverRequest,
) -> DiscoverResponse {
    discover_all(client, vec![request]).await.remove(0)
}

/// The instances of an answer, by id.
pub fn by_id(answer: &DiscoverResponse) -> HashMap<String, Instance> {
    answer
        .instances
        .iter()
        .map(|i| (i.id.clone().unwrap(), i.clone()))
        .collect()
}
