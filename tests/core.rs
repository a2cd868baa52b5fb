//! The session core's promises under stress, over real sockets: a client
//! that stops reading is cut off and never sees a gap; the push form switches
//! exactly at the `HELLO` reply; pipelined replies larger than every buffer on
//! the way still arrive whole and in order; the server-wide channel cap.

mod common;

use common::{Client, DEADLINE, Server};
use crier::protocol::push::{self, Frame};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Instant;

const SLOW_CONSUMER: &[u8] = b"ERR slow consumer";

/// Publishes `count` messages to `channel` from a fresh connection,
/// `payload(i)` each, pipelined in windows and confirmed one by one.
fn publish_all(server: &Server, channel: &str, count: usize, payload: impl Fn(usize) -> Vec<u8>) {
    const WINDOW: usize = 64;
    let mut publisher = server.connect();
    for start in (0..count).step_by(WINDOW) {
        let end = (start + WINDOW).min(count);
        let mut commands = Vec::new();
        for i in start..end {
            commands.extend_from_slice(format!("PUBLISH {channel} ").as_bytes());
            commands.extend_from_slice(&payload(i));
            commands.extend_from_slice(b"\r\n");
        }
        publisher.send(&commands);
        for _ in start..end {
            publisher.expect_line(b"CONFIRMED");
        }
    }
}

/// Checks the frames a cut-off subscriber got: `expected(0)`, `expected(1)`...
/// each whole and in order, then `ERR slow consumer` where the socket still
/// took it, then nothing. A frame cut short is allowed only as the very last
/// bytes of a stream that never got the error line (the grace period for a
/// client that does not read ran out). Returns how many messages arrived.
fn check_cut_stream(stream: &[u8], expected: impl Fn(usize) -> Vec<u8>) -> usize {
    let mut at = 0;
    let mut received = 0;
    loop {
        let frame = push::parse(&stream[at..]).expect("well-formed frames");
        let Some((frame, used)) = frame else {
            let rest = &stream[at..];
            let next = expected(received);
            // A torn v1 line is a prefix of the next message; a torn v2 push
            // is a whole header, then a prefix of the next payload.
            let torn = match rest.iter().position(|&b| b == b'\n') {
                None => next.starts_with(rest) || rest.starts_with(b"MESSAGE "),
                Some(lf) => rest.starts_with(b"MESSAGE ") && next.starts_with(&rest[lf + 1..]),
            };
            assert!(
                torn,
                "after message {received}, not the next one: {:.80}",
                rest.escape_ascii()
            );
            return received;
        };
        let body = match frame {
            Frame::Line(line) => &stream[at..][line],
            Frame::Push { payload, .. } => &stream[at..][payload],
        };
        at += used;
        if body == SLOW_CONSUMER {
            assert_eq!(at, stream.len(), "bytes after the error line");
            return received;
        }
        assert!(body == expected(received), "message {received} missing or out of order");
        received += 1;
    }
}

fn cut_off_without_a_gap(hello: Option<&str>, size: usize) {
    const TOTAL: usize = 20 << 20;
    let count = TOTAL / size;
    let server = Server::start_with_env(
        &["--max-pending", "1048576", "--max-line", "1048576"],
        &[("CRIER_LOG", "debug")],
    );
    let mut slow = Client::connect_with_receive_buffer(server.addr, 4096);
    if let Some(hello) = hello {
        slow.command(hello, "CONFIRMED");
    }
    slow.command("SUBSCRIBE slowch", "CONFIRMED");
    let payload = |i: usize| {
        let mut payload = format!("{i:08}").into_bytes();
        payload.resize(size, b'p');
        payload
    };
    // 20 MB while the subscriber reads nothing: far past its budget.
    publish_all(&server, "slowch", count, payload);
    // The server ends the connection while the client still reads nothing.
    server.wait_log("reason=slow_consumer");
    let received = check_cut_stream(&slow.read_to_eof(), payload);
    assert!(received < count, "all {count} messages fitted: nothing was tested");
}

#[test]
fn a_subscriber_that_never_reads_is_cut_off_without_a_gap() {
    // The first version stayed connected for good, with messages missing.
    cut_off_without_a_gap(None, 1000);
}

#[test]
fn a_frame_begun_is_finished_before_the_cut() {
    // Frames far larger than the socket buffers: producers write them in
    // pieces, and the cut comes while one is half sent.
    cut_off_without_a_gap(Some("HELLO 2"), 64 * 1024);
}

