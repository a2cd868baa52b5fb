//! Test harness: runs the real `crier` binary (and a real `redis-server`) on
//! free loopback ports and talks to them over real sockets.
//!
//! Every read has a generous deadline so that a bug fails a test instead of
//! hanging it; no test sleeps to wait for something that can be awaited.

#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crier::protocol::push;

pub mod browser;
pub mod history;
pub mod keys;
pub mod web;

/// Upper bound on any single wait; reaching it means the test failed.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A `crier serve` process on a free loopback port, killed on drop.
pub struct Server {
    pub addr: SocketAddr,
    /// The HTTP listener's address (`None` with `--no-http`).
    pub http: Option<SocketAddr>,
    child: Child,
    /// Lines the server logged and no `wait_log` has passed over yet.
    early: RefCell<VecDeque<String>>,
    /// Lines `wait_log` has passed over.
    seen: RefCell<Vec<String>>,
    log: mpsc::Receiver<String>,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        Server::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        // CRIER_TEST_BIN runs the tests against another build (an older
        // release, to show that a test fails without its fix).
        let binary = std::env::var_os("CRIER_TEST_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_crier").into());
        let mut command = Command::new(binary);
        command.arg("serve").arg("--listen").arg("127.0.0.1:0");
        let http_wanted = !args.contains(&"--no-http");
        if http_wanted && !args.contains(&"--http") {
            command.arg("--http").arg("127.0.0.1:0");
        }
        command.args(args);
        command.env("CRIER_LOG", "info").envs(env.iter().copied());
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("start crier");
        let stderr = child.stderr.take().expect("stderr");
        let (addr, early, log) = wait_for_listening(stderr);
        let mut server = Server {
            addr,
            http: None,
            child,
            early: RefCell::new(early),
            seen: RefCell::default(),
            log,
        };
        if http_wanted {
            let early = server.early.borrow();
            let line = early.iter().find_map(|line| {
                line.split("http on http://")
                    .nth(1)
                    .or_else(|| line.split("http on https://").nth(1))
            });
            let addr = line.expect("the server logs its HTTP address before listening on");
            server.http = Some(addr.trim_end_matches('/').parse().expect("an HTTP address"));
        }
        server
    }

    /// The HTTP listener's address; panics if the server has none.
    pub fn http(&self) -> SocketAddr {
        self.http.expect("the server listens for HTTP")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// A client that has sent `HELLO 2` and got its confirmation.
    pub fn connect_v2(&self) -> Client {
        let mut client = self.connect();
        client.send(b"HELLO 2\r\n");
        client.expect_line(b"CONFIRMED");
        client
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Sends a signal and waits for the process to exit; returns its status.
    pub fn stop_with(&mut self, signal: i32) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.child.wait().expect("wait for crier")
    }

    /// Waits until the server logs a line containing `text`; returns it.
    pub fn wait_log(&self, text: &str) -> String {
        loop {
            let early = self.early.borrow_mut().pop_front();
            let line = early.unwrap_or_else(|| {
                self.log
                    .recv_timeout(DEADLINE)
                    .unwrap_or_else(|_| panic!("the server never logged {text:?}"))
            });
            self.seen.borrow_mut().push(line.clone());
            if line.contains(text) {
                return line;
            }
        }
    }

    /// Every line the server logged so far, without waiting (for a
    /// failure's message).
    pub fn log_now(&self) -> String {
        while let Ok(line) = self.log.try_recv() {
            self.early.borrow_mut().push_back(line);
        }
        self.log_so_far()
    }

    /// Every line the server logged so far that the tests have read, and
    /// those waiting.
    pub fn log_so_far(&self) -> String {
        let seen = self.seen.borrow();
        let early = self.early.borrow();
        seen.iter().chain(early.iter()).cloned().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the server's log until it says where it listens; returns the address,
/// the lines read so far and the rest to come.
fn wait_for_listening(
    stderr: ChildStderr,
) -> (SocketAddr, VecDeque<String>, mpsc::Receiver<String>) {
    let (lines, log) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut early = VecDeque::new();
    loop {
        let line = log.recv_timeout(DEADLINE).expect("crier did not start listening");
        if let Some(rest) = line.split("listening on ").nth(1) {
            let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
            return (addr, early, log);
        }
        early.push_back(line);
    }
}

/// A push's parts: pattern, channel, id, payload.
type Push = (Option<Vec<u8>>, Vec<u8>, Option<Vec<u8>>, Vec<u8>);

/// A raw TCP client that reads what the server sends, byte for byte.
pub struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::over(TcpStream::connect(addr).expect("connect to crier"))
    }

    fn over(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client { reader: BufReader::with_capacity(64 * 1024, stream) }
    }

    /// A client whose receive buffer is tiny (set before connecting, so the
    /// window is small from the start): when it stops reading, the server
    /// feels it after a few KiB instead of megabytes.
    pub fn connect_with_receive_buffer(addr: SocketAddr, bytes: usize) -> Client {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        socket.connect(&addr.into()).expect("connect to crier");
        Client::over(socket.into())
    }

    /// Everything the server sends until it closes the connection; panics
    /// if it does not close within the deadline.
    pub fn read_to_eof(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        match self.reader.read_to_end(&mut all) {
            Ok(_) => all,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => all,
            Err(error) => panic!("the server did not close the connection: {error}"),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("send to crier");
    }

    /// The next line, without its CRLF; panics unless it ended in CRLF.
    pub fn line(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).expect("read from crier");
        assert!(line.ends_with(b"\r\n"), "not a CRLF line: {:?}", line.escape_ascii().to_string());
        line.truncate(line.len() - 2);
        line
    }

    pub fn expect_line(&mut self, expected: &[u8]) {
        let line = self.line();
        assert_eq!(
            line.escape_ascii().to_string(),
            expected.escape_ascii().to_string(),
            "unexpected line from crier"
        );
    }

    /// Sends one command and checks the one-line reply.
    pub fn command(&mut self, command: &str, reply: &str) {
        self.send(format!("{command}\r\n").as_bytes());
        self.expect_line(reply.as_bytes());
    }

    pub fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut bytes = vec![0; n];
        self.reader.read_exact(&mut bytes).expect("read from crier");
        bytes
    }

    /// Reads one version 2 push: (pattern, channel, payload).
    pub fn push_v2(&mut self) -> (Option<Vec<u8>>, Vec<u8>, Vec<u8>) {
        let (pattern, channel, _, payload) = self.push();
        (pattern, channel, payload)
    }

    /// Reads one version 3 push: (channel, id, payload).
    pub fn push_v3(&mut self) -> (Vec<u8>, String, Vec<u8>) {
        let (_, channel, id, payload) = self.push();
        let id = id.expect("a version 3 push carries an id");
        (channel, String::from_utf8(id).expect("an ASCII id"), payload)
    }

    /// Reads one push: (pattern, channel, id, payload).
    fn push(&mut self) -> Push {
        let mut raw = Vec::new();
        loop {
            // A push ends with LF, so reading up to one LF at a time never
            // reads past it.
            let read = self.reader.read_until(b'\n', &mut raw).expect("read from crier");
            assert!(read > 0, "connection closed in a push: {}", raw.escape_ascii());
            match push::parse(&raw) {
                Ok(Some((push::Frame::Push { pattern, channel, id, payload }, _))) => {
                    let header = &raw[..payload.start];
                    assert!(
                        header.ends_with(b"\r\n"),
                        "not a CRLF line: {}",
                        header.escape_ascii()
                    );
                    return (
                        pattern.map(|p| raw[p].to_vec()),
                        raw[channel].to_vec(),
                        id.map(|id| raw[id].to_vec()),
                        raw[payload].to_vec(),
                    );
                }
                Ok(Some((push::Frame::Line(_), _))) => panic!("not a push: {}", raw.escape_ascii()),
                Ok(None) => {}
                Err(error) => panic!("{error}: {}", raw.escape_ascii()),
            }
        }
    }

    /// Asserts the server closed the connection (after everything read so far).
    pub fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "more data before EOF: {}", rest.escape_ascii()),
            Err(error) => {
                assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}")
            }
        }
    }

    /// Makes dropping this client send a TCP reset instead of a clean close.
    pub fn reset_on_close(&self) {
        use std::os::fd::AsRawFd;
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: setsockopt reads `linger` for the duration of the call only.
        let done = unsafe {
            libc::setsockopt(
                self.stream().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(done, 0, "setsockopt(SO_LINGER)");
    }

    pub fn shutdown_write(&self) {
        self.stream().shutdown(Shutdown::Write).unwrap();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real `redis-server` on a free loopback port, killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    /// Extra `redis-server` arguments (TLS settings).
    args: Vec<String>,
}

impl Redis {
    pub fn start() -> Redis {
        let mut redis = Redis { port: free_port(), child: None, args: Vec::new() };
        redis.restart();
        redis
    }

    /// A Redis that speaks only TLS on its port, with the certificate and key
    /// of `tls` (see [`TlsFiles`]).
    pub fn start_tls(tls: &TlsFiles) -> Redis {
        let port = free_port();
        let file = |name: &str| tls.dir.join(name).to_string_lossy().into_owned();
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &file("server.crt"),
            "--tls-key-file",
            &file("server.key"),
            "--tls-ca-cert-file",
            &file("ca.crt"),
            "--tls-auth-clients",
            "no",
        ];
        let mut redis = Redis { port, child: None, args: args.map(String::from).to_vec() };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port; returns once it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis is already running");
        let port = self.port.to_string();
        let mut args = if self.args.is_empty() { vec!["--port", &port] } else { Vec::new() };
        args.extend(self.args.iter().map(String::as_str));
        self.child = Some(redis_server(&args));
    }

    /// SIGKILL: Redis vanishes without a goodbye, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGSTOP or SIGCONT: a Redis that stops answering without closing
    /// anything looks, from crier, like a cut network.
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("redis is running");
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    }

    /// Runs one command with a RESP client of our own (redis-cli needs no
    /// quoting then); returns the raw reply.
    pub fn command(&self, args: &[&[u8]]) -> Vec<u8> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.write_all(&resp(args)).unwrap();
        let mut reader = BufReader::new(stream);
        let mut reply = Vec::new();
        reader.read_until(b'\n', &mut reply).unwrap();
        reply
    }

    /// `PUBLISH channel payload` straight into Redis; returns the receiver count.
    pub fn publish(&self, channel: &[u8], payload: &[u8]) -> i64 {
        let reply = self.command(&[b"PUBLISH", channel, payload]);
        assert_eq!(reply[0], b':', "{}", reply.escape_ascii());
        std::str::from_utf8(&reply[1..reply.len() - 2]).unwrap().parse().unwrap()
    }

    /// How many channels matching `pattern` Redis has subscribers for (`PUBSUB CHANNELS`).
    pub fn active_channels(&self, pattern: &[u8]) -> usize {
        let reply = self.command(&[b"PUBSUB", b"CHANNELS", pattern]);
        assert_eq!(reply[0], b'*', "{}", reply.escape_ascii());
        std::str::from_utf8(&reply[1..reply.len() - 2]).unwrap().parse().unwrap()
    }

    /// Channels Redis has subscribers for, `PUBSUB NUMSUB`-style count.
    pub fn numsub(&self, channel: &[u8]) -> i64 {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.write_all(&resp(&[b"PUBSUB", b"NUMSUB", channel])).unwrap();
        let mut reader = BufReader::new(stream);
        let mut lines = Vec::new();
        for _ in 0..4 {
            let mut line = Vec::new();
            reader.read_until(b'\n', &mut line).unwrap();
            lines.push(String::from_utf8_lossy(&line).trim_end().to_string());
        }
        lines[3].trim_start_matches(':').parse().unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `redis-server` with `args` on loopback, without persistence;
/// returns once it accepts connections.
pub fn redis_server(args: &[&str]) -> Child {
    let mut child = Command::new("redis-server")
        .args(args)
        .args(["--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--loglevel", "notice"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server (is it installed?)");
    let stdout = child.stdout.take().unwrap();
    let (ready, wait) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("Ready to accept connections") {
                let _ = ready.send(());
            }
        }
    });
    wait.recv_timeout(DEADLINE).expect("redis-server did not start");
    child
}

/// Encodes a command as a RESP array of bulk strings.
pub fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A throwaway certificate authority and a server certificate for
/// `localhost`, made with the `openssl` command.
pub struct TlsFiles {
    pub dir: std::path::PathBuf,
}

/// A fresh directory under the system's temporary one, named for `what`.
pub fn temp_dir(what: &str) -> std::path::PathBuf {
    let name = format!("crier-{what}-{}-{}", std::process::id(), free_port());
    let dir = std::env::temp_dir().join(name);
    std::fs::create_dir_all(&dir).expect("a temp dir");
    dir
}

/// Runs the `openssl` command in `dir`; panics unless it succeeds.
pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl (is it installed?)");
    assert!(status.success(), "openssl {args:?}");
}

impl TlsFiles {
    pub fn create() -> TlsFiles {
        let dir = temp_dir("tls");
        let openssl = |args: &[&str]| openssl(&dir, args);
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=crier test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ]);
        TlsFiles { dir }
    }

    /// Signs a new server certificate (same key, new serial) in place.
    pub fn renew_server_certificate(&self) {
        let signing = ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key"];
        let output = ["-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt"];
        openssl(&self.dir, &[&signing[..], &output[..]].concat());
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
