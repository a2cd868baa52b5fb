//! The web side (§7 of the protocol) over real sockets: WebSocket, SSE,
//! `POST /publish`, health, readiness, metrics, errors and shutdown.

mod common;

use common::web::{self, Sse, Ws};
use common::{Redis, Server};
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

#[test]
fn websocket_speaks_the_commands_of_the_line_protocol() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(server.http());
    ws.command("PING", "PONG");
    ws.command("PING hello there\r\n", "PONG hello there");
    ws.command("SUBSCRIBE news", "CONFIRMED");
    ws.command("SUBSCRIBE news", "ALREADY SUBSCRIBED");
    ws.command("PSUBSCRIBE n*", "CONFIRMED");
    ws.command("NOPE", "UNKNOWN COMMAND");
    ws.command("", "UNKNOWN COMMAND");
    ws.command("SUBSCRIBE bad\u{1}name", "ERR invalid channel");
    // Version 1: the payload alone, once per subscription (name and
    // pattern). A publisher's own deliveries come before its reply.
    ws.send_message(Message::binary(&b"PUBLISH news caf\xc3\xa9"[..]));
    ws.expect_text("café");
    ws.expect_text("café");
    ws.expect_text("CONFIRMED");
    ws.command("PUNSUBSCRIBE n*", "CONFIRMED");
    ws.send("PUBLISH news \u{1F3C6} goal");
    ws.expect_text("\u{1F3C6} goal");
    ws.expect_text("CONFIRMED");
    ws.command("UNSUBSCRIBE news", "CONFIRMED");
    ws.command("UNSUBSCRIBE news", "ALREADY UNSUBSCRIBED");
    ws.command("HELLO 9", "ERR unsupported protocol version");
    ws.send("QUIT");
    ws.expect_text("BYE");
    assert_eq!(ws.expect_close(), 1000);
}

#[test]
fn websocket_version_2_pushes_are_json_and_binary_payloads_are_base64() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(server.http());
    let mut tcp = server.connect();
    ws.command("HELLO 2", "CONFIRMED");
    ws.command("SUBSCRIBE scores", "CONFIRMED");
    ws.command("PSUBSCRIBE sc*", "CONFIRMED");
    tcp.send(b"PUBLISH scores 2-1 \"late\"\r\n");
    tcp.expect_line(b"CONFIRMED");
    let named = ws.json();
    assert_eq!(named, serde_json::json!({"channel": "scores", "data": "2-1 \"late\""}));
    let through_pattern = ws.json();
    let expected =
        serde_json::json!({"channel": "scores", "pattern": "sc*", "data": "2-1 \"late\""});
    assert_eq!(through_pattern, expected);
    // A binary payload: not UTF-8, so it travels as base64.
    let status = web::post(server.http(), "/publish?channel=scores", b"\xff\x00\r\n").status;
    assert_eq!(status, 200);
    assert_eq!(ws.json(), serde_json::json!({"channel": "scores", "data_base64": "/wANCg=="}));
    // Version 1 over WebSocket: a payload that is not UTF-8 is a binary message.
    let mut v1 = Ws::connect(server.http());
    v1.command("SUBSCRIBE raw", "CONFIRMED");
    assert_eq!(web::post(server.http(), "/publish?channel=raw", b"\x00\xff").status, 200);
    assert_eq!(v1.message(), Message::binary(&b"\x00\xff"[..]));
}

#[test]
fn websocket_and_tcp_subscribers_get_the_same_messages_in_order() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(server.http());
    ws.command("HELLO 2", "CONFIRMED");
    ws.command("SUBSCRIBE feed", "CONFIRMED");
    let mut tcp = server.connect_v2();
    tcp.command("SUBSCRIBE feed", "CONFIRMED");
    let mut sse = Sse::open(server.http(), "channel=feed");
    assert_eq!(sse.status, 200);
    let mut publisher = server.connect();
    for i in 0..1000 {
        publisher.send(format!("PUBLISH feed message {i}\r\n").as_bytes());
    }
    for _ in 0..1000 {
        publisher.expect_line(b"CONFIRMED");
    }
    for i in 0..1000 {
        let expected = format!("message {i}");
        assert_eq!(tcp.push_v2().2, expected.as_bytes());
        assert_eq!(ws.json()["data"], expected.as_str());
        assert_eq!(sse.json()["data"], expected.as_str());
    }
}