#[test]
fn every_push_after_a_hello_reply_is_in_the_new_form() {
    const WINDOW: u64 = 500;
    let server = Server::start(&[]);
    let mut subscriber = server.connect();
    subscriber.command("SUBSCRIBE flow", "CONFIRMED");
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
        let mut publisher = server.connect();
        thread::spawn(move || {
            let mut sent = 0u64;
            let deadline = Instant::now() + DEADLINE;
            while !stop.load(Ordering::Relaxed) {
                // Stays a window ahead of the subscriber, so it is never cut off.
                if sent - seen.load(Ordering::Relaxed) >= WINDOW {
                    assert!(Instant::now() < deadline, "the subscriber stopped reading");
                    thread::yield_now();
                    continue;
                }
                let commands: String =
                    (sent..sent + 50).map(|i| format!("PUBLISH flow m{i}\r\n")).collect();
                publisher.send(commands.as_bytes());
                for _ in 0..50 {
                    publisher.expect_line(b"CONFIRMED");
                }
                sent += 50;
            }
        })
    };
    let mut next = 0u64;
    let take = |body: &[u8], next: &mut u64| {
        assert_eq!(body, format!("m{next}").as_bytes(), "a message missing or out of order");
        *next += 1;
        seen.store(*next, Ordering::Relaxed);
    };
    // Reads one push in `version`'s form, or the reply line; true for the reply.
    let read = |subscriber: &mut Client, version: u32, next: &mut u64| -> bool {
        let line = subscriber.line();
        if line == b"CONFIRMED" {
            return true;
        }
        if version == 2 {
            let header = String::from_utf8(line).expect("a header");
            let len: usize = header
                .strip_prefix("MESSAGE flow ")
                .and_then(|len| len.parse().ok())
                .unwrap_or_else(|| panic!("a v1 push after HELLO 2: {header}"));
            let body = subscriber.read_exact(len + 2);
            take(&body[..len], next);
        } else {
            assert!(!line.starts_with(b"MESSAGE"), "a v2 push after HELLO 1");
            take(&line, next);
        }
        false
    };
    let mut version = 1;
    for round in 0..300 {
        let new = if round % 2 == 0 { 2 } else { 1 };
        subscriber.send(format!("HELLO {new}\r\n").as_bytes());
        // Pushes in the old form until the reply, in the new one after it:
        // at least one of those, so that every switch happens mid-flow.
        while !read(&mut subscriber, version, &mut next) {}
        version = new;
        assert!(!read(&mut subscriber, version, &mut next), "no HELLO is pending");
    }
    stop.store(true, Ordering::Relaxed);
    publisher.join().expect("publisher");
}

#[test]
fn pipelined_replies_larger_than_the_socket_buffers_arrive_in_order() {
    const PINGS: usize = 20_000;
    let server = Server::start(&["--max-pending", "67108864"]);
    let mut client = server.connect();
    let mut writer = client.stream().try_clone().expect("clone");
    let text = "t".repeat(1000);
    // 20 MB of commands, sent without reading a reply: the server must keep
    // reading while its writes to us are blocked, or this never finishes.
    let sender = thread::spawn(move || {
        use std::io::Write;
        for i in 0..PINGS {
            writer.write_all(format!("PING {i} {text}\r\n").as_bytes()).expect("send");
        }
    });
    sender.join().expect("all commands sent without reading");
    let text = "t".repeat(1000);
    for i in 0..PINGS {
        client.expect_line(format!("PONG {i} {text}").as_bytes());
    }
}

#[test]
fn the_server_holds_at_most_max_channels_channels_and_patterns() {
    let server = Server::start(&["--max-channels", "2"]);
    let mut a = server.connect();
    a.command("SUBSCRIBE one", "CONFIRMED");
    a.command("PSUBSCRIBE two.*", "CONFIRMED");
    a.command("SUBSCRIBE three", "ERR too many channels");
    let mut b = server.connect();
    b.command("SUBSCRIBE one", "CONFIRMED");
    a.command("PUNSUBSCRIBE two.*", "CONFIRMED");
    b.command("SUBSCRIBE three", "CONFIRMED");
}

#[test]
fn the_server_runs_in_process_on_a_listener_bound_by_the_caller() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let addr = listener.local_addr().expect("address");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = crier::config::Config::default();
    let served = runtime.spawn(crier::server::run(config, listener, None, shutdown.clone()));
    let mut subscriber = Client::connect(addr);
    subscriber.command("SUBSCRIBE", "CONFIRMED");
    Client::connect(addr).command("PUBLISH updates Goal! 1-0", "CONFIRMED");
    subscriber.expect_line(b"Goal! 1-0");
    shutdown.cancel();
    runtime.block_on(served).expect("server task").expect("clean stop");
    subscriber.expect_eof();
}
