//! `Discover` over gRPC: a bidirectional stream, one answer per request, in order. The
//! answers come already encoded from the registry cache, so this route sends their bytes
//! as they are (an encoder of bytes) instead of the generated code's encoder of messages;
//! every other method of `v1.PolarisGRPC` goes to the generated server.
//!
//! A request that does not decode is answered 400001 ParseException and the stream goes
//! on: a bad request is an answer, never a closed stream. When the server drains, a new
//! stream is refused and an open one ends, with UNAVAILABLE (see [`super::drain`]).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use tokio_stream::StreamExt;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};

use super::ClientApi;
use super::drain::REFUSED;
use super::grpc::PolarisGrpcAdapter;
use crate::code::Code;
use crate::discovery::answer::{self, Encoded};
use crate::discovery::{Answered, Discovery};
use crate::proto;
use crate::proto::discover_response::DiscoverResponseType;
use crate::proto::polaris_grpc_server::PolarisGrpcServer;
use crate::telemetry::DiscoverMetrics;

/// The gRPC path of Discover.
const DISCOVER_PATH: &str = "/v1.PolarisGRPC/Discover";

/// `v1.PolarisGRPC`: Discover here, every other method in the generated server.
#[derive(Clone)]
pub struct PolarisService {
    generated: PolarisGrpcServer<PolarisGrpcAdapter>,
    discover: DiscoverStreams,
}

impl PolarisService {
    /// `max_message`: the largest request message decoded, in bytes
    /// (`server.grpc_max_message`); tonic refuses a larger one with OUT_OF_RANGE.
    pub fn new(api: Arc<ClientApi>, max_message: usize) -> Self {
        PolarisService {
            generated: PolarisGrpcAdapter::new(Arc::clone(&api))
                .into_server()
                .max_decoding_message_size(max_message),
            discover: DiscoverStreams {
                api,
                metrics: Arc::new(DiscoverMetrics::new("grpc")),
                max_message,
            },
        }
    }
}

impl NamedService for PolarisService {
    const NAME: &'static str = "v1.PolarisGRPC";
}

type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;

impl<B> tower_service::Service<http::Request<B>> for PolarisService
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    PolarisGrpcServer<PolarisGrpcAdapter>: tower_service::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
            Future = BoxFuture<Result<http::Response<tonic::body::Body>, Infallible>>,
        >,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != DISCOVER_PATH {
            return self.generated.call(request);
        }
        let streams = self.discover.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(EncodedAnswers)
                .max_decoding_message_size(streams.max_message);
            Ok(grpc.streaming(streams, request).await)
        })
    }
}

/// Answers each Discover stream.
#[derive(Clone)]
struct DiscoverStreams {
    api: Arc<ClientApi>,
    metrics: Arc<DiscoverMetrics>,
    /// The largest request message decoded, in bytes.
    max_message: usize,
}

type AnswerStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<Encoded, Status>> + Send>>;

impl tower_service::Service<Request<Streaming<Incoming>>> for DiscoverStreams {
    type Response = Response<AnswerStream>;
    type Error = Status;
    type Future = std::future::Ready<Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Streaming<Incoming>>) -> Self::Future {
        let DiscoverStreams { api, metrics, .. } = self.clone();
        let drain = Arc::clone(api.drain());
        drain.arrived();
        if drain.draining() {
            return std::future::ready(Err(Status::unavailable(REFUSED)));
        }
        let mut closed = drain.closed();
        let drained = Box::pin(async move {
            let _ = closed.wait_for(|closed| *closed).await;
        });
        let answers = request.into_inner().map(move |incoming| {
            let started = Instant::now();
            drain.arrived();
            if drain.draining() {
                return Err(Status::unavailable(REFUSED));
            }
            let answered = answer(api.discovery(), incoming?);
            // A full INSTANCE answer: the one encoded once per revision.
            let full = answered.code == Code::ExecuteSuccess && answered.kind == "INSTANCE";
            metrics.record(
                answered.kind,
                answered.code,
                full,
                answered.reused,
                started.elapsed(),
            );
            Ok(answered.bytes)
        });
        let answers = EndsAtDrain {
            answers: Box::pin(answers),
            drained: Some(drained),
        };
        std::future::ready(Ok(Response::new(Box::pin(answers) as AnswerStream)))
    }
}

/// A stream of answers that ends with UNAVAILABLE once the drain is over, so that an
/// idle Discover stream does not hold the server open.
struct EndsAtDrain {
    answers: AnswerStream,
    /// Taken once the drain is over.
    drained: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl tokio_stream::Stream for EndsAtDrain {
    type Item = Result<Encoded, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(drained) = self.drained.as_mut() else {
            return Poll::Ready(None);
        };
        if drained.as_mut().poll(cx).is_ready() {
            self.drained = None;
            return Poll::Ready(Some(Err(Status::unavailable(REFUSED))));
        }
        self.answers.as_mut().poll_next(cx)
    }
}

/// One message of a Discover stream.
pub(crate) enum Incoming {
    Request(Box<proto::DiscoverRequest>),
    /// It did not decode; why.
    Malformed(String),
}

impl Incoming {
    /// Decodes one message (as prost decodes a `DiscoverRequest`), or says why it did not.
    pub(crate) fn decode(message: Bytes) -> Incoming {
        match proto::DiscoverRequest::decode(message) {
            Ok(request) => Incoming::Request(Box::new(request)),
            Err(error) => Incoming::Malformed(error.to_string()),
        }
    }
}

/// The answer to one message of a Discover stream: from the registry cache, or 400001
/// ParseException for a message that did not decode. gRPC answers every instance.
pub(crate) fn answer(discovery: &Discovery, incoming: Incoming) -> Answered {
    match incoming {
        Incoming::Request(request) => discovery.answer(&request, false),
        Incoming::Malformed(reason) => {
            tracing::debug!(%reason, "undecodable Discover request");
            Answered {
                code: Code::ParseException,
                kind: "UNKNOWN",
                bytes: answer::plain(Code::ParseException, DiscoverResponseType::Unknown, None),
                reused: false,
            }
        }
    }
}

/// Decodes `DiscoverRequest`s (leniently) and sends answers' bytes as they are.
#[derive(Default)]
struct EncodedAnswers;

impl Codec for EncodedAnswers {
    type Encode = Encoded;
    type Decode = Incoming;
    type Encoder = EncodedAnswers;
    type Decoder = EncodedAnswers;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedAnswers
    }

    fn decoder(&mut self) -> Self::Decoder {
        EncodedAnswers
    }
}

impl Encoder for EncodedAnswers {
    type Item = Encoded;
    type Error = Status;

    fn encode(&mut self, item: Encoded, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        for chunk in item.chunks() {
            dst.put_slice(chunk);
        }
        Ok(())
    }
}

impl Decoder for EncodedAnswers {
    type Item = Incoming;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Incoming>, Status> {
        // Taken whole, so that a message that does not decode leaves nothing behind.
        Ok(Some(Incoming::decode(src.copy_to_bytes(src.remaining()))))
    }
}
