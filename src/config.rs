//! Server settings: flags, `CRIER_*` environment variables and an optional TOML
//! file, in that order of precedence, over built-in defaults.

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::auth::{Auth, KeySources};
use crate::history;
use crate::tls::Tls;

/// Default listen address: loopback only, so that a first run exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Default HTTP address (the web page, WebSocket, SSE, publish, metrics).
pub const DEFAULT_HTTP: &str = "127.0.0.1:7080";

/// `crier serve` flags. Every value is optional here so that the config file
/// can fill what neither a flag nor the environment set.
#[derive(Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML file with any of the keys below (e.g. `max-pending = 1048576`).
    #[arg(long, env = "CRIER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7070].
    #[arg(long, env = "CRIER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// HTTP address: the web page, /ws, /sse, POST /publish, /healthz, /readyz, /metrics [default: 127.0.0.1:7080].
    #[arg(long, env = "CRIER_HTTP")]
    pub http: Option<SocketAddr>,
    /// Do not listen for HTTP at all (`--no-http`, or `--no-http true`).
    #[arg(long, env = "CRIER_NO_HTTP", num_args = 0..=1, default_missing_value = "true")]
    pub no_http: Option<bool>,
    /// Largest POST /publish body in bytes, at most --max-pending / 6 [default: 1048576, or --max-pending / 6 if less].
    #[arg(long, env = "CRIER_MAX_PAYLOAD")]
    pub max_payload: Option<usize>,
    /// Seconds /readyz answers 503 after SIGTERM before connections are closed [default: 0].
    #[arg(long, env = "CRIER_SHUTDOWN_DELAY")]
    pub shutdown_delay: Option<f64>,
    /// Use Redis Pub/Sub as the backend (redis://[user:pass@]host:port[/db] or rediss://).
    #[arg(long, env = "CRIER_REDIS")]
    pub redis: Option<String>,
    /// Bytes read from Redis ahead of the fan-out, at most, before the node stops reading (and Redis may cut it off) [default: 268435456].
    #[arg(long, env = "CRIER_REDIS_READ_AHEAD")]
    pub redis_read_ahead: Option<usize>,
    /// Use a Redis Cluster (7+) as the backend: seed nodes, comma-separated URLs; channels become shard channels, patterns are refused.
    #[arg(long, env = "CRIER_REDIS_CLUSTER", conflicts_with = "redis")]
    pub redis_cluster: Option<String>,
    /// Channel of a bare `SUBSCRIBE` / `UNSUBSCRIBE` [default: updates].
    #[arg(long, env = "CRIER_DEFAULT_CHANNEL")]
    pub default_channel: Option<String>,
    /// Longest command line in bytes [default: 65536].
    #[arg(long, env = "CRIER_MAX_LINE")]
    pub max_line: Option<usize>,
    /// Pending output per connection in bytes before `ERR slow consumer` [default: 8388608].
    #[arg(long, env = "CRIER_MAX_PENDING")]
    pub max_pending: Option<usize>,
    /// Channels plus patterns one connection may subscribe to [default: 10000].
    #[arg(long, env = "CRIER_MAX_SUBSCRIPTIONS")]
    pub max_subscriptions: Option<usize>,
    /// Channels plus patterns in use on the server before `ERR too many channels` [default: 1000000].
    #[arg(long, env = "CRIER_MAX_CHANNELS")]
    pub max_channels: Option<usize>,
    /// Concurrent client connections before `ERR server full` [default: 10000].
    #[arg(long, env = "CRIER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Answer `PUBLISH` from clients without a token with `ERR forbidden` (with auth off: from every client; only the backend publishes).
    #[arg(long, env = "CRIER_DENY_PUBLISH")]
    pub deny_publish: Option<bool>,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// PEM certificate chain: the TCP listener speaks TLS, the HTTP one HTTPS and WSS (SIGHUP reloads it).
    #[arg(long, env = "CRIER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "CRIER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Messages kept per channel for RESUME and GET /history; 0 turns history off [default: 0].
    #[arg(long, env = "CRIER_HISTORY_SIZE")]
    pub history_size: Option<usize>,
    /// Seconds a kept message lives [default: 3600].
    #[arg(long, env = "CRIER_HISTORY_TTL")]
    pub history_ttl: Option<u64>,
    /// Channels (comma-separated globs) that keep history [default: all].
    #[arg(long, env = "CRIER_HISTORY_CHANNELS")]
    pub history_channels: Option<String>,
    /// Payload bytes kept in all channels' history; the oldest go first [default: 67108864].
    #[arg(long, env = "CRIER_HISTORY_MAX_BYTES")]
    pub history_max_bytes: Option<usize>,
    /// With auth on: channels (comma-separated globs) a client without a token may subscribe to [default: none].
    #[arg(long, env = "CRIER_ANONYMOUS_SUBSCRIBE")]
    pub anonymous_subscribe: Option<String>,
    /// With auth on: channels (comma-separated globs) a client without a token may publish to [default: none].
    #[arg(long, env = "CRIER_ANONYMOUS_PUBLISH")]
    pub anonymous_publish: Option<String>,
}

