//! gRPC connections to the targets, opened once before the run starts so an
//! unreachable server is reported at once rather than as a storm of errors.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::proto::polaris_grpc_client::PolarisGrpcClient;

/// Longest wait for one connection to open.
pub(crate) const CONNECT_TIMEOUT_CAP: Duration = Duration::from_secs(10);
/// Largest answer accepted: a full Discover answer lists every instance of a
/// service, some 250 bytes each, far past tonic's 4 MiB default.
const MAX_ANSWER_BYTES: usize = 1 << 30;

/// A target that could not be reached, or was not a valid address.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {target}")]
    Transport {
        target: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot connect to {target}: no HTTP/2 connection after {waited:?}")]
    TimedOut { target: String, waited: Duration },
}

/// Connections grouped by target; each channel is its own HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct ClientPool {
    by_target: Vec<Vec<Channel>>,
}

impl ClientPool {
    /// Opens `connections` channels spread over `targets` (at least one per target).
    pub async fn connect(
        targets: &[String],
        connections: usize,
        request_timeout: Duration,
    ) -> Result<Self, ConnectError> {
        debug_assert!(!targets.is_empty());
        let mut by_target = Vec::with_capacity(targets.len());
        for (target_index, target) in targets.iter().enumerate() {
            let connect_timeout = request_timeout.min(CONNECT_TIMEOUT_CAP);
            let endpoint = endpoint(target, connect_timeout)?;
            let channel_count = channels_for_target(target_index, targets.len(), connections);
            let mut channels = Vec::with_capacity(channel_count);
            for _ in 0..channel_count {
                // The endpoint's own timeout covers the TCP connect only; this one
                // also covers a peer that accepts but never completes the handshake.
                let channel = tokio::time::timeout(connect_timeout, endpoint.connect())
                    .await
                    .map_err(|_| ConnectError::TimedOut {
                        target: target.clone(),
                        waited: connect_timeout,
                    })?
                    .map_err(|source| ConnectError::Transport {
                        target: target.clone(),
                        source,
                    })?;
                channels.push(channel);
            }
            by_target.push(channels);
        }
        Ok(ClientPool { by_target })
    }

    /// Client for request `index`: targets take turns, and within a target its
    /// connections take turns.
    pub fn client(&self, index: u64) -> PolarisGrpcClient<Channel> {
        PolarisGrpcClient::new(self.channel(index)).max_decoding_message_size(MAX_ANSWER_BYTES)
    }

    /// The same connection as [`Self::client`], for calls whose messages are not the
    /// generated client's (a Discover answer read into a lighter message).
    pub fn grpc(&self, index: u64) -> tonic::client::Grpc<Channel> {
        tonic::client::Grpc::new(self.channel(index)).max_decoding_message_size(MAX_ANSWER_BYTES)
    }

    fn channel(&self, index: u64) -> Channel {
        let target = route_target(index, self.by_target.len());
        let channels = &self.by_target[target];
        channels[route_connection(index, self.by_target.len(), channels.len())].clone()
    }

    /// Connections actually opened, over all targets.
    pub fn connection_count(&self) -> usize {
        self.by_target.iter().map(Vec::len).sum()
    }
}

/// Accepts `host:port` or a full `http://` / `https://` URI.
fn endpoint(target: &str, connect_timeout: Duration) -> Result<Endpoint, ConnectError> {
    let uri = if target.contains("://") {
        target.to_owned()
    } else {
        format!("http://{target}")
    };
    let endpoint = Endpoint::from_shared(uri).map_err(|source| ConnectError::Transport {
        target: target.to_owned(),
        source,
    })?;
    Ok(endpoint.connect_timeout(connect_timeout).tcp_nodelay(true))
}

/// Connections given to target `target_index`: `total` dealt out in turn, at least one.
pub(crate) fn channels_for_target(target_index: usize, targets: usize, total: usize) -> usize {
    let base = total / targets;
    let extra = usize::from(target_index < total % targets);
    (base + extra).max(1)
}

/// Target of request `index`: the targets take turns.
pub(crate) fn route_target(index: u64, targets: usize) -> usize {
    (index % targets as u64) as usize
}

/// Connection of request `index` within its target: that target's connections take turns.
fn route_connection(index: u64, targets: usize, connections: usize) -> usize {
    ((index / targets as u64) % connections as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_dealt_over_targets() {
        let counts: Vec<_> = (0..3).map(|t| channels_for_target(t, 3, 8)).collect();
        assert_eq!(counts, [3, 3, 2]);
        let few: Vec<_> = (0..3).map(|t| channels_for_target(t, 3, 1)).collect();
        assert_eq!(few, [1, 1, 1]);
    }

    #[test]
    fn requests_alternate_over_targets_then_connections() {
        let routes: Vec<_> = (0..6)
            .map(|i| (route_target(i, 2), route_connection(i, 2, 3)))
            .collect();
        assert_eq!(routes, [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]);
    }

    #[tokio::test]
    async fn refused_connection_is_a_transport_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let error = ClientPool::connect(&[address], 1, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(error, ConnectError::Transport { .. }), "{error:?}");
    }
}
