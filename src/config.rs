//! Configuration: a TOML file of plain data with a default for every key, validated once
//! into typed settings. `src/config.example.toml` lists every key with its default.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::TokenGrant;
use crate::batch::BatchSettings;
use crate::discovery::feed::FeedSettings;
use crate::health::HealthSettings;
use crate::naming::NamingSettings;
use crate::store::StoreOptions;
use crate::store::resilient::RetryPolicy;
use crate::store::sqlite::Synchronous;

/// The example configuration, every key at its default.
pub const EXAMPLE: &str = include_str!("config.example.toml");

/// Environment variables that override the file.
pub const ENV_STORE_URL: &str = "BATCHREG_STORE_URL";
pub const ENV_GRPC_LISTEN: &str = "BATCHREG_GRPC_LISTEN";
pub const ENV_HTTP_LISTEN: &str = "BATCHREG_HTTP_LISTEN";
pub const ENV_REDIS_URL: &str = "BATCHREG_REDIS_URL";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid config: {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub naming: NamingConfig,
    pub batch: BatchConfigs,
    pub discovery: DiscoveryConfig,
    pub health: HealthConfig,
    pub auth: AuthConfig,
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub grpc_listen: String,
    pub http_listen: String,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// The largest HTTP request body read, in bytes.
    pub http_max_body: usize,
    /// The largest gRPC request message decoded, in bytes.
    pub grpc_max_message: usize,
    /// The host the server registers itself with in the system services; empty = the
    /// gRPC listen address's IP (127.0.0.1 when it listens on every address).
    pub advertise_host: String,
    /// Whether the server registers itself as `Polaris/polaris.discover`,
    /// `polaris.healthcheck` and `polaris.checker`.
    pub register_self: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            grpc_listen: "127.0.0.1:8091".to_owned(),
            http_listen: "127.0.0.1:8090".to_owned(),
            shutdown_timeout: Duration::from_secs(30),
            http_max_body: 1024 * 1024,
            grpc_max_message: 4 * 1024 * 1024,
            advertise_host: String::new(),
            register_self: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub url: String,
    pub sqlite_synchronous: Synchronous,
    /// Store workers per batch controller; 0 = the store's own default.
    pub concurrency: usize,
    pub retry_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub retry_first_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub outage_wait: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        let retry = RetryPolicy::default();
        StoreConfig {
            url: "sqlite://data/batchreg.db".to_owned(),
            sqlite_synchronous: Synchronous::default(),
            concurrency: 0,
            retry_attempts: retry.attempts,
            retry_first_backoff: retry.first_backoff,
            retry_max_backoff: retry.max_backoff,
            outage_wait: retry.outage_wait,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamingConfig {
    pub auto_create_services: bool,
    pub existed_as_success: bool,
}

impl Default for NamingConfig {
    fn default() -> Self {
        NamingConfig {
            auto_create_services: true,
            existed_as_success: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfigs {
    pub register: BatchConfig,
    pub deregister: BatchConfig,
    pub health: BatchConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    pub queue_size: usize,
    pub max_batch: usize,
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    #[serde(with = "humantime_serde")]
    pub task_life: Duration,
    #[serde(with = "humantime_serde")]
    pub max_queue_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            queue_size: 10_240,
            max_batch: 128,
            max_wait: Duration::from_millis(32),
            task_life: Duration::from_secs(30),
            max_queue_wait: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Cluster mode: how often each replica reads the changes other replicas wrote.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// How late after its write a transaction may commit and still be read by the
    /// change feed: the rows written this long before each read are read again.
    #[serde(with = "humantime_serde")]
    pub feed_overlap: Duration,
    /// How long a deregistered instance's row is kept (so that every replica sees the
    /// deregistration) before it is purged.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            refresh_interval: Duration::from_secs(1),
            feed_overlap: Duration::from_secs(5),
            retention: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Answer heartbeats; off, each answers 400140 HealthCheckNotOpen.
    pub enabled: bool,
    /// Cluster mode: keep beats in Redis (`redis://host:port/db`); empty: in memory.
    pub redis_url: String,
    pub key_prefix: String,
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            enabled: true,
            redis_url: String::new(),
            key_prefix: "batchreg:".to_owned(),
            check_interval: Duration::from_millis(250),
            lease: Duration::from_secs(2),
            redis_timeout: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub enabled: bool,
    /// With auth on, a heartbeat needs a token too; false lets heartbeats through
    /// without one, for clients that send none.
    pub heartbeats: bool,
    pub tokens: Vec<TokenConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: false,
            heartbeats: true,
            tokens: Vec::new(),
        }
    }
}

#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub token: String,
    /// `namespace/service` patterns: `ns/*`, `ns/svc`, `*`.
    pub allow: Vec<String>,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("token", &"<redacted>")
            .field("allow", &self.allow)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    pub metrics: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { metrics: true }
    }
}

/// Validated settings: what the rest of the server reads.
#[derive(Debug, Clone)]
pub struct Settings {
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub shutdown_timeout: Duration,
    pub http_max_body: usize,
    pub grpc_max_message: usize,
    /// The host of the server's own instances (resolved: never empty).
    pub advertise_host: String,
    pub register_self: bool,
    pub store: StoreOptions,
    pub naming: NamingSettings,
    pub discovery: FeedSettings,
    pub health: HealthSettings,
    /// Whether heartbeats need a token when auth is on.
    pub auth_heartbeats: bool,
    /// `None` when auth is off.
    pub auth: Option<Vec<TokenGrant>>,
    pub metrics: bool,
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Applies the `BATCHREG_*` overrides, read through `var` (the process environment in
    /// `main`, a map in tests).
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        if let Some(url) = var(ENV_STORE_URL) {
            self.store.url = url;
        }
        if let Some(addr) = var(ENV_GRPC_LISTEN) {
            self.server.grpc_listen = addr;
        }
        if let Some(addr) = var(ENV_HTTP_LISTEN) {
            self.server.http_listen = addr;
        }
        if let Some(url) = var(ENV_REDIS_URL) {
            self.health.redis_url = url;
        }
    }

    /// Checks every value and the relations between them, once.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let addr = |key: &'static str, text: &str| -> Result<SocketAddr, ConfigError> {
            text.parse().map_err(|_| {
                invalid(
                    key,
                    format!("{text:?} is not an address like 127.0.0.1:8091"),
                )
            })
        };
        let grpc_listen = addr("server.grpc_listen", &self.server.grpc_listen)?;
        let http_listen = addr("server.http_listen", &self.server.http_listen)?;
        if grpc_listen == http_listen && grpc_listen.port() != 0 {
            return Err(invalid(
                "server.http_listen",
                "must differ from server.grpc_listen",
            ));
        }
        if self.server.shutdown_timeout.is_zero() {
            return Err(invalid("server.shutdown_timeout", "must be greater than 0"));
        }
        if self.server.http_max_body == 0 {
            return Err(invalid("server.http_max_body", "must be greater than 0"));
        }
        if self.server.grpc_max_message == 0 {
            return Err(invalid("server.grpc_max_message", "must be greater than 0"));
        }
        let advertise_host = match self.server.advertise_host.trim() {
            "" if grpc_listen.ip().is_unspecified() => "127.0.0.1".to_owned(),
            "" => grpc_listen.ip().to_string(),
            host if host.len() > 128 => {
                return Err(invalid(
                    "server.advertise_host",
                    "must be at most 128 characters",
                ));
            }
            host => host.to_owned(),
        };
        if !(self.store.url.starts_with("sqlite://") || self.store.url.starts_with("mysql://")) {
            return Err(invalid(
                "store.url",
                "must start with sqlite:// or mysql://",
            ));
        }
        if self.store.retry_attempts == 0 {
            return Err(invalid("store.retry_attempts", "must be at least 1"));
        }
        if self.store.outage_wait.is_zero() {
            return Err(invalid("store.outage_wait", "must be greater than 0"));
        }
        // Stopping waits for the requests in flight, which wait for their store.
        if self.store.outage_wait > self.server.shutdown_timeout {
            return Err(invalid(
                "store.outage_wait",
                "must not exceed server.shutdown_timeout",
            ));
        }
        if self.store.retry_first_backoff > self.store.retry_max_backoff {
            return Err(invalid(
                "store.retry_first_backoff",
                "must not exceed store.retry_max_backoff",
            ));
        }
        let discovery = &self.discovery;
        if discovery.refresh_interval.is_zero() {
            return Err(invalid(
                "discovery.refresh_interval",
                "must be greater than 0",
            ));
        }
        // A deregistration must stay visible for at least one read of every replica.
        if discovery.retention < discovery.refresh_interval + discovery.feed_overlap {
            return Err(invalid(
                "discovery.retention",
                "must be at least discovery.refresh_interval + discovery.feed_overlap",
            ));
        }
        let register = batch_settings("batch.register", &self.batch.register)?;
        let deregister = batch_settings("batch.deregister", &self.batch.deregister)?;
        let health_batch = batch_settings("batch.health", &self.batch.health)?;
        let health = &self.health;
        if health.check_interval.is_zero() || health.check_interval > Duration::from_secs(1) {
            return Err(invalid(
                "health.check_interval",
                "must be more than 0 and at most 1s (an instance turns unhealthy within one interval of its expiry)",
            ));
        }
        // The holder renews its lease every check; a lease shorter than that would lapse.
        if health.lease < health.check_interval * 2 {
            return Err(invalid(
                "health.lease",
                "must be at least twice health.check_interval",
            ));
        }
        if health.redis_timeout.is_zero() {
            return Err(invalid("health.redis_timeout", "must be greater than 0"));
        }
        let redis_url = (!health.redis_url.is_empty()).then(|| health.redis_url.clone());
        if let Some(url) = &redis_url
            && !(url.starts_with("redis://") || url.starts_with("unix://"))
        {
            return Err(invalid(
                "health.redis_url",
                "must start with redis:// (or unix:// for a socket)",
            ));
        }
        let retry = RetryPolicy {
            attempts: self.store.retry_attempts,
            first_backoff: self.store.retry_first_backoff,
            max_backoff: self.store.retry_max_backoff,
            outage_wait: self.store.outage_wait,
        };
        let auth = if self.auth.enabled {
            if self.auth.tokens.is_empty() {
                return Err(invalid(
                    "auth.tokens",
                    "auth is enabled but no [[auth.tokens]] are configured",
                ));
            }
            let mut grants = Vec::with_capacity(self.auth.tokens.len());
            for token in &self.auth.tokens {
                if token.token.is_empty() {
                    return Err(invalid("auth.tokens.token", "must not be empty"));
                }
                if token.allow.is_empty() {
                    return Err(invalid(
                        "auth.tokens.allow",
                        "list at least one namespace/service pattern",
                    ));
                }
                grants.push(TokenGrant::new(&token.token, &token.allow));
            }
            Some(grants)
        } else {
            None
        };
        Ok(Settings {
            grpc_listen,
            http_listen,
            shutdown_timeout: self.server.shutdown_timeout,
            http_max_body: self.server.http_max_body,
            grpc_max_message: self.server.grpc_max_message,
            advertise_host,
            register_self: self.server.register_self,
            store: StoreOptions {
                url: self.store.url.clone(),
                sqlite_synchronous: self.store.sqlite_synchronous,
                concurrency: NonZeroUsize::new(self.store.concurrency),
            },
            naming: NamingSettings {
                auto_create_services: self.naming.auto_create_services,
                existed_as_success: self.naming.existed_as_success,
                register,
                deregister,
                retry,
            },
            discovery: FeedSettings {
                refresh: discovery.refresh_interval,
                overlap: discovery.feed_overlap,
                retention: discovery.retention,
            },
            health: HealthSettings {
                enabled: health.enabled,
                redis_url,
                key_prefix: health.key_prefix.clone(),
                check_interval: health.check_interval,
                lease: health.lease,
                redis_timeout: health.redis_timeout,
                batch: health_batch,
                retry,
            },
            auth_heartbeats: self.auth.heartbeats,
            auth,
            metrics: self.telemetry.metrics,
        })
    }
}

