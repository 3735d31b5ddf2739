//! One Discover stream as a Polaris SDK holds it: requests go out one at a time and
//! the server answers each, in order, on the same stream. A stream that fails or
//! falls silent is dropped, and the next request opens a new one. Answers are read
//! whole ([`DiscoverResponse`]), or for the instances' health only ([`HealthListing`]).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

use crate::proto::discover_request::DiscoverRequestType;
use crate::proto::{self, DiscoverRequest, DiscoverResponse};
use crate::report::Outcome;
use crate::scenario::{RequestHeaders, failure_of};

const DISCOVER_PATH: &str = "/v1.PolarisGRPC/Discover";

/// A Discover answer read for its instances' health only: prost skips every other
/// field unread, so a listing of thousands of instances costs a fraction of a full
/// decode. Its fields carry the tags of [`DiscoverResponse`]'s.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthListing {
    #[prost(message, optional, tag = "1")]
    pub code: Option<u32>,
    #[prost(message, optional, tag = "4")]
    pub service: Option<ListedRevision>,
    #[prost(message, repeated, tag = "5")]
    pub instances: Vec<InstanceHealth>,
}

/// The revision of a listed service ([`proto::Service`]'s).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListedRevision {
    #[prost(message, optional, tag = "15")]
    pub revision: Option<String>,
}

/// A listed instance's id and health ([`proto::Instance`]'s).
#[derive(Clone, PartialEq, prost::Message)]
pub struct InstanceHealth {
    #[prost(message, optional, tag = "1")]
    pub id: Option<String>,
    #[prost(message, optional, tag = "11")]
    pub healthy: Option<bool>,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("Discover failed")]
    Status(#[from] tonic::Status),
    #[error("no Discover answer within {0:?}")]
    TimedOut(Duration),
    #[error("the server ended the Discover stream before answering")]
    Ended,
}

impl DiscoverError {
    pub fn outcome(&self) -> Outcome {
        match self {
            DiscoverError::Status(status) => failure_of(status),
            DiscoverError::TimedOut(_) => Outcome::Timeout,
            DiscoverError::Ended => Outcome::StreamEnded,
        }
    }
}

/// A Discover stream on one connection, opened by its first request; its answers are
/// read as `Answer`.
pub struct DiscoverStream<Answer = DiscoverResponse> {
    grpc: tonic::client::Grpc<Channel>,
    headers: RequestHeaders,
    /// Sent as `request-id` with each opening of the stream.
    request_id: String,
    timeout: Duration,
    open: Option<OpenStream<Answer>>,
}

/// The two halves of an open stream.
struct OpenStream<Answer> {
    requests: mpsc::Sender<DiscoverRequest>,
    answers: tonic::Streaming<Answer>,
}

impl<Answer: prost::Message + Default + Send + 'static> DiscoverStream<Answer> {
    /// A stream not opened yet, on `grpc`'s connection; `timeout` bounds each answer.
    pub fn new(
        grpc: tonic::client::Grpc<Channel>,
        headers: RequestHeaders,
        request_id: String,
        timeout: Duration,
    ) -> Self {
        DiscoverStream {
            grpc,
            headers,
            request_id,
            timeout,
            open: None,
        }
    }

    /// Sends `request` and waits for its answer, opening the stream first when it is
    /// not open; the timeout counts from here.
    pub async fn ask(&mut self, request: DiscoverRequest) -> Result<Answer, DiscoverError> {
        let answer = tokio::time::timeout(self.timeout, self.exchange(request))
            .await
            .unwrap_or(Err(DiscoverError::TimedOut(self.timeout)));
        if answer.is_err() {
            // A late answer would be taken for the next request's.
            self.open = None;
        }
        answer
    }

    async fn exchange(&mut self, request: DiscoverRequest) -> Result<Answer, DiscoverError> {
        let open = match self.open.take() {
            Some(open) => {
                // The receiver is gone only with the stream, whose answers say why.
                let _ = open.requests.send(request).await;
                open
            }
            None => self.open_with(request).await?,
        };
        let open = self.open.insert(open);
        open.answers.message().await?.ok_or(DiscoverError::Ended)
    }

    /// Opens a stream with `first` already queued: a server may hold back its
    /// response headers until it answers a request.
    async fn open_with(
        &mut self,
        first: DiscoverRequest,
    ) -> Result<OpenStream<Answer>, DiscoverError> {
        let (requests, outgoing) = mpsc::channel(1);
        requests
            .try_send(first)
            .expect("a new channel has room for one request");
        let mut call = tonic::Request::new(ReceiverStream::new(outgoing));
        self.headers.apply(&mut call, &self.request_id);
        // What the generated client's `discover` does, with `Answer` for the answers.
        self.grpc
            .ready()
            .await
            .map_err(|error| tonic::Status::unknown(format!("Service was not ready: {error}")))?;
        let codec = tonic_prost::ProstCodec::<DiscoverRequest, Answer>::default();
        let path = PathAndQuery::from_static(DISCOVER_PATH);
        let answers = self.grpc.streaming(call, path, codec).await?.into_inner();
        Ok(OpenStream { requests, answers })
    }
}

