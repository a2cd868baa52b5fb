//! Opening a connection to Redis: TCP (or TLS for `rediss://`), then
//! `HELLO 3` with the URL's credentials and `SELECT` of its database.
//! The URL is read by redis-rs, so it means what it means to every Rust
//! Redis client.

use bytes::BytesMut;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::resp::{self, Value};

/// How long Redis may take to answer anything (connecting included) before
/// the connection is considered lost.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// A byte stream to Redis, plain or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Where and how to connect, read once from the URL.
#[derive(Clone)]
pub struct Target {
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.write_str(&self.describe())
    }
}

impl Target {
    /// Reads `--redis URL`; every refusal is one line naming what is wrong.
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        use redis::IntoConnectionInfo;
        let info = url.into_connection_info().map_err(|error| anyhow::anyhow!("{error}"))?;
        let settings = info.redis_settings();
        let (host, port, tls) = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port, None),
            redis::ConnectionAddr::TcpTls { insecure: true, .. } => {
                anyhow::bail!("#insecure (TLS without verification) is not supported")
            }
            redis::ConnectionAddr::TcpTls { host, port, .. } => {
                (host.clone(), *port, Some(Arc::new(tls_config())))
            }
            _ => anyhow::bail!("only redis:// and rediss:// URLs are supported"),
        };
        Ok(Target {
            host,
            port,
            tls,
            username: settings.username().map(str::to_owned),
            password: settings.password().map(str::to_owned),
            db: settings.db(),
        })
    }

    /// The same credentials and TLS settings, another node (a cluster's
    /// master as `CLUSTER SLOTS` announces it). A node of a cluster has
    /// only database 0.
    pub fn at(&self, host: &str, port: u16) -> Target {
        Target { host: host.to_string(), port, db: 0, ..self.clone() }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The database `SELECT`ed (a cluster has only 0).
    pub fn db(&self) -> i64 {
        self.db
    }

    /// Host and port, as a cluster names its nodes.
    pub fn addr(&self) -> (String, u16) {
        (self.host.clone(), self.port)
    }

    /// `host:port`, for logs.
    pub fn describe(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://{}:{}/{}", self.host, self.port, self.db)
    }

    /// Connects and says hello, within [`REDIS_TIMEOUT`].
    pub async fn open(&self) -> std::io::Result<Box<dyn Stream>> {
        tokio::time::timeout(REDIS_TIMEOUT, self.open_now())
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))?
    }

    async fn open_now(&self) -> std::io::Result<Box<dyn Stream>> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        let mut stream: Box<dyn Stream> = match &self.tls {
            None => Box::new(tcp),
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|error| std::io::Error::other(error.to_string()))?;
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
                Box::new(connector.connect(name, tcp).await?)
            }
        };
        let mut hello: Vec<&[u8]> = vec![b"HELLO", b"3"];
        if let Some(password) = &self.password {
            let user = self.username.as_deref().unwrap_or("default");
            hello.extend([&b"AUTH"[..], user.as_bytes(), password.as_bytes()]);
        }
        let mut out = BytesMut::new();
        resp::command(&mut out, &hello);
        let db = self.db.to_string();
        if self.db != 0 {
            resp::command(&mut out, &[b"SELECT", db.as_bytes()]);
        }
        stream.write_all(&out).await?;
        let replies = if self.db != 0 { 2 } else { 1 };
        let mut buf = BytesMut::with_capacity(1024);
        let mut answered = 0;
        while answered < replies {
            match resp::parse(&buf) {
                Ok(Some((value, len))) => {
                    if let Value::Error(text) = value {
                        // HELLO's refusal names no secret: "WRONGPASS ...".
                        return Err(std::io::Error::other(
                            String::from_utf8_lossy(text).into_owned(),
                        ));
                    }
                    let _ = buf.split_to(len);
                    answered += 1;
                }
                Ok(None) => {
                    if stream.read_buf(&mut buf).await? == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Err(malformed) => return Err(std::io::Error::other(malformed)),
            }
        }
        Ok(stream)
    }
}

/// Sends one command on a fresh connection and reads its reply, within
/// [`REDIS_TIMEOUT`]; `read` turns the reply into what the caller keeps
/// (an error reply is an error already).
pub async fn ask<T>(
    stream: &mut dyn Stream,
    command: &[u8],
    read: impl FnOnce(&Value<'_>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let asked = async {
        stream.write_all(command).await?;
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            match resp::parse(&buf) {
                Ok(Some((Value::Error(text), _))) => {
                    return Err(std::io::Error::other(String::from_utf8_lossy(text).into_owned()));
                }
                Ok(Some((reply, _))) => return read(&reply),
                Ok(None) => {
                    if stream.read_buf(&mut buf).await? == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Err(malformed) => return Err(std::io::Error::other(malformed)),
            }
        }
    };
    tokio::time::timeout(REDIS_TIMEOUT, asked)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))?
}

/// The system's trusted roots (`SSL_CERT_FILE` and `SSL_CERT_DIR` are
/// honoured, as operators expect).
fn tls_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!("redis: while loading trusted certificates: {error}");
    }
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!("redis: no trusted certificate found; rediss:// cannot verify Redis");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|_| unreachable!("ring supports the default protocol versions"))
}
