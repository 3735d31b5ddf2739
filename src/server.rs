//! The server's lifecycle: opens the store, starts the pipeline, binds both ports, and
//! stops it all cleanly.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::ClientApi;
use crate::api::grpc::PolarisGrpcAdapter;
use crate::api::http::HttpState;
use crate::auth::Auth;
use crate::config::Settings;
use crate::naming::Naming;
use crate::store::{self, StoreError};
use crate::{api, telemetry};

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("a server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Runs the server until `shutdown` completes, then stops it cleanly.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let server = Server::start(settings).await?;
    tracing::info!(grpc = %server.grpc_addr(), http = %server.http_addr(), "batchreg serving");
    shutdown.await;
    server.shutdown().await
}

/// A started server: the listeners are bound, the batch controllers run.
pub struct Server {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    api: Arc<ClientApi>,
    ready: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    http: JoinHandle<std::io::Result<()>>,
    shutdown_timeout: std::time::Duration,
}

impl Server {
    /// Opens the store (applying migrations), starts the pipeline and binds both ports
    /// (port 0 picks a free one: see [`Server::grpc_addr`]).
    pub async fn start(settings: Settings) -> Result<Server, ServerError> {
        let metrics = settings.metrics.then(telemetry::install);
        let store_options = settings.store.clone();
        let naming_settings = settings.naming.clone();
        let (store, naming) = tokio::task::spawn_blocking(move || {
            let store = store::open(&store_options)?;
            let naming = Naming::start(store.as_ref(), &naming_settings)?;
            Ok::<_, StoreError>((store, naming))
        })
        .await??;
        let api = Arc::new(ClientApi::new(Auth::new(settings.auth.clone()), naming));

        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })
        };
        let grpc_listener = bind(settings.grpc_listen).await?;
        let http_listener = bind(settings.http_listen).await?;
        let grpc_addr = local_addr(&grpc_listener, settings.grpc_listen)?;
        let http_addr = local_addr(&http_listener, settings.http_listen)?;

        let (stop, stopped) = watch::channel(false);
        if settings.metrics {
            tokio::spawn(refresh_namespace_counts(
                store,
                until_stopped(stopped.clone()),
            ));
        }
        let ready = Arc::new(AtomicBool::new(true));
        let grpc = tokio::spawn(serve_grpc(
            grpc_listener,
            PolarisGrpcAdapter::new(Arc::clone(&api)),
            until_stopped(stopped.clone()),
        ));
        let process = metrics_process::Collector::new(telemetry::PROCESS_PREFIX);
        if metrics.is_some() {
            process.describe();
        }
        let router = api::http::router(HttpState {
            metrics,
            process,
            ready: Arc::clone(&ready),
        });
        let http = tokio::spawn(async move {
            axum::serve(http_listener, router)
                .with_graceful_shutdown(until_stopped(stopped))
                .await
        });
        Ok(Server {
            grpc_addr,
            http_addr,
            api,
            ready,
            stop,
            grpc,
            http,
            shutdown_timeout: settings.shutdown_timeout,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The client API without the transport, for embedding.
    pub fn api(&self) -> &Arc<ClientApi> {
        &self.api
    }

    /// Stops taking requests, lets in-flight ones be answered (up to the shutdown
    /// timeout), writes everything still queued, then returns.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.ready.store(false, Ordering::Release);
        let _ = self.stop.send(true);
        let grpc_result = match tokio::time::timeout(self.shutdown_timeout, self.grpc).await {
            Ok(joined) => joined?.map_err(ServerError::from),
            Err(_) => {
                tracing::warn!("in-flight requests not finished within shutdown_timeout");
                Ok(())
            }
        };
        let api = self.api;
        tokio::task::spawn_blocking(move || api.naming().shutdown()).await?;
        if let Ok(joined) = tokio::time::timeout(self.shutdown_timeout, self.http).await
            && let Err(err) = joined?
        {
            tracing::warn!(error = %err, "HTTP server stopped with an error");
        }
        tracing::info!("batchreg stopped");
        grpc_result
    }
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, ServerError> {
    listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })
}

/// How often the instances/services gauges are refreshed from the store, at most.
const COUNTS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// The count scans the instance index, so its cost grows with the fleet (on MariaDB
/// 14 ms for 12,000 instances, about 1.2 s for a million): the wait after a count is at
/// least this many times what the count took, which keeps the scans under 2% of the
/// database's time however large the fleet.
const COUNTS_IDLE_FACTOR: u32 = 50;

/// The wait before the next count, after one that took `took`.
fn next_count_after(took: std::time::Duration) -> std::time::Duration {
    COUNTS_EVERY.max(took.saturating_mul(COUNTS_IDLE_FACTOR))
}

/// Keeps the per-namespace instance and service gauges current until the server stops.
async fn refresh_namespace_counts(store: Arc<dyn store::Store>, stopped: impl Future<Output = ()>) {
    let mut known = Vec::new();
    tokio::pin!(stopped);
    loop {
        let reading = Arc::clone(&store);
        let started = tokio::time::Instant::now();
        match tokio::task::spawn_blocking(move || reading.namespace_counts()).await {
            Ok(Ok(counts)) => {
                let gauges: Vec<telemetry::NamespaceGauge<'_>> = counts
                    .iter()
                    .map(|c| telemetry::NamespaceGauge {
                        namespace: &c.namespace,
                        services: c.services,
                        instances: c.instances,
                    })
                    .collect();
                telemetry::set_namespace_counts(&gauges, &mut known);
            }
            Ok(Err(err)) => tracing::warn!(error = %err, "cannot count instances for the metrics"),
            Err(err) => tracing::warn!(error = %err, "instance count task failed"),
        }
        let wait = next_count_after(started.elapsed());
        tokio::select! {
            _ = &mut stopped => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn until_stopped(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

async fn serve_grpc(
    listener: TcpListener,
    adapter: PolarisGrpcAdapter,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // No Nagle delay: a small answer must not wait for the client's delayed ACK.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(adapter.into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_wait_the_period_or_fifty_times_the_last_count() {
        assert_eq!(next_count_after(Duration::ZERO), COUNTS_EVERY);
        assert_eq!(next_count_after(Duration::from_millis(14)), COUNTS_EVERY);
        assert_eq!(next_count_after(Duration::from_millis(100)), COUNTS_EVERY);
        assert_eq!(
            next_count_after(Duration::from_millis(1_200)),
            Duration::from_secs(60)
        );
        assert_eq!(next_count_after(Duration::MAX), Duration::MAX);
    }
}
