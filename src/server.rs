//! The server's lifecycle: binds both ports, serves `/healthz` (503 "loading") while it
//! opens the store and loads the registry cache, then starts the pipeline and the gRPC
//! server; and stops it all cleanly.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::api::discover::PolarisService;
use crate::api::http::{HttpState, Readiness, ReadinessFlag};
use crate::api::system::{Advertised, SystemInstances};
use crate::api::{ClientApi, Layers};
use crate::auth::Auth;
use crate::config::Settings;
use crate::discovery::cache::RegistryCache;
use crate::discovery::feed::Feed;
use crate::discovery::{self, Discovery};
use crate::health::{Health, HealthStartError};
use crate::naming::Naming;
use crate::store::{self, StoreError};
use crate::{api, telemetry};

/// The runtime the server runs on: one worker thread per core, as tokio's default, but
/// without the LIFO slot when the build has `tokio_unstable` (the workspace's
/// `.cargo/config.toml` sets it). With the slot, each answer a task finishes wakes its
/// connection's task into the slot, which then runs at once and writes that one answer
/// (a `writev` per answer); without it, the connection's task runs after the answers
/// already woken, and writes them together. In a fresh storm on MariaDB that took the
/// server's `writev` calls from 0.83 to 0.11 per request, and its CPU per request to 0.93 ×
/// at the median of 7 alternating rounds (benches/RESULTS.md).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot start health checking: {0}")]
    Health(#[from] HealthStartError),
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
    tokio::pin!(shutdown);
    let server = tokio::select! {
        started = Server::start(settings) => started?,
        () = &mut shutdown => {
            // Still opening the store or loading the cache: nothing was answered yet.
            tracing::info!("stopped while starting: nothing was served");
            return Ok(());
        }
    };
    tracing::info!(grpc = %server.grpc_addr(), http = %server.http_addr(), "batchreg serving");
    shutdown.await;
    server.shutdown().await
}

/// A started server: the listeners are bound, the cache is loaded, the pipeline runs.
pub struct Server {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    api: Arc<ClientApi>,
    readiness: Arc<ReadinessFlag>,
    stop: watch::Sender<bool>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    http: JoinHandle<std::io::Result<()>>,
    feed: Option<Feed>,
    /// The `grpc.health.v1` statuses: SERVING once loaded, NOT_SERVING once stopping.
    grpc_health: HealthReporter,
    /// This replica's instances in the system services, when `server.register_self`.
    system: Option<SystemInstances>,
    shutdown_timeout: Duration,
}

