//! Clients of the HTTP listener: a real HTTP client (ureq), a WebSocket
//! client (tungstenite) and a Server-Sent Events reader, all over real
//! sockets, with the harness's deadline on every read.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};

use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

use super::DEADLINE;

/// A status and a body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(DEADLINE))
        .build()
        .into()
}

fn answer(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let response = response.expect("an HTTP answer from crier");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    let body = response.into_body().read_to_vec().expect("the body");
    Answer { status, content_type, body }
}

pub fn get(http: SocketAddr, path: &str) -> Answer {
    answer(agent().get(format!("http://{http}{path}")).call())
}

pub fn post(http: SocketAddr, path: &str, body: &[u8]) -> Answer {
    answer(agent().post(format!("http://{http}{path}")).send(body))
}

/// A POST with a bearer token.
pub fn post_with_token(http: SocketAddr, path: &str, token: &str, body: &[u8]) -> Answer {
    let request = agent().post(format!("http://{http}{path}"));
    answer(request.header("Authorization", format!("Bearer {token}")).send(body))
}

/// Waits until `/metrics` shows `line`.
pub fn wait_metric(http: SocketAddr, line: &str) {
    wait_metrics(http, line, |metrics| metrics.lines().any(|l| l == line));
}

/// Polls `/metrics` until `done` holds for one scrape, and returns that
/// scrape (the server's counters have no event to await, so this polls,
/// bounded by the deadline; `what` names the wait in the failure).
pub fn wait_metrics(http: SocketAddr, what: &str, done: impl Fn(&str) -> bool) -> String {
    let started = std::time::Instant::now();
    loop {
        let metrics = get(http, "/metrics").text();
        if done(&metrics) {
            return metrics;
        }
        assert!(started.elapsed() < DEADLINE, "/metrics never showed {what}:\n{metrics}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Sends raw bytes as a request and reads the whole answer (for requests
/// an HTTP client will not send).
pub fn raw(http: SocketAddr, request: &[u8]) -> String {
    use std::io::Write;
    let mut stream = TcpStream::connect(http).expect("connect to crier");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream.write_all(request).expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// A WebSocket client of `/ws`.
pub struct Ws<S = TcpStream> {
    socket: WebSocket<S>,
}

impl Ws {
    pub fn connect(http: SocketAddr) -> Ws {
        Ws::open(http, "/ws").expect("a WebSocket")
    }

    /// Opens `path` (e.g. `/ws?token=...`); on refusal, the HTTP status and body.
    pub fn open(http: SocketAddr, path: &str) -> Result<Ws, (u16, String)> {
        let stream = TcpStream::connect(http).expect("connect to crier");
        stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Ws::over(stream, &format!("ws://{http}{path}"))
    }

    /// The handshake over any stream (TLS included).
    pub fn over<S: Read + std::io::Write>(stream: S, url: &str) -> Result<Ws<S>, (u16, String)> {
        match tungstenite::client::client(url, stream) {
            Ok((socket, response)) => {
                assert_eq!(response.status().as_u16(), 101);
                Ok(Ws { socket })
            }
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                let body =
                    response.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
                Err((response.status().as_u16(), body.unwrap_or_default()))
            }
            Err(error) => panic!("WebSocket handshake: {error}"),
        }
    }
}

impl<S: Read + std::io::Write> Ws<S> {
    /// The underlying socket (to send raw frames).
    pub fn stream(&mut self) -> &mut S {
        self.socket.get_mut()
    }

    pub fn send(&mut self, text: &str) {
        self.socket.send(Message::text(text)).expect("send to crier");
    }

    pub fn send_message(&mut self, message: Message) {
        self.socket.send(message).expect("send to crier");
    }

    /// The next data message (pings are answered by tungstenite itself).
    pub fn message(&mut self) -> Message {
        loop {
            match self.socket.read().expect("read from crier") {
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                message => return message,
            }
        }
    }

    /// The next message of any kind, control frames included.
    pub fn any_message(&mut self) -> Message {
        self.socket.read().expect("read from crier")
    }

    /// The next message, which must be text.
    pub fn text(&mut self) -> String {
        match self.message() {
            Message::Text(text) => text.as_str().to_string(),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    pub fn expect_text(&mut self, expected: &str) {
        assert_eq!(self.text(), expected, "unexpected message from crier");
    }

    /// Sends a command and checks its one reply.
    pub fn command(&mut self, command: &str, reply: &str) {
        self.send(command);
        self.expect_text(reply);
    }

    /// The next message as JSON.
    pub fn json(&mut self) -> serde_json::Value {
        let text = self.text();
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    }

    /// Reads until the server's close frame; returns its code.
    pub fn expect_close(&mut self) -> u16 {
        loop {
            match self.socket.read() {
                Ok(Message::Close(Some(CloseFrame { code, .. }))) => return code.into(),
                Ok(Message::Close(None)) => panic!("a close frame without a code"),
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(other) => panic!("expected a close frame, got {other:?}"),
                Err(error) => panic!("no close frame: {error}"),
            }
        }
    }
}

/// A Server-Sent Events stream from `/sse`.
pub struct Sse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: Option<BufReader<ureq::BodyReader<'static>>>,
    pub error_body: String,
}

impl Sse {
    /// Opens `/sse?query`; returns once the response headers arrived (which
    /// means every subscription is confirmed).
    pub fn open(http: SocketAddr, query: &str) -> Sse {
        Sse::open_with(http, query, None)
    }

    /// Opens with a bearer token in the `Authorization` header.
    pub fn open_with(http: SocketAddr, query: &str, token: Option<&str>) -> Sse {
        let mut request = agent().get(format!("http://{http}/sse?{query}"));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let response = request.call();
        let response = response.expect("an HTTP answer from crier");
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect();
        if status != 200 {
            let error_body = response.into_body().read_to_string().expect("the body");
            return Sse { status, headers, reader: None, error_body };
        }
        let reader = BufReader::new(response.into_body().into_reader());
        Sse { status, headers, reader: Some(reader), error_body: String::new() }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The next event's lines (comments skipped); `None` when the stream ends.
    pub fn event(&mut self) -> Option<Vec<String>> {
        let reader = self.reader.as_mut().expect("an open stream");
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let read = reader.read_line(&mut line).expect("read the stream");
            if read == 0 {
                return None;
            }
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if !lines.is_empty() {
                    return Some(lines);
                }
            } else if !line.starts_with(':') {
                lines.push(line.to_string());
            }
        }
    }

    /// The next event's `data:` as JSON.
    pub fn json(&mut self) -> serde_json::Value {
        let event = self.event().expect("an event");
        let data = event.iter().find_map(|l| l.strip_prefix("data: ")).expect("a data line");
        serde_json::from_str(data).unwrap_or_else(|_| panic!("not JSON: {data}"))
    }
}
