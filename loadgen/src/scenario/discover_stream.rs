//! One Discover stream as a Polaris SDK holds it: requests go out one at a time and
//! the server answers each, in order, on the same stream. A stream that fails or
//! falls silent is dropped, and the next request opens a new one. Answers are read
//! whole ([`DiscoverResponse`]), or for the instances' health only ([`HealthListing`]),
//! once they have arrived ([`Undecoded`]).

use std::marker::PhantomData;
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic_prost::{ProstCodec, ProstEncoder};

use crate::proto::discover_request::DiscoverRequestType;
use crate::proto::{self, DiscoverRequest, DiscoverResponse};
use crate::report::Outcome;
use crate::scenario::RequestHeaders;

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
            DiscoverError::Status(status) => Outcome::Grpc(status.code()),
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
    open: Option<OpenStream>,
    answer: PhantomData<fn() -> Answer>,
}

/// The two halves of an open stream.
struct OpenStream {
    requests: mpsc::Sender<DiscoverRequest>,
    answers: tonic::Streaming<Bytes>,
}

/// An answer that has arrived whole, not decoded yet: its reader can note when it came
/// before paying for the decode, which for a listing of thousands of instances takes
/// milliseconds.
#[derive(Debug)]
pub struct Undecoded<Answer> {
    bytes: Bytes,
    answer: PhantomData<fn() -> Answer>,
}

impl<Answer: prost::Message + Default> Undecoded<Answer> {
    /// The answer; one that cannot be read fails as tonic's own decoder fails it.
    pub fn decode(self) -> Result<Answer, DiscoverError> {
        Answer::decode(self.bytes)
            .map_err(|error| DiscoverError::Status(tonic::Status::internal(error.to_string())))
    }
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
            answer: PhantomData,
        }
    }

    /// Sends `request` and waits for its answer, opening the stream first when it is
    /// not open; the timeout counts from here.
    pub async fn ask(&mut self, request: DiscoverRequest) -> Result<Answer, DiscoverError> {
        self.ask_undecoded(request).await?.decode()
    }

    /// As [`Self::ask`], the answer left to decode.
    pub async fn ask_undecoded(
        &mut self,
        request: DiscoverRequest,
    ) -> Result<Undecoded<Answer>, DiscoverError> {
        let answer = tokio::time::timeout(self.timeout, self.exchange(request))
            .await
            .unwrap_or(Err(DiscoverError::TimedOut(self.timeout)));
        if answer.is_err() {
            // A late answer would be taken for the next request's.
            self.open = None;
        }
        let bytes = answer?;
        Ok(Undecoded {
            bytes,
            answer: PhantomData,
        })
    }

    async fn exchange(&mut self, request: DiscoverRequest) -> Result<Bytes, DiscoverError> {
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
        // What the generated client's `discover` does, with the answers left undecoded.
        self.grpc
            .ready()
            .await
            .map_err(|error| tonic::Status::unknown(format!("Service was not ready: {error}")))?;
        let path = PathAndQuery::from_static(DISCOVER_PATH);
        let answers = self
            .grpc
            .streaming(call, path, UndecodedCodec)
            .await?
            .into_inner();
        Ok(OpenStream { requests, answers })
    }
}

/// Requests encoded by prost, answers handed over as the bytes of their message.
#[derive(Debug, Clone, Copy)]
struct UndecodedCodec;

impl Codec for UndecodedCodec {
    type Encode = DiscoverRequest;
    type Decode = Bytes;
    type Encoder = ProstEncoder<DiscoverRequest>;
    type Decoder = MessageBytes;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<DiscoverRequest, DiscoverResponse>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        MessageBytes
    }
}

/// Takes a message's bytes out of tonic's buffer without copying them.
#[derive(Debug, Clone, Copy)]
struct MessageBytes;

impl Decoder for MessageBytes {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
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
