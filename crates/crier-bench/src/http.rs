//! What the WebSocket upgrade and the Server-Sent Events request share: an
//! HTTP/1.1 endpoint and reading the response head off a fresh connection.

use anyhow::{Result, bail};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where a request goes: `host` is the `Host` header (the address as
/// given), `path` the request target.
pub struct Endpoint<'a> {
    pub host: &'a str,
    pub path: &'a str,
}

/// Bytes of response headers read at most before giving up.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Sends `request` and reads the response head. Returns the head (status
/// line and headers, without the final empty line) and the read buffer
/// (capacity `buf_cap`) holding whatever followed it. `what` names the
/// exchange in errors. Callers bound it with a timeout.
pub async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buf_cap: usize,
    what: &str,
) -> Result<(BytesMut, BytesMut)> {
    stream.write_all(request).await?;
    let mut buf = BytesMut::with_capacity(buf_cap.max(4096));
    // Bytes already searched for the blank line, less 3 (it may straddle reads).
    let mut from = 0usize;
    loop {
        if let Some(at) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + at;
            let mut head = buf.split_to(end + 4);
            head.truncate(end);
            return Ok((head, buf));
        }
        from = buf.len().saturating_sub(3);
        if buf.len() > MAX_RESPONSE_HEAD {
            bail!("no end of the {what} response within {MAX_RESPONSE_HEAD} bytes");
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("server closed the connection during the {what}");
        }
    }
}

/// The status line and the `name: value` header lines of a response head.
pub fn parse_head(head: &[u8]) -> Result<(&str, impl Iterator<Item = Result<(&str, &str)>>)> {
    let Ok(text) = std::str::from_utf8(head) else {
        bail!("response head is not UTF-8");
    };
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or("");
    let headers = lines.map(|line| match line.split_once(':') {
        Some((name, value)) => Ok((name.trim(), value.trim())),
        None => bail!("bad header line in the response: {line:?}"),
    });
    Ok((status, headers))
}

/// The status code of an HTTP/1.x status line.
pub fn status_code(status: &str) -> Option<&str> {
    let mut words = status.split(' ');
    let (version, code) = (words.next()?, words.next()?);
    version.starts_with("HTTP/1.").then_some(code)
}
