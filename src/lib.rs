//! batchreg: a service-registration server for very large fleets. It speaks the
//! PolarisMesh v1 client API and turns each burst of registrations into a few large
//! transactional writes.
//!
//! # Layout
//!
//! In the order a request passes through them:
//!
//! - [`api`]: transport adapters. gRPC `v1.PolarisGRPC` (wire types in, Polaris
//!   `Response` out) and the HTTP port (the client API as JSON, the operators' read API
//!   and console page, `/metrics`, `/healthz`), both over one transport-free client API.
//! - [`auth`]: the token check, off by default.
//! - [`naming`]: validation, instance id, what a write did; a plain async API.
//! - [`discovery`]: Discover answered from the registry cache, which follows every write
//!   (and in cluster mode the other replicas' writes).
//! - [`health`]: heartbeats into the beat table (memory, or Redis in cluster mode); the
//!   expiry checker; health transitions written through the batch layer.
//! - [`batch`]: a bounded queue per kind of write, drained by store workers that write
//!   what is ready as one batch; one answer per request; admission by the queue's length
//!   and by the time it takes to write.
//! - [`store`]: one transaction per batch, multi-row statements; SQLite embedded, MySQL
//!   in cluster mode.
//!
//! Beside the pipeline: [`server`] (start and stop), [`config`] (TOML → validated
//! settings), [`code`] (the Polaris codes; each layer's error says its own),
//! [`telemetry`] (every metric), [`proto`] (generated). `fuzzing`, built only for tests
//! and with the `fuzzing` feature, holds the entry points of the fuzz targets in
//! benches/fuzz.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod batch;
pub mod code;
pub mod config;
pub mod discovery;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod naming;
pub mod server;
pub mod store;
pub mod telemetry;

pub mod proto {
    //! The Polaris v1 wire types and service, generated from proto/ at build time.
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("v1");

    /// The descriptors of proto/ (with the imported well-known types), for the HTTP
    /// API's JSON mapping and for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/polaris_descriptor.bin"));
}

pub use server::{Server, ServerError, run};