impl Server {
    /// Binds both ports (port 0 picks a free one: see [`Server::grpc_addr`]), opens the
    /// store (applying migrations), loads the registry cache and starts the pipeline.
    pub async fn start(settings: Settings) -> Result<Server, ServerError> {
        let metrics = settings.metrics.then(telemetry::install);
        let upkeep = metrics.clone();
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
        let readiness = Arc::new(ReadinessFlag::new(Readiness::Loading));
        let process = metrics_process::Collector::new(telemetry::PROCESS_PREFIX);
        if metrics.is_some() {
            process.describe();
        }
        let client_api = Arc::new(OnceLock::new());
        let router = api::http::router(HttpState {
            metrics,
            process,
            readiness: Arc::clone(&readiness),
            api: Arc::clone(&client_api),
            max_body: settings.http_max_body,
            client: Arc::new(api::http::client::ClientMetrics::new()),
            answers: Arc::default(),
            started: Instant::now(),
        });
        let http_stopped = stopped.clone();
        // No Nagle delay here either: a small answer must not wait for an ACK.
        let http_listener = http_listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "TCP_NODELAY not set on an HTTP connection");
            }
        });
        let http = tokio::spawn(async move {
            let service = router.into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(http_listener, service)
                .with_graceful_shutdown(until_stopped(http_stopped))
                .await
        });

        let opened = tokio::task::spawn_blocking({
            let settings = settings.clone();
            move || open_pipeline(&settings)
        })
        .await
        .map_err(ServerError::from)
        .and_then(|opened| opened.map_err(ServerError::from));
        let Pipeline {
            store,
            cache,
            naming,
            since,
        } = match opened {
            Ok(pipeline) => pipeline,
            Err(error) => {
                let _ = stop.send(true);
                let _ = http.await;
                return Err(error);
            }
        };
        let health = match Health::start(&settings.health, store.as_ref(), Arc::clone(&cache)).await
        {
            Ok(health) => health,
            Err(error) => {
                let _ = tokio::task::spawn_blocking(move || naming.shutdown()).await;
                let _ = stop.send(true);
                let _ = http.await;
                return Err(error.into());
            }
        };
        let feed_metrics = telemetry::FeedMetrics::default();
        let follow = !store.single_writer();
        let feed = Feed::start(
            Arc::clone(&store),
            Arc::clone(&cache),
            settings.discovery,
            follow,
            since,
            feed_metrics,
        );
        if let Some(handle) = upkeep {
            tokio::spawn(metrics_upkeep(
                Arc::clone(&cache),
                handle,
                until_stopped(stopped.clone()),
            ));
        }
        let api = Arc::new(ClientApi::new(Layers {
            auth: Auth::new(settings.auth.clone()),
            auth_heartbeats: settings.auth_heartbeats,
            naming,
            discovery: Discovery::new(cache),
            health,
        }));
        let (grpc_health, health_service) = tonic_health::server::health_reporter();
        set_grpc_health(&grpc_health, ServingStatus::NotServing).await;
        let grpc = tokio::spawn(serve_grpc(
            grpc_listener,
            PolarisService::new(Arc::clone(&api), settings.grpc_max_message),
            health_service,
            until_stopped(stopped),
        ));
        let system = if settings.register_self {
            let at = Advertised {
                host: settings.advertise_host.clone(),
                grpc_port: grpc_addr.port(),
            };
            match SystemInstances::register(&api, &at).await {
                Ok(system) => Some(system),
                Err(error) => {
                    tracing::warn!(
                        %error,
                        "could not register this server in the Polaris system services"
                    );
                    None
                }
            }
        } else {
            None
        };
        let _ = client_api.set(Arc::clone(&api));
        set_grpc_health(&grpc_health, ServingStatus::Serving).await;
        readiness.set(Readiness::Serving);
        Ok(Server {
            grpc_addr,
            http_addr,
            api,
            readiness,
            stop,
            grpc,
            http,
            feed: Some(feed),
            grpc_health,
            system,
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

    /// The ids of this replica's instances in the system services (none when
    /// `server.register_self` is off or their registration failed).
    pub fn system_instance_ids(&self) -> Vec<String> {
        self.system
            .as_ref()
            .map(SystemInstances::ids)
            .unwrap_or_default()
    }

    /// The first step of a shutdown, on its own for embedders that stop in stages:
    /// `/healthz` answers 503 and the gRPC health service NOT_SERVING, so load
    /// balancers stop sending; requests are still answered.
    pub async fn begin_shutdown(&self) {
        self.readiness.set(Readiness::Stopping);
        set_grpc_health(&self.grpc_health, ServingStatus::NotServing).await;
    }

    /// Stops taking requests, lets in-flight ones be answered (up to the shutdown
    /// timeout), writes everything still queued, then returns. The server's own system
    /// instances are deregistered first. New requests are refused as not processed
    /// (gRPC UNAVAILABLE, HTTP 503) while the connections stay open, until the accepted
    /// ones are answered and the clients have gone quiet (see [`api::drain`]).
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        self.begin_shutdown().await;
        if let Some(system) = self.system.take() {
            system.deregister(&self.api).await;
        }
        let drain = self.api.drain();
        drain.begin();
        let quiet_limit = self.shutdown_timeout.min(DRAIN_QUIET_LIMIT);
        if !drain
            .wait(DRAIN_QUIET, quiet_limit, self.shutdown_timeout)
            .await
        {
            tracing::info!(
                in_flight = drain.in_flight(),
                "clients still sending when the drain ended; closing their connections"
            );
        }
        let _ = self.stop.send(true);
        let grpc_result = match tokio::time::timeout(self.shutdown_timeout, self.grpc).await {
            Ok(joined) => joined?.map_err(ServerError::from),
            Err(_) => {
                tracing::warn!("in-flight requests not finished within shutdown_timeout");
                Ok(())
            }
        };
        let api = self.api;
        api.stop().await;
        let feed = self.feed.take();
        tokio::task::spawn_blocking(move || drop(feed)).await?;
        if let Ok(joined) = tokio::time::timeout(self.shutdown_timeout, self.http).await
            && let Err(err) = joined?
        {
            tracing::warn!(error = %err, "HTTP server stopped with an error");
        }
        tracing::info!("batchreg stopped");
        grpc_result
    }
}