fn batch_settings(key: &'static str, config: &BatchConfig) -> Result<BatchSettings, ConfigError> {
    let queue_size = NonZeroUsize::new(config.queue_size)
        .ok_or_else(|| invalid(key, "queue_size must be at least 1"))?;
    let max_batch = NonZeroUsize::new(config.max_batch)
        .ok_or_else(|| invalid(key, "max_batch must be at least 1"))?;
    if max_batch > queue_size {
        return Err(invalid(key, "max_batch must not exceed queue_size"));
    }
    if config.max_wait.is_zero() {
        return Err(invalid(key, "max_wait must be greater than 0"));
    }
    // A request must be able to reach a batch before it may expire.
    if config.task_life <= config.max_wait {
        return Err(invalid(key, "task_life must be longer than max_wait"));
    }
    Ok(BatchSettings {
        queue_size,
        max_batch,
        max_wait: config.max_wait,
        task_life: config.task_life,
        max_queue_wait: config.max_queue_wait,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_lists_the_defaults() {
        let example = Config::from_toml(EXAMPLE).unwrap();
        assert_eq!(example, Config::default());
        example.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::from_toml("[batch.register]\nmax_batchh = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_batchh"), "{err}");
    }

    #[test]
    fn durations_are_readable() {
        let config =
            Config::from_toml("[batch.register]\nmax_wait = \"5ms\"\ntask_life = \"2s\"\n")
                .unwrap();
        let settings = config.validate().unwrap();
        assert_eq!(settings.naming.register.max_wait, Duration::from_millis(5));
        assert_eq!(settings.naming.register.task_life, Duration::from_secs(2));
    }

    #[test]
    fn relations_are_enforced() {
        for (text, key) in [
            ("[batch.register]\ntask_life = \"10ms\"\n", "task_life"),
            ("[batch.deregister]\nmax_batch = 0\n", "max_batch"),
            (
                "[batch.register]\nqueue_size = 4\nmax_batch = 8\n",
                "max_batch",
            ),
            ("[auth]\nenabled = true\n", "auth.tokens"),
            ("[server]\ngrpc_listen = \"nowhere\"\n", "grpc_listen"),
            (
                "[server]\ngrpc_max_message = 0\n",
                "server.grpc_max_message",
            ),
            ("[store]\nurl = \"postgres://x\"\n", "store.url"),
            (
                "[discovery]\nretention = \"2s\"\nrefresh_interval = \"1s\"\n",
                "discovery.retention",
            ),
            (
                "[discovery]\nrefresh_interval = \"0s\"\n",
                "refresh_interval",
            ),
        ] {
            let err = Config::from_toml(text).unwrap().validate().unwrap_err();
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut config = Config::default();
        config.apply_env(|key| match key {
            ENV_STORE_URL => Some("sqlite:///tmp/x.db".to_owned()),
            ENV_GRPC_LISTEN => Some("127.0.0.1:9991".to_owned()),
            _ => None,
        });
        let settings = config.validate().unwrap();
        assert_eq!(settings.store.url, "sqlite:///tmp/x.db");
        assert_eq!(settings.grpc_listen.port(), 9991);
        assert_eq!(settings.http_listen.port(), 8090);
    }

    #[test]
    fn tokens_are_not_in_debug_output() {
        let config = Config::from_toml(
            "[auth]\nenabled = true\n[[auth.tokens]]\ntoken = \"t0p-secret\"\nallow = [\"ns/*\"]\n",
        )
        .unwrap();
        assert!(!format!("{config:?}").contains("t0p-secret"));
        assert!(!format!("{:?}", config.validate().unwrap()).contains("t0p-secret"));
    }
}