#[test]
fn websocket_pings_are_answered_and_pongs_ignored() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(server.http());
    ws.send_message(Message::Pong(Default::default()));
    ws.send_message(Message::Ping(tungstenite::Bytes::from_static(b"are you there")));
    // The server's pong comes back before the reply to the next command.
    match ws.any_message() {
        Message::Pong(payload) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    ws.command("PING", "PONG");
}

#[test]
fn a_websocket_message_over_the_line_limit_is_refused_with_close_1009() {
    let server = Server::start(&["--max-line", "100"]);
    let mut ws = Ws::connect(server.http());
    ws.command(&format!("PUBLISH ch {}", "x".repeat(80)), "CONFIRMED");
    ws.send(&format!("PUBLISH ch {}", "x".repeat(200)));
    ws.expect_text("ERR line too long");
    assert_eq!(ws.expect_close(), 1009);
}

#[test]
fn an_unmasked_client_frame_is_a_protocol_error() {
    use std::io::Write;
    let server = Server::start(&[]);
    let mut ws = Ws::connect(server.http());
    ws.stream().write_all(b"\x81\x04PING").expect("send a raw frame");
    assert_eq!(ws.expect_close(), 1002);
}

#[test]
fn the_client_closing_gets_a_close_back() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(server.http());
    ws.send_message(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    })));
    assert_eq!(ws.expect_close(), 1000);
}

#[test]
fn a_websocket_that_does_not_read_is_cut_off_and_others_get_everything() {
    use std::io::Read;
    let server = Server::start(&["--max-pending", "65536"]);
    let mut stuck = Ws::connect(server.http());
    stuck.command("SUBSCRIBE flood", "CONFIRMED");
    let mut reader = Ws::connect(server.http());
    reader.command("SUBSCRIBE flood", "CONFIRMED");
    let mut publisher = server.connect();
    let payload = "y".repeat(1000);
    // Rounds of 50 KB: the reading client never falls a budget behind, even
    // on a loaded machine; the stuck one accumulates 20 MB.
    for _ in 0..400 {
        publisher.send(format!("PUBLISH flood {payload}\r\n").repeat(50).as_bytes());
        for _ in 0..50 {
            publisher.expect_line(b"CONFIRMED");
        }
        for _ in 0..50 {
            assert_eq!(reader.text().len(), 1000, "the reading subscriber gets every message");
        }
    }
    // The stuck client: the messages that fit, then the error and close 1008.
    let mut all = Vec::new();
    let _ = stuck.stream().read_to_end(&mut all);
    let tail = &all[all.len().saturating_sub(64)..];
    let error = b"\x81\x11ERR slow consumer\x88\x02\x03\xf0";
    assert!(tail.ends_with(error), "ends with {}", tail.escape_ascii());
}