/// How long clients must have sent nothing before a draining server closes their
/// connections.
const DRAIN_QUIET: Duration = Duration::from_millis(200);
/// The longest a drain waits for clients to go quiet (and at most `shutdown_timeout`):
/// clients with no other server to go to keep sending.
const DRAIN_QUIET_LIMIT: Duration = Duration::from_secs(5);

/// The store, the loaded cache and the write pipeline over them.
struct Pipeline {
    store: Arc<dyn store::Store>,
    cache: Arc<RegistryCache>,
    naming: Naming,
    /// The store's time when the cache started loading: the change feed reads from there.
    since: String,
}

/// Opens the store, loads the cache and starts the batch controllers. Blocks.
fn open_pipeline(settings: &Settings) -> Result<Pipeline, StoreError> {
    let store = store::open(&settings.store)?;
    let cache = Arc::new(RegistryCache::default());
    let since = store.now()?;
    let loaded = discovery::load(store.as_ref(), &cache, discovery::LOAD_PAGE)?;
    tracing::info!(
        services = loaded.services,
        instances = loaded.instances,
        took = ?loaded.took,
        "registry cache loaded"
    );
    let naming = Naming::start(store.as_ref(), Arc::clone(&cache), &settings.naming)?;
    Ok(Pipeline {
        store,
        cache,
        naming,
        since,
    })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, ServerError> {
    listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })
}

/// How often the per-namespace gauges are refreshed and histogram samples are folded
/// into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Until the server stops: keeps the per-namespace instance and service gauges current,
/// from the registry cache, and folds the histograms' recorded samples into their
/// buckets. The recorder keeps each sample until then (or until a scrape does it): with
/// nobody scraping /metrics, the samples of every request answered would pile up.
async fn metrics_upkeep(
    cache: Arc<RegistryCache>,
    handle: PrometheusHandle,
    stopped: impl Future<Output = ()>,
) {
    let mut known = Vec::new();
    tokio::pin!(stopped);
    loop {
        handle.run_upkeep();
        let mut counts: Vec<telemetry::NamespaceGauge<'_>> = Vec::new();
        let services = cache.services_of(None);
        for service in &services {
            match counts.last_mut() {
                Some(last) if last.namespace == &*service.namespace => {
                    last.services += 1;
                    last.instances += service.instance_count() as u64;
                }
                _ => counts.push(telemetry::NamespaceGauge {
                    namespace: &service.namespace,
                    services: 1,
                    instances: service.instance_count() as u64,
                }),
            }
        }
        telemetry::set_namespace_counts(&counts, &mut known);
        drop(counts);
        tokio::select! {
            _ = &mut stopped => return,
            _ = tokio::time::sleep(UPKEEP_EVERY) => {}
        }
    }
}

async fn until_stopped(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Sets the status of the whole server (`""`) and of `v1.PolarisGRPC` alike.
async fn set_grpc_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(
            <PolarisService as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}

/// Serves `v1.PolarisGRPC`, `grpc.health.v1.Health` and server reflection (v1 and
/// v1alpha), so that grpcurl and ghz can list and call the methods without the protos.
async fn serve_grpc<H>(
    listener: TcpListener,
    service: PolarisService,
    health: H,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    H: tower_service::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    H::Future: Send + 'static,
{
    let reflection = |builder: tonic_reflection::server::Builder<'static>| {
        builder
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .expect("the build's descriptor sets are valid");
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .expect("the build's descriptor sets are valid");
    // No Nagle delay: a small answer must not wait for the client's delayed ACK.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(service)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
