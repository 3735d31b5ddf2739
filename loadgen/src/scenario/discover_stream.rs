//! One Discover stream as a Polaris SDK holds it: requests go out one at a time and
//! the server answers each, in order, on the same stream. A stream that fails or
//! falls silent is dropped, and the next request opens a new one.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::proto::discover_request::DiscoverRequestType;
use crate::proto::polaris_grpc_client::PolarisGrpcClient;
use crate::proto::{self, DiscoverRequest, DiscoverResponse};
use crate::report::Outcome;
use crate::scenario::RequestHeaders;

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
            DiscoverError::Status(status) => Outcome::Grpc(status.code()),
            DiscoverError::TimedOut(_) => Outcome::Timeout,
            DiscoverError::Ended => Outcome::StreamEnded,
        }
    }
}

/// A Discover stream on one connection, opened by its first request.
pub struct DiscoverStream {
    client: PolarisGrpcClient<Channel>,
    headers: RequestHeaders,
    /// Sent as `request-id` with each opening of the stream.
    request_id: String,
    timeout: Duration,
    open: Option<OpenStream>,
}

/// The two halves of an open stream.
struct OpenStream {
    requests: mpsc::Sender<DiscoverRequest>,
    answers: tonic::Streaming<DiscoverResponse>,
}

impl DiscoverStream {
    /// A stream not opened yet; `timeout` bounds each answer.
    pub fn new(
        client: PolarisGrpcClient<Channel>,
        headers: RequestHeaders,
        request_id: String,
        timeout: Duration,
    ) -> Self {
        DiscoverStream {
            client,
            headers,
            request_id,
            timeout,
            open: None,
        }
    }

    /// Sends `request` and waits for its answer, opening the stream first when it is
    /// not open; the timeout counts from here.
    pub async fn ask(
        &mut self,
        request: DiscoverRequest,
    ) -> Result<DiscoverResponse, DiscoverError> {
        let answer = tokio::time::timeout(self.timeout, self.exchange(request))
            .await
            .unwrap_or(Err(DiscoverError::TimedOut(self.timeout)));
        if answer.is_err() {
            // A late answer would be taken for the next request's.
            self.open = None;
        }
        answer
    }

    async fn exchange(
        &mut self,
        request: DiscoverRequest,
    ) -> Result<DiscoverResponse, DiscoverError> {
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
    async fn open_with(&mut self, first: DiscoverRequest) -> Result<OpenStream, DiscoverError> {
        let (requests, outgoing) = mpsc::channel(1);
        requests
            .try_send(first)
            .expect("a new channel has room for one request");
        let mut call = tonic::Request::new(ReceiverStream::new(outgoing));
        self.headers.apply(&mut call, &self.request_id);
        let answers = self.client.discover(call).await?.into_inner();
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
