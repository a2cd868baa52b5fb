//! The command-line clients: `crier client` (interactive), `crier sub` and
//! `crier pub` (for scripts), and `crier token` (development tokens). They share the connection and the reader of what
//! the server sends.

pub mod interactive;
pub mod publish;
pub mod subscribe;
pub mod token;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::protocol::push;

/// Default server address of the clients, the server's default listen address.
pub const DEFAULT_ADDR: &str = crate::config::DEFAULT_LISTEN;

/// How the clients reach a server beyond its address: TLS, a token.
#[derive(Args, Debug, Clone, Default)]
pub struct Security {
    /// Speak TLS (the server runs with --tls-cert).
    #[arg(long, env = "CRIER_TLS")]
    pub tls: bool,
    /// PEM certificate(s) to trust with --tls (the server's CA).
    #[arg(long, env = "CRIER_CA", requires = "tls")]
    pub ca: Option<PathBuf>,
    /// Token to send with `AUTH` before anything else.
    #[arg(long, env = "CRIER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Any stream the clients read and write.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// The halves of a connection.
pub type Reader = ReadHalf<Box<dyn Stream>>;
pub type Writer = WriteHalf<Box<dyn Stream>>;

/// Connects (and, with --tls, handshakes) with a clear error.
pub async fn connect(addr: &str, to: &Security) -> anyhow::Result<(Reader, Writer)> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to crier at {addr}"))?;
    stream.set_nodelay(true)?;
    let stream: Box<dyn Stream> = if to.tls {
        let ca = to.ca.as_ref().context("--tls needs --ca FILE (the certificate to trust)")?;
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("--ca {}: cannot read", ca.display()))?
        {
            roots.add(cert.with_context(|| format!("--ca {}: bad certificate", ca.display()))?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
        let name =
            rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                .with_context(|| format!("{host}: not a server name"))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        Box::new(connector.connect(name, stream).await.context("TLS handshake with crier")?)
    } else {
        Box::new(stream)
    };
    Ok(tokio::io::split(stream))
}

/// The `AUTH` line to send first, if a token was given.
pub fn auth_line(to: &Security) -> Option<Vec<u8>> {
    to.token.as_ref().map(|token| format!("AUTH {token}\r\n").into_bytes())
}

/// One thing the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A reply, or a version 1 push: one line without its CRLF.
    Line(Bytes),
    /// A version 2 push; `pattern` is set for a delivery through a pattern.
    /// A version 2 or 3 push; `id` in version 3 (`-` without history).
    Message { pattern: Option<Bytes>, channel: Bytes, id: Option<Bytes>, payload: Bytes },
}

/// Reads [`Frame`]s, telling pushes from replies with [`push::parse`].
pub struct FrameReader {
    reader: Reader,
    buf: BytesMut,
}

impl FrameReader {
    pub fn new(reader: Reader) -> FrameReader {
        FrameReader { reader, buf: BytesMut::with_capacity(8192) }
    }

    /// The next frame, or `None` once the server closed the connection.
    pub async fn next(&mut self) -> anyhow::Result<Option<Frame>> {
        loop {
            if let Some((frame, used)) = push::parse(&self.buf).context("reading from crier")? {
                let bytes = self.buf.split_to(used).freeze();
                return Ok(Some(match frame {
                    push::Frame::Line(line) => Frame::Line(bytes.slice(line)),
                    push::Frame::Push { pattern, channel, id, payload } => Frame::Message {
                        pattern: pattern.map(|pattern| bytes.slice(pattern)),
                        channel: bytes.slice(channel),
                        id: id.map(|id| bytes.slice(id)),
                        payload: bytes.slice(payload),
                    },
                }));
            }
            if !self.fill().await? {
                // A complete line left unparsed is a push header whose payload
                // never came; an unfinished last line is dropped.
                if self.buf.contains(&b'\n') {
                    anyhow::bail!("connection closed in the middle of a message");
                }
                return Ok(None);
            }
        }
    }

    async fn fill(&mut self) -> anyhow::Result<bool> {
        self.buf.reserve(8192);
        let read = self.reader.read_buf(&mut self.buf).await.context("reading from crier")?;
        Ok(read > 0)
    }
}