#[test]
fn websocket_handshake_errors_are_plain() {
    let server = Server::start(&[]);
    let not_upgrade = web::get(server.http(), "/ws");
    assert_eq!(not_upgrade.status, 400);
    assert_eq!(not_upgrade.text(), "ERR websocket upgrade expected\n");
    let request = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\
                   Connection: close\r\n\r\n";
    let answer = web::raw(server.http(), request.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 426"), "{answer}");
    assert!(answer.to_lowercase().contains("sec-websocket-version: 13"), "{answer}");
}

#[test]
fn sse_confirms_before_its_headers_and_sends_json_events() {
    let server = Server::start(&[]);
    let mut sse = Sse::open(server.http(), "channel=news&pattern=sp*");
    assert_eq!(sse.status, 200);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.header("cache-control"), Some("no-cache"));
    assert_eq!(sse.header("x-accel-buffering"), Some("no"));
    assert_eq!(web::post(server.http(), "/publish?channel=news", b"line 1\nline 2").status, 200);
    assert_eq!(sse.json(), serde_json::json!({"channel": "news", "data": "line 1\nline 2"}));
    assert_eq!(web::post(server.http(), "/publish?channel=sport", b"x").status, 200);
    assert_eq!(sse.json(), serde_json::json!({"channel": "sport", "pattern": "sp*", "data": "x"}));
}

#[test]
fn sse_with_no_parameter_follows_the_default_channel() {
    let server = Server::start(&["--default-channel", "lobby"]);
    let mut sse = Sse::open(server.http(), "");
    assert_eq!(web::post(server.http(), "/publish?channel=lobby", b"hi").status, 200);
    assert_eq!(sse.json()["channel"], "lobby");
}

#[test]
fn an_sse_client_that_publishes_right_after_open_gets_its_message() {
    let server = Server::start(&[]);
    for i in 0..200 {
        let channel = format!("fresh.{i}");
        let mut sse = Sse::open(server.http(), &format!("channel={channel}"));
        assert_eq!(sse.status, 200);
        let published = web::post(server.http(), &format!("/publish?channel={channel}"), b"now");
        assert_eq!(published.status, 200);
        assert_eq!(sse.json()["data"], "now", "channel {channel}");
    }
}

#[test]
fn an_sse_client_that_stops_reading_is_cut_off_while_others_get_everything() {
    use std::io::{Read, Write};
    let server = Server::start(&["--max-pending", "65536"]);
    let http = server.http();
    // A client with a tiny receive window that reads the response head, then stops.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&http.into()).expect("connect");
    let mut stuck: std::net::TcpStream = socket.into();
    stuck.set_read_timeout(Some(common::DEADLINE)).expect("timeout");
    stuck.write_all(b"GET /sse?channel=slow HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let mut head = [0u8; 15];
    stuck.read_exact(&mut head).expect("the response head");
    assert_eq!(&head, b"HTTP/1.1 200 OK");
    let mut reader = Sse::open(http, "channel=slow");
    let mut publisher = server.connect();
    let payload = "z".repeat(1000);
    // Rounds of 50 KB: the reading client never falls far behind, the stuck
    // one accumulates 20 MB, far past its budget and the kernel's buffers.
    for _ in 0..400 {
        publisher.send(format!("PUBLISH slow {payload}\r\n").repeat(50).as_bytes());
        for _ in 0..50 {
            publisher.expect_line(b"CONFIRMED");
        }
        for _ in 0..50 {
            assert_eq!(reader.json()["data"], payload.as_str());
        }
    }
    // Cut off while it still does not read: the server lets go of it.
    web::wait_metric(
        http,
        "crier_connections_closed_total{transport=\"sse\",reason=\"slow_consumer\"} 1",
    );
    web::wait_metric(http, "crier_connections{transport=\"sse\"} 1");
}

#[test]
fn sse_errors_are_plain_400s() {
    let server = Server::start(&["--max-subscriptions", "2"]);
    for (query, body) in [
        ("channel=bad%20name", "ERR invalid channel\n"),
        ("channel=", "ERR invalid channel\n"),
        ("topic=a", "ERR invalid parameter\n"),
        ("channel=a&channel=b&channel=c", "ERR too many subscriptions\n"),
    ] {
        let sse = Sse::open(server.http(), query);
        assert_eq!((sse.status, sse.error_body.as_str()), (400, body), "{query}");
    }
}

#[test]
fn post_publish_delivers_the_body_byte_for_byte_to_every_channel() {
    let server = Server::start(&[]);
    let mut a = server.connect_v2();
    a.command("SUBSCRIBE a", "CONFIRMED");
    let mut b = server.connect_v2();
    b.command("SUBSCRIBE b", "CONFIRMED");
    let body = b"\x00binary\r\nwith CRLF and \xff".to_vec();
    let answer = web::post(server.http(), "/publish?channel=a&channel=b", &body);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type, "application/json");
    assert_eq!(answer.text(), "{\"published\":2}\n");
    assert_eq!(a.push_v2(), (None, b"a".to_vec(), body.clone()));
    assert_eq!(b.push_v2(), (None, b"b".to_vec(), body));
    // An empty body is an empty message.
    assert_eq!(web::post(server.http(), "/publish?channel=a", b"").status, 200);
    assert_eq!(a.push_v2().2, b"");
}

