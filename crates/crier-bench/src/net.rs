//! Opening many connections: resolve once, spread over loopback source
//! addresses and turn the errors that end a large run into plain advice.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::net::{TcpSocket, TcpStream};

/// Connections per loopback source address when the user does not say: one
/// address has ~28k ephemeral ports, so stay well below.
pub const CONNS_PER_SOURCE: usize = 20_000;

pub struct Connector {
    pub server: SocketAddr,
    /// Source addresses to bind before connecting; empty = let the kernel pick.
    sources: Vec<Ipv4Addr>,
    timeout: Duration,
}

impl Connector {
    /// `sources`: how many addresses 127.0.0.1, 127.0.0.2, ... to spread over.
    /// Binding only makes sense toward a loopback server; one address with
    /// no explicit request is left to the kernel (it then also picks ports).
    pub async fn new(
        addr: &str,
        sources: usize,
        explicit: bool,
        timeout: Duration,
    ) -> Result<Self> {
        let server = tokio::net::lookup_host(addr)
            .await
            .with_context(|| format!("cannot resolve {addr}"))?
            .min_by_key(|a| !a.is_ipv4())
            .ok_or_else(|| anyhow!("{addr} resolves to no address"))?;
        let loopback_v4 = matches!(server.ip(), IpAddr::V4(ip) if ip.is_loopback());
        let sources = if loopback_v4 && (sources > 1 || explicit) {
            (0..sources.max(1)).map(|i| Ipv4Addr::from(0x7f00_0001u32 + i as u32)).collect()
        } else {
            if sources > 1 {
                eprintln!(
                    "bench: {server} is not an IPv4 loopback address: not binding source addresses"
                );
            }
            Vec::new()
        };
        Ok(Connector { server, sources, timeout })
    }

    pub fn source_count(&self) -> usize {
        self.sources.len().max(1)
    }

    /// Connects connection number `index` (round-robin over the sources).
    pub async fn connect(&self, index: usize) -> Result<TcpStream> {
        let source = (!self.sources.is_empty()).then(|| self.sources[index % self.sources.len()]);
        let attempt = async {
            let sock = match self.server {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            if let Some(ip) = source {
                defer_port_choice(&sock);
                sock.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
            }
            let stream = sock.connect(self.server).await?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(stream)
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(explain(e, source, self.server)),
            Err(_) => bail!(
                "connecting to {} timed out after {:?} (server overloaded or its accept backlog full?)",
                self.server,
                self.timeout
            ),
        }
    }
}

/// Sets IP_BIND_ADDRESS_NO_PORT: with it, `bind(ip, 0)` picks no port and
/// `connect` later chooses one for the full 4-tuple. Without it, bind scans
/// for a port that is free for every destination, which gets slow (seconds of
/// kernel CPU for 10,000 connections) once earlier runs have left tens of
/// thousands of TIME_WAIT sockets, and caps a source address at ~28k ports.
/// Best effort: on failure the plain bind still works.
fn defer_port_choice(sock: &TcpSocket) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: a valid socket descriptor and a c_int option value of the
        // size we pass; setsockopt does not keep the pointer.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = sock;
}

/// Adds the likely cause and the fix to the errors that stop big runs.
fn explain(e: std::io::Error, source: Option<Ipv4Addr>, server: SocketAddr) -> anyhow::Error {
    match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => anyhow!(
            "out of file descriptors ({e}): the open-file limit (RLIMIT_NOFILE) of this process \
             stops it; use fewer connections or raise the hard limit"
        ),
        Some(libc::EADDRNOTAVAIL) | Some(libc::EADDRINUSE) => anyhow!(
            "no free local port on {} ({e}): spread over more addresses with --source-addrs",
            source.map_or_else(|| "the default source address".into(), |s| s.to_string())
        ),
        Some(libc::ECONNREFUSED) => {
            anyhow!("{server} refused the connection: is the server running?")
        }
        _ => anyhow!("connecting to {server}: {e}"),
    }
}
