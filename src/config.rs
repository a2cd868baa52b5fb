//! Server settings: flags, `CRIER_*` environment variables and an optional TOML
//! file, in that order of precedence, over built-in defaults.

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

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
    /// Largest POST /publish body in bytes [default: 1048576].
    #[arg(long, env = "CRIER_MAX_PAYLOAD")]
    pub max_payload: Option<usize>,
    /// Seconds /readyz answers 503 after SIGTERM before connections are closed [default: 0].
    #[arg(long, env = "CRIER_SHUTDOWN_DELAY")]
    pub shutdown_delay: Option<f64>,
    /// Use Redis Pub/Sub as the backend (redis://[user:pass@]host:port[/db] or rediss://).
    #[arg(long, env = "CRIER_REDIS")]
    pub redis: Option<String>,
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
    /// Answer `PUBLISH` from clients with `ERR forbidden` (only the backend publishes).
    #[arg(long, env = "CRIER_DENY_PUBLISH")]
    pub deny_publish: Option<bool>,
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
    default_channel: Option<String>,
    max_line: Option<usize>,
    max_pending: Option<usize>,
    max_subscriptions: Option<usize>,
    max_channels: Option<usize>,
    max_connections: Option<usize>,
    deny_publish: Option<bool>,
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
    pub default_channel: Bytes,
    pub max_line: usize,
    pub max_pending: usize,
    pub max_subscriptions: usize,
    pub max_channels: usize,
    pub max_connections: usize,
    pub deny_publish: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            http: Some(SocketAddr::from(([127, 0, 0, 1], 7080))),
            max_payload: 1024 * 1024,
            shutdown_delay: std::time::Duration::ZERO,
            redis: None,
            default_channel: Bytes::from_static(b"updates"),
            max_line: 64 * 1024,
            max_pending: 8 * 1024 * 1024,
            max_subscriptions: 10_000,
            max_channels: 1_000_000,
            max_connections: 10_000,
            deny_publish: false,
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
        let no_http = self.no_http.or(file.no_http).unwrap_or(false);
        let shutdown_delay = self.shutdown_delay.or(file.shutdown_delay).unwrap_or(0.0);
        if !(0.0..=3600.0).contains(&shutdown_delay) {
            bail!("--shutdown-delay must be between 0 and 3600 seconds");
        }
        let config = Config {
            listen: self.listen.or(file.listen).unwrap_or(default.listen),
            http: if no_http { None } else { self.http.or(file.http).or(default.http) },
            max_payload: self.max_payload.or(file.max_payload).unwrap_or(default.max_payload),
            shutdown_delay: std::time::Duration::from_secs_f64(shutdown_delay),
            redis: self.redis.or(file.redis),
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
            deny_publish: self.deny_publish.or(file.deny_publish).unwrap_or(default.deny_publish),
        };
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    fn validate(&self) -> anyhow::Result<()> {
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
        ] {
            if value == 0 {
                bail!("{flag} must be at least 1");
            }
        }
        if self.max_connections > u32::MAX as usize {
            bail!("--max-connections is at most {}", u32::MAX);
        }
        Ok(())
    }
}