#[test]
fn post_publish_errors() {
    let server = Server::start(&["--max-payload", "10"]);
    let cases: [(&str, &[u8], u16, &str); 5] = [
        ("/publish", b"x", 400, "ERR wrong number of arguments for 'publish'\n"),
        ("/publish?channel=a%0Ab", b"x", 400, "ERR invalid channel\n"),
        ("/publish?channel=a&x=1", b"x", 400, "ERR invalid parameter\n"),
        ("/publish?channel=a", b"01234567890", 413, "ERR payload too large\n"),
        ("/nowhere", b"x", 404, "ERR not found\n"),
    ];
    for (path, body, status, text) in cases {
        let answer = web::post(server.http(), path, body);
        assert_eq!((answer.status, answer.text().as_str()), (status, text), "{path}");
    }
    assert_eq!(web::post(server.http(), "/publish?channel=a", b"0123456789").status, 200);
    let wrong_method = web::get(server.http(), "/publish?channel=a");
    assert_eq!(
        (wrong_method.status, wrong_method.text().as_str()),
        (405, "ERR method not allowed\n")
    );
}

#[test]
fn post_publish_obeys_the_same_permission_as_publish() {
    let server = Server::start(&["--deny-publish", "true"]);
    let answer = web::post(server.http(), "/publish?channel=a", b"x");
    assert_eq!((answer.status, answer.text().as_str()), (403, "ERR forbidden\n"));
    let mut ws = Ws::connect(server.http());
    ws.command("PUBLISH a x", "ERR forbidden");
}

#[test]
fn health_readiness_metrics_and_the_page() {
    let server = Server::start(&[]);
    let health = web::get(server.http(), "/healthz");
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    assert_eq!(web::get(server.http(), "/readyz").status, 200);
    let mut ws = Ws::connect(server.http());
    ws.command("SUBSCRIBE m", "CONFIRMED");
    let mut tcp = server.connect();
    tcp.command("SUBSCRIBE m", "CONFIRMED");
    tcp.command("PUBLISH m hello", "hello");
    tcp.expect_line(b"CONFIRMED");
    ws.expect_text("hello");
    let metrics = web::get(server.http(), "/metrics");
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    for expected in [
        "crier_connections{transport=\"tcp\"} 1",
        "crier_connections{transport=\"websocket\"} 1",
        "crier_subscriptions 2",
        "crier_channels 1",
        "crier_messages_published_total 1",
        "crier_deliveries_total 2",
        // The embedded broker: no Redis node, so no per-node series.
        "crier_redis_nodes 0",
        "crier_redis_nodes_connected 0",
    ] {
        assert!(text.contains(expected), "{expected} missing from\n{text}");
    }
    assert!(!text.contains("crier_redis_connected{"), "{text}");
    ws.send("QUIT");
    ws.expect_text("BYE");
    ws.expect_close();
    let after = web::get(server.http(), "/metrics").text();
    let closed = "crier_connections_closed_total{transport=\"websocket\",reason=\"client_quit\"} 1";
    assert!(after.contains(closed), "{after}");
    let page = web::get(server.http(), "/");
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"));
    assert!(page.text().contains("app.js"));
    assert_eq!(web::get(server.http(), "/app.js").status, 200);
    assert_eq!(web::get(server.http(), "/style.css").status, 200);
}