/// The keys that verify tokens (`serve`) or sign them (`token`, HMAC). Auth is
/// on when any is given.
#[derive(Args, Debug, Default, Clone)]
pub struct KeyArgs {
    /// HMAC secret for HS256/384/512 tokens (at least 32 bytes; prefer the file or the environment).
    #[arg(long, env = "CRIER_AUTH_HMAC_SECRET", hide_env_values = true)]
    pub auth_hmac_secret: Option<Secret>,
    /// File of HMAC secrets, one per line (two while rotating; white space around each ignored).
    #[arg(long, env = "CRIER_AUTH_HMAC_SECRET_FILE")]
    pub auth_hmac_secret_file: Option<PathBuf>,
    /// PEM public key (RSA, EC P-256/P-384, Ed25519) for RS*/PS*/ES*/EdDSA tokens; repeat to accept several (rotation).
    #[arg(long, env = "CRIER_AUTH_PUBLIC_KEY", value_delimiter = ',')]
    pub auth_public_key: Vec<PathBuf>,
    /// JWK set file (JSON) of public keys, accepted beside the others.
    #[arg(long, env = "CRIER_AUTH_JWKS")]
    pub auth_jwks: Option<PathBuf>,
}

/// A secret from a flag or the environment: never shown by `Debug`.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(text: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(text.to_string()))
    }
}

/// The config file: the same keys as the flags.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    listen: Option<SocketAddr>,
    http: Option<SocketAddr>,
    no_http: Option<bool>,
    max_payload: Option<usize>,
    shutdown_delay: Option<f64>,
    redis: Option<String>,
    redis_read_ahead: Option<usize>,
    redis_cluster: Option<String>,
    default_channel: Option<String>,
    max_line: Option<usize>,
    max_pending: Option<usize>,
    max_subscriptions: Option<usize>,
    max_channels: Option<usize>,
    max_connections: Option<usize>,
    deny_publish: Option<bool>,
    auth_hmac_secret: Option<Secret>,
    auth_hmac_secret_file: Option<PathBuf>,
    auth_public_key: Option<Vec<PathBuf>>,
    auth_jwks: Option<PathBuf>,
    anonymous_subscribe: Option<String>,
    anonymous_publish: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    history_size: Option<usize>,
    history_ttl: Option<u64>,
    history_channels: Option<String>,
    history_max_bytes: Option<usize>,
}

/// The settings a running server uses.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `None` with `--no-http`.
    pub http: Option<SocketAddr>,
    pub max_payload: usize,
    pub shutdown_delay: std::time::Duration,
    pub redis: Option<String>,
    pub redis_read_ahead: usize,
    /// `--redis-cluster`: seed URLs, comma-separated.
    pub redis_cluster: Option<String>,
    pub default_channel: Bytes,
    pub max_line: usize,
    pub max_pending: usize,
    pub max_subscriptions: usize,
    pub max_channels: usize,
    pub max_connections: usize,
    /// Keys and anonymous permissions (`--deny-publish` folded in).
    pub auth: Arc<Auth>,
    /// Certificate and key of both listeners, when TLS is on.
    pub tls: Option<Tls>,
    pub history: history::Settings,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            http: Some(SocketAddr::from(([127, 0, 0, 1], 7080))),
            max_payload: 1024 * 1024,
            shutdown_delay: std::time::Duration::ZERO,
            redis: None,
            redis_read_ahead: 256 * 1024 * 1024,
            redis_cluster: None,
            default_channel: Bytes::from_static(b"updates"),
            max_line: 64 * 1024,
            max_pending: 8 * 1024 * 1024,
            max_subscriptions: 10_000,
            max_channels: 1_000_000,
            max_connections: 10_000,
            auth: Arc::new(Auth::off(false)),
            tls: None,
            history: history::Settings {
                size: 0,
                ttl: std::time::Duration::from_secs(3600),
                channels: None,
                max_bytes: 64 * 1024 * 1024,
            },
        }
    }
}