/// A request for the instances of `namespace`/`service`, with the revision of the
/// last full answer when there is one.
pub fn instances_request(
    namespace: &str,
    service: &str,
    revision: Option<String>,
) -> DiscoverRequest {
    DiscoverRequest {
        r#type: DiscoverRequestType::Instance as i32,
        service: Some(proto::Service {
            name: Some(service.to_owned()),
            namespace: Some(namespace.to_owned()),
            revision,
            ..Default::default()
        }),
        filter: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_become_outcomes() {
        let outcome = DiscoverError::Status(tonic::Status::unimplemented("no")).outcome();
        assert_eq!(outcome, Outcome::Grpc(tonic::Code::Unimplemented));
        assert_eq!(
            DiscoverError::TimedOut(Duration::from_secs(1)).outcome(),
            Outcome::Timeout
        );
        assert_eq!(DiscoverError::Ended.outcome(), Outcome::StreamEnded);
    }

    #[test]
    fn a_health_listing_reads_the_fields_of_a_full_answer() {
        use prost::Message;
        let instance = |id: &str, healthy| proto::Instance {
            id: Some(id.to_owned()),
            host: Some("10.0.0.1".to_owned()),
            port: Some(8080),
            healthy,
            metadata: [("k0".to_owned(), "v".repeat(16))].into(),
            ..Default::default()
        };
        let full = DiscoverResponse {
            code: Some(200000),
            info: Some("ok".to_owned()),
            service: Some(proto::Service {
                name: Some("svc".to_owned()),
                revision: Some("r7".to_owned()),
                ..Default::default()
            }),
            instances: vec![
                instance("a", Some(true)),
                instance("b", Some(false)),
                instance("c", None),
            ],
            ..Default::default()
        };
        let listing = HealthListing::decode(full.encode_to_vec().as_slice()).unwrap();
        assert_eq!(listing.code, Some(200000));
        assert_eq!(listing.service.unwrap().revision.as_deref(), Some("r7"));
        let health: Vec<_> = listing
            .instances
            .iter()
            .map(|instance| (instance.id.as_deref().unwrap(), instance.healthy))
            .collect();
        assert_eq!(health, [("a", Some(true)), ("b", Some(false)), ("c", None)]);
    }

    #[test]
    fn a_request_names_the_service_and_its_revision() {
        let request = instances_request("ns", "svc", Some("r1".to_owned()));
        assert_eq!(request.r#type, DiscoverRequestType::Instance as i32);
        let service = request.service.unwrap();
        assert_eq!(service.namespace.as_deref(), Some("ns"));
        assert_eq!(service.name.as_deref(), Some("svc"));
        assert_eq!(service.revision.as_deref(), Some("r1"));
        let cold = instances_request("ns", "svc", None);
        assert_eq!(cold.service.unwrap().revision, None);
    }
}