#[test]
fn no_http_means_no_http_listener() {
    let server = Server::start(&["--no-http"]);
    assert_eq!(server.http, None);
    let mut tcp = server.connect();
    tcp.command("PING", "PONG");
}

#[test]
fn the_http_listener_counts_against_max_connections() {
    let server = Server::start(&["--max-connections", "1"]);
    let mut ws = Ws::connect(server.http());
    ws.command("PING", "PONG");
    let refused = web::get(server.http(), "/healthz");
    assert_eq!((refused.status, refused.text().as_str()), (503, "ERR server full\n"));
    let mut tcp = server.connect();
    tcp.expect_line(b"ERR server full");
}

#[test]
fn shutdown_turns_readiness_off_then_closes_websockets_with_1001_and_ends_sse() {
    let server = Server::start(&["--shutdown-delay", "30"]);
    let mut ws = Ws::connect(server.http());
    ws.command("SUBSCRIBE s", "CONFIRMED");
    let mut sse = Sse::open(server.http(), "channel=s");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(server.pid() as i32, libc::SIGTERM) };
    server.wait_log("draining");
    let ready = web::get(server.http(), "/readyz");
    assert_eq!((ready.status, ready.text().as_str()), (503, "shutting down\n"));
    // Still serving while draining.
    assert_eq!(web::post(server.http(), "/publish?channel=s", b"last").status, 200);
    ws.expect_text("last");
    assert_eq!(sse.json()["data"], "last");
    // Connections close only after the delay: the server is killed here.
    drop(server);
}

#[test]
fn shutdown_without_delay_closes_websockets_with_1001_and_ends_sse() {
    let mut server = Server::start(&[]);
    let mut ws = Ws::connect(server.http());
    ws.command("SUBSCRIBE s", "CONFIRMED");
    let mut sse = Sse::open(server.http(), "channel=s");
    let status = std::thread::scope(|scope| {
        let stopping = scope.spawn(|| server.stop_with(libc::SIGTERM));
        assert_eq!(ws.expect_close(), 1001);
        assert_eq!(sse.event(), None, "the stream ends");
        stopping.join().expect("the server stops")
    });
    assert!(status.success(), "{status}");
}

#[test]
fn redis_backend_serves_websocket_sse_and_publish_and_readiness_follows_redis() {
    let mut redis = Redis::start();
    let server = Server::start(&["--redis", &redis.url()]);
    server.wait_log("redis: connected");
    assert_eq!(web::get(server.http(), "/readyz").status, 200);
    let mut ws = Ws::connect(server.http());
    ws.command("SUBSCRIBE r", "CONFIRMED");
    let mut sse = Sse::open(server.http(), "channel=r");
    assert_eq!(sse.status, 200);
    // From any Redis client, and through crier's POST /publish (via Redis).
    redis.publish(b"r", b"from redis");
    assert_eq!(web::post(server.http(), "/publish?channel=r", b"from http").status, 200);
    ws.expect_text("from redis");
    ws.expect_text("from http");
    assert_eq!(sse.json()["data"], "from redis");
    assert_eq!(sse.json()["data"], "from http");
    redis.kill();
    server.wait_log("redis: connection lost");
    let ready = web::get(server.http(), "/readyz");
    assert_eq!((ready.status, ready.text().as_str()), (503, "backend unavailable\n"));
    let refused = web::post(server.http(), "/publish?channel=r", b"x");
    assert_eq!((refused.status, refused.text().as_str()), (503, "ERR backend unavailable\n"));
    let sse = Sse::open(server.http(), "channel=other");
    assert_eq!((sse.status, sse.error_body.as_str()), (503, "ERR backend unavailable\n"));
}
