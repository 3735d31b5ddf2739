//! The transport adapters: gRPC (the Polaris v1 client API) and the HTTP port for
//! metrics and health. They convert wire types and codes, nothing more.

pub mod grpc;
pub mod http;