impl ServeArgs {
    /// Merges flags, environment (already folded in by clap), file and defaults.
    pub fn resolve(self) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let default = Config::default();
        // An explicit --http (flag or environment) beats the file's no-http.
        let no_http = match (self.no_http, self.http) {
            (Some(true), Some(_)) => bail!("--http and --no-http contradict each other"),
            (Some(no_http), _) => no_http,
            (None, Some(_)) => false,
            (None, None) => file.no_http.unwrap_or(false),
        };
        let shutdown_delay = self.shutdown_delay.or(file.shutdown_delay).unwrap_or(0.0);
        if !(0.0..=3600.0).contains(&shutdown_delay) {
            bail!("--shutdown-delay must be between 0 and 3600 seconds");
        }
        let config = Config {
            listen: self.listen.or(file.listen).unwrap_or(default.listen),
            http: if no_http { None } else { self.http.or(file.http).or(default.http) },
            max_payload: self.max_payload.or(file.max_payload).unwrap_or_else(|| {
                // Unset: within what a subscriber's budget can take (see validate).
                let max_pending =
                    self.max_pending.or(file.max_pending).unwrap_or(default.max_pending);
                default.max_payload.min(max_pending / 6).max(1)
            }),
            shutdown_delay: std::time::Duration::from_secs_f64(shutdown_delay),
            redis: self.redis.or(file.redis),
            redis_read_ahead: self
                .redis_read_ahead
                .or(file.redis_read_ahead)
                .unwrap_or(default.redis_read_ahead),
            redis_cluster: self.redis_cluster.or(file.redis_cluster),
            default_channel: self
                .default_channel
                .or(file.default_channel)
                .map_or(default.default_channel, Bytes::from),
            max_line: self.max_line.or(file.max_line).unwrap_or(default.max_line),
            max_pending: self.max_pending.or(file.max_pending).unwrap_or(default.max_pending),
            max_subscriptions: self
                .max_subscriptions
                .or(file.max_subscriptions)
                .unwrap_or(default.max_subscriptions),
            max_channels: self.max_channels.or(file.max_channels).unwrap_or(default.max_channels),
            max_connections: self
                .max_connections
                .or(file.max_connections)
                .unwrap_or(default.max_connections),
            auth: Arc::new(Auth::load(
                &KeySources {
                    hmac_secret: self.keys.auth_hmac_secret.or(file.auth_hmac_secret).map(|s| s.0),
                    hmac_secret_file: self
                        .keys
                        .auth_hmac_secret_file
                        .or(file.auth_hmac_secret_file),
                    public_keys: if self.keys.auth_public_key.is_empty() {
                        file.auth_public_key.unwrap_or_default()
                    } else {
                        self.keys.auth_public_key
                    },
                    jwks: self.keys.auth_jwks.or(file.auth_jwks),
                },
                &self.anonymous_subscribe.or(file.anonymous_subscribe).unwrap_or_default(),
                &self.anonymous_publish.or(file.anonymous_publish).unwrap_or_default(),
                self.deny_publish.or(file.deny_publish).unwrap_or(false),
            )?),
            tls: match (self.tls_cert.or(file.tls_cert), self.tls_key.or(file.tls_key)) {
                (Some(cert), Some(key)) => Some(Tls::load(&cert, &key)?),
                (None, None) => None,
                _ => bail!("--tls-cert and --tls-key go together"),
            },
            history: history::Settings {
                size: self.history_size.or(file.history_size).unwrap_or(default.history.size),
                ttl: self
                    .history_ttl
                    .or(file.history_ttl)
                    .map_or(default.history.ttl, std::time::Duration::from_secs),
                channels: self.history_channels.or(file.history_channels).map(|globs| {
                    let globs = globs.split(',').map(str::trim).filter(|g| !g.is_empty());
                    globs.map(|glob| crate::broker::glob::Glob::new(glob.as_bytes())).collect()
                }),
                max_bytes: self
                    .history_max_bytes
                    .or(file.history_max_bytes)
                    .unwrap_or(default.history.max_bytes),
            },
        };
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    fn validate(&self) -> anyhow::Result<()> {
        if self.redis.is_some() && self.redis_cluster.is_some() {
            bail!("--redis and --redis-cluster exclude each other: one backend");
        }
        let name = &self.default_channel;
        if crate::protocol::command::valid_name(name).is_err() {
            bail!(
                "--default-channel: a channel name is 1 to 256 bytes without white space or control characters"
            );
        }
        for (flag, value) in [
            ("--max-line", self.max_line),
            ("--max-payload", self.max_payload),
            ("--max-pending", self.max_pending),
            ("--max-subscriptions", self.max_subscriptions),
            ("--max-channels", self.max_channels),
            ("--max-connections", self.max_connections),
            ("--redis-read-ahead", self.redis_read_ahead),
        ] {
            if value == 0 {
                bail!("{flag} must be at least 1");
            }
        }
        // A JSON push can be six times its payload (`\u0000` per byte): one
        // publish must not cut off every web subscriber at once.
        if self.max_payload.saturating_mul(6) > self.max_pending {
            bail!("--max-payload must be at most a sixth of --max-pending");
        }
        if self.max_connections > u32::MAX as usize {
            bail!("--max-connections is at most {}", u32::MAX);
        }
        Ok(())
    }
}
