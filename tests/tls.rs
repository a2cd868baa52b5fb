//! TLS on both listeners, against a throwaway CA made with openssl: the seed
//! session over TLS, WSS and HTTPS, plain text on a TLS port, and a
//! certificate renewed with SIGHUP.

mod common;

use common::web::Ws;
use common::{DEADLINE, Server, TlsFiles};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection trusting the test CA.
fn tls(addr: SocketAddr, files: &TlsFiles) -> TlsStream {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(files.dir.join("ca.crt")).expect("the CA") {
        roots.add(cert.expect("a certificate")).expect("a root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("a name");
    let connection = ClientConnection::new(Arc::new(config), name).expect("a TLS client");
    let socket = TcpStream::connect(addr).expect("connect to crier");
    socket.set_read_timeout(Some(DEADLINE)).expect("timeout");
    StreamOwned::new(connection, socket)
}

/// Line protocol over TLS.
struct Lines(BufReader<TlsStream>);

impl Lines {
    fn command(&mut self, command: &str, reply: &str) {
        self.0.get_mut().write_all(format!("{command}\r\n").as_bytes()).expect("send");
        self.expect(reply);
    }

    fn expect(&mut self, expected: &str) {
        let mut line = String::new();
        self.0.read_line(&mut line).expect("read over TLS");
        assert_eq!(line, format!("{expected}\r\n"));
    }

    /// The DER of the certificate the server presented.
    fn certificate(&self) -> Vec<u8> {
        let certs = self.0.get_ref().conn.peer_certificates().expect("a certificate");
        certs[0].as_ref().to_vec()
    }
}

fn tls_server(files: &TlsFiles) -> Server {
    let cert = files.dir.join("server.crt").display().to_string();
    let key = files.dir.join("server.key").display().to_string();
    Server::start_with_env(&[], &[("CRIER_TLS_CERT", &cert), ("CRIER_TLS_KEY", &key)])
}

#[test]
fn the_seed_session_works_over_tls() {
    let files = TlsFiles::create();
    let server = tls_server(&files);
    let mut subscriber = Lines(BufReader::new(tls(server.addr, &files)));
    subscriber.command("SUBSCRIBE", "CONFIRMED");
    subscriber.command("SUBSCRIBE", "ALREADY SUBSCRIBED");
    let mut publisher = Lines(BufReader::new(tls(server.addr, &files)));
    publisher.command("PUBLISH updates goal", "CONFIRMED");
    subscriber.expect("goal");
    subscriber.command("UNSUBSCRIBE", "CONFIRMED");
    subscriber.command("UNSUBSCRIBE", "ALREADY UNSUBSCRIBED");
    subscriber.command("NOPE", "UNKNOWN COMMAND");
}

#[test]
fn wss_and_https_work_and_plain_text_is_refused_without_harm() {
    let files = TlsFiles::create();
    let server = tls_server(&files);
    let http = server.http();
    let mut ws = Ws::over(tls(http, &files), &format!("wss://localhost:{}/ws", http.port()))
        .expect("a WebSocket over TLS");
    ws.command("SUBSCRIBE secure", "CONFIRMED");
    // HTTPS: a publish, seen by the WSS subscriber.
    let mut https = tls(http, &files);
    let request = "POST /publish?channel=secure HTTP/1.1\r\nHost: localhost\r\n\
                   Content-Length: 5\r\nConnection: close\r\n\r\nhello";
    https.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    let _ = https.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    ws.expect_text("hello");
    // Plain text to either TLS port: closed, and nobody else notices.
    for addr in [server.addr, http] {
        let mut plain = TcpStream::connect(addr).expect("connect");
        plain.set_read_timeout(Some(DEADLINE)).expect("timeout");
        plain.write_all(b"SUBSCRIBE\r\nGET / HTTP/1.1\r\n\r\n").expect("send");
        let mut rest = Vec::new();
        let _ = plain.read_to_end(&mut rest);
        assert!(!String::from_utf8_lossy(&rest).contains("CONFIRMED"));
    }
    ws.command("PING", "PONG");
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections_only() {
    let files = TlsFiles::create();
    let server = tls_server(&files);
    let mut before = Lines(BufReader::new(tls(server.addr, &files)));
    before.command("PING", "PONG");
    let old = before.certificate();
    files.renew_server_certificate();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    server.wait_log("tls: certificate reloaded");
    let mut after = Lines(BufReader::new(tls(server.addr, &files)));
    after.command("PING", "PONG");
    assert_ne!(after.certificate(), old, "new connections get the new certificate");
    before.command("PING", "PONG");
    assert_eq!(before.certificate(), old, "the open connection keeps its session");
}

#[test]
fn the_cli_clients_speak_tls() {
    let files = TlsFiles::create();
    let server = tls_server(&files);
    let ca = files.dir.join("ca.crt").display().to_string();
    let addr = server.addr.to_string();
    let crier = env!("CARGO_BIN_EXE_crier");
    let mut sub = std::process::Command::new(crier)
        .args(["sub", "news", "--raw", "--tls", "--ca", &ca, "--addr", &addr])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run crier sub");
    // `crier sub` is subscribed once the server counts it; then publish.
    let http = server.http();
    let mut lines = BufReader::new(tls(http, &files));
    let metrics = |lines: &mut BufReader<TlsStream>| {
        let request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";
        lines.get_mut().write_all(request.as_bytes()).expect("send");
        let mut text = String::new();
        loop {
            let mut line = String::new();
            lines.read_line(&mut line).expect("read");
            if line.starts_with("# EOF") {
                return text;
            }
            text.push_str(&line);
        }
    };
    let started = std::time::Instant::now();
    while !metrics(&mut lines).contains("crier_subscriptions 1") {
        assert!(started.elapsed() < DEADLINE, "crier sub never subscribed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let published = std::process::Command::new(crier)
        .args(["pub", "news", "over tls", "--tls", "--ca", &ca, "--addr", &addr])
        .output()
        .expect("run crier pub");
    assert!(published.status.success(), "{}", String::from_utf8_lossy(&published.stderr));
    let mut out = BufReader::new(sub.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("a message");
    assert_eq!(line, "over tls\n");
    let _ = sub.kill();
    let _ = sub.wait();
}
