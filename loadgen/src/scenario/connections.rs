//! The connections of a scenario that speaks either protocol, and its unary calls:
//! the protobuf message over gRPC, or its JSON over HTTP, each answer counted by its
//! Polaris code.

use std::sync::Arc;

use tonic::transport::Channel;

use crate::acked::RegisterAnswer;
use crate::http_pool::{HttpAnswer, HttpError, HttpPool, HttpTarget, JsonRequest};
use crate::options::Protocol;
use crate::pool::ClientPool;
use crate::proto::polaris_grpc_client::PolarisGrpcClient;
use crate::report::Outcome;
use crate::scenario::{RequestHeaders, register_answer_of};
use crate::{polaris_json, proto};

/// The connections of a run that speaks either protocol.
#[derive(Debug, Clone)]
pub enum Connections {
    Grpc(ClientPool),
    Http(HttpPool),
}

/// HTTP path of RegisterInstance.
const REGISTER_PATH: &str = "/v1/RegisterInstance";
/// HTTP path of Discover.
pub const DISCOVER_PATH: &str = "/v1/Discover";

/// One prepared unary call, ready to send on its connection.
enum UnaryCall<T> {
    Grpc(PolarisGrpcClient<Channel>, tonic::Request<T>),
    Http(Arc<HttpTarget>, JsonRequest),
}

impl Connections {
    pub fn connection_count(&self) -> usize {
        match self {
            Connections::Grpc(pool) => pool.connection_count(),
            Connections::Http(pool) => pool.connection_count(),
        }
    }

    pub fn protocol(&self) -> Protocol {
        match self {
            Connections::Grpc(_) => Protocol::Grpc,
            Connections::Http(_) => Protocol::Http,
        }
    }

    /// HTTP only: connections opened so far.
    pub fn connections_opened(&self) -> Option<u64> {
        match self {
            Connections::Grpc(_) => None,
            Connections::Http(pool) => Some(pool.connections_opened()),
        }
    }

    /// RegisterInstance of `instance` as request `index`, on that request's
    /// connection: the protobuf message over gRPC, its JSON over HTTP.
    pub fn register(
        &self,
        index: u64,
        instance: proto::Instance,
        headers: &RequestHeaders,
    ) -> impl Future<Output = RegisterAnswer> + Send + use<> {
        let request_id = index.to_string();
        let call = match self {
            Connections::Grpc(pool) => {
                let mut request = tonic::Request::new(instance);
                headers.apply(&mut request, &request_id);
                UnaryCall::Grpc(pool.client(index), request)
            }
            Connections::Http(pool) => {
                let target = pool.target(index);
                let mut request =
                    target.post(REGISTER_PATH, polaris_json::instance_body(&instance));
                headers.apply_http(request.headers_mut(), &request_id);
                UnaryCall::Http(target, request)
            }
        };
        async move {
            match call {
                UnaryCall::Grpc(mut client, request) => {
                    register_answer_of(client.register_instance(request).await)
                }
                UnaryCall::Http(target, request) => http_answer(target.send(request).await),
            }
        }
    }
}

/// The outcome of one HTTP request: the code of its JSON answer, whatever the status
/// (it is code / 1000), and the id of the answer's instance.
fn http_answer(answer: Result<HttpAnswer, HttpError>) -> RegisterAnswer {
    let failed = |outcome| RegisterAnswer {
        outcome,
        instance_id: None,
    };
    match answer {
        Ok(answer) => match polaris_json::response_summary(&answer.body) {
            Ok(summary) => RegisterAnswer {
                outcome: Outcome::Answered(summary.code),
                instance_id: summary.instance_id,
            },
            Err(_) => failed(Outcome::Http(answer.status.as_u16())),
        },
        Err(_) => failed(Outcome::ConnectionFailed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers_become_outcomes_by_their_code_not_their_status() {
        let outcome = |status: u16, body: &'static str| {
            http_answer(Ok(HttpAnswer {
                status: hyper::StatusCode::from_u16(status).unwrap(),
                body: bytes::Bytes::from_static(body.as_bytes()),
            }))
            .outcome
        };
        assert_eq!(
            outcome(200, r#"{"code": 200000, "info": "ok"}"#),
            Outcome::Answered(Some(200000))
        );
        assert_eq!(
            outcome(400, r#"{"code": 400201, "instance": null}"#),
            Outcome::Answered(Some(400201))
        );
        assert_eq!(
            outcome(200, r#"{"info": "no code"}"#),
            Outcome::Answered(None)
        );
        assert_eq!(outcome(404, "404 page not found"), Outcome::Http(404));
        assert_eq!(outcome(502, ""), Outcome::Http(502));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            http_answer(Err(HttpError::Io(refused))),
            RegisterAnswer {
                outcome: Outcome::ConnectionFailed,
                instance_id: None
            }
        );
    }

    #[test]
    fn an_http_registration_answer_keeps_its_instance_id() {
        let answer = http_answer(Ok(HttpAnswer {
            status: hyper::StatusCode::OK,
            body: bytes::Bytes::from_static(br#"{"code": 200000, "instance": {"id": "f00d"}}"#),
        }));
        assert_eq!(
            answer,
            RegisterAnswer {
                outcome: Outcome::Answered(Some(200000)),
                instance_id: Some("f00d".to_owned())
            }
        );
    }
}
