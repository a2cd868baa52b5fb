//! History and recovery (§9) over real sockets, on the embedded backend.

mod common;

use common::{Client, Server};

/// `<epoch>:<offset>` split in two.
fn split(id: &str) -> (String, u64) {
    let (epoch, offset) = id.split_once(':').expect("an id");
    (epoch.to_string(), offset.parse().expect("an offset"))
}

fn v3(server: &Server) -> Client {
    let mut client = server.connect();
    client.command("HELLO 3", "CONFIRMED");
    client
}

/// `CONFIRMED <id>`: the id.
fn confirmed_at(client: &mut Client, command: &str) -> String {
    client.send(format!("{command}\r\n").as_bytes());
    let line = String::from_utf8(client.line()).expect("ASCII");
    line.strip_prefix("CONFIRMED ")
        .unwrap_or_else(|| panic!("not CONFIRMED <id>: {line}"))
        .to_string()
}

#[test]
fn positions_count_up_and_version_3_shows_them() {
    let server = Server::start(&["--history-size", "100"]);
    let mut subscriber = v3(&server);
    let start = confirmed_at(&mut subscriber, "SUBSCRIBE news");
    let (epoch, offset) = split(&start);
    assert_eq!(offset, 0, "no message yet");
    assert!(epoch.bytes().all(|b| b.is_ascii_alphanumeric()) && !epoch.is_empty());
    // Versions 1 and 2 keep the plain reply.
    let mut v2 = server.connect_v2();
    v2.command("SUBSCRIBE news", "CONFIRMED");
    let mut publisher = server.connect();
    for i in 1..=3 {
        publisher.command(&format!("PUBLISH news goal {i}"), "CONFIRMED");
    }
    for i in 1..=3 {
        let (channel, id, payload) = subscriber.push_v3();
        assert_eq!(
            (channel, split(&id), payload),
            (b"news".to_vec(), (epoch.clone(), i), format!("goal {i}").into_bytes())
        );
        assert_eq!(v2.push_v2().2, format!("goal {i}").into_bytes());
    }
    // A channel without history: `-`.
    let server = Server::start(&["--history-size", "100", "--history-channels", "kept.*"]);
    let mut client = v3(&server);
    assert_eq!(confirmed_at(&mut client, "SUBSCRIBE other"), "-");
    let mut publisher = server.connect();
    publisher.command("PUBLISH other x", "CONFIRMED");
    assert_eq!(client.push_v3().1, "-");
}

#[test]
fn resume_replays_the_gap_then_goes_live() {
    let server = Server::start(&["--history-size", "100"]);
    let mut first = v3(&server);
    let start = confirmed_at(&mut first, "SUBSCRIBE c");
    let mut publisher = server.connect();
    publisher.command("PUBLISH c one", "CONFIRMED");
    let (_, seen, _) = first.push_v3();
    drop(first);
    publisher.command("PUBLISH c two", "CONFIRMED");
    publisher.command("PUBLISH c three", "CONFIRMED");
    let mut again = v3(&server);
    again.command(&format!("RESUME c {seen}"), "RECOVERED 2");
    assert_eq!(again.push_v3().2, b"two");
    assert_eq!(again.push_v3().2, b"three");
    publisher.command("PUBLISH c four", "CONFIRMED");
    let (_, id, payload) = again.push_v3();
    assert_eq!((split(&id).1, payload), (4, b"four".to_vec()));
    // From the very start of the epoch: everything.
    let mut fresh = v3(&server);
    fresh.command(&format!("RESUME c {start}"), "RECOVERED 4");
    // In version 1 the replayed messages are plain lines.
    let mut v1 = server.connect();
    v1.command(&format!("RESUME c {seen}"), "RECOVERED 3");
    v1.expect_line(b"two");
}

#[test]
fn what_cannot_be_recovered_is_said_plainly() {
    let server = Server::start(&["--history-size", "2", "--history-channels", "h.*"]);
    let mut publisher = server.connect();
    let mut watcher = v3(&server);
    let start = confirmed_at(&mut watcher, "SUBSCRIBE h.1");
    let (epoch, _) = split(&start);
    for i in 1..=3 {
        publisher.command(&format!("PUBLISH h.1 m{i}"), "CONFIRMED");
    }
    let mut client = v3(&server);
    // Message 1 was evicted (two kept): not recovered, and the current position.
    client.command(&format!("RESUME h.1 {start}"), &format!("NOT RECOVERED {epoch}:3"));
    // Subscribed anyway: the next message arrives live.
    publisher.command("PUBLISH h.1 m4", "CONFIRMED");
    assert_eq!(client.push_v3().2, b"m4");
    // Another epoch, a position in the future, no history, a malformed id.
    client.command("RESUME h.1 zzzz:1", &format!("NOT RECOVERED {epoch}:4"));
    client.command(&format!("RESUME h.1 {epoch}:99"), &format!("NOT RECOVERED {epoch}:4"));
    client.command("RESUME plain -", "NOT RECOVERED -");
    client.command("RESUME h.1 nonsense", "ERR invalid id");
    client.command("RESUME h.1", "ERR wrong number of arguments for 'resume'");
}

#[test]
fn resume_under_concurrent_publishing_loses_and_repeats_nothing() {
    let server = Server::start(&["--history-size", "100000"]);
    let total = 20_000;
    // A reader that drops its connection every few hundred messages and
    // resumes from the last id it saw, while the publisher keeps going.
    let mut got = Vec::with_capacity(total);
    let mut client = v3(&server);
    let mut last = confirmed_at(&mut client, "SUBSCRIBE race");
    let addr = server.addr;
    let publishing = std::thread::spawn(move || {
        let mut publisher = Client::connect(addr);
        for i in 1..=total {
            publisher.send(format!("PUBLISH race {i}\r\n").as_bytes());
        }
        for _ in 1..=total {
            publisher.expect_line(b"CONFIRMED");
        }
    });
    let mut resumes = 0;
    while got.len() < total {
        let (_, id, payload) = client.push_v3();
        assert_eq!(split(&id).1, split(&last).1 + 1, "after {last} came {id}");
        got.push(String::from_utf8(payload).expect("ASCII").parse::<usize>().expect("a number"));
        last = id;
        if got.len() % 700 == 0 && got.len() < total {
            client = v3(&server);
            client.send(format!("RESUME race {last}\r\n").as_bytes());
            let reply = String::from_utf8(client.line()).expect("ASCII");
            assert!(reply.starts_with("RECOVERED "), "{reply}");
            resumes += 1;
        }
    }
    publishing.join().expect("the publisher");
    assert!(resumes >= 20);
    let expected: Vec<usize> = (1..=total).collect();
    assert!(got == expected, "gap, duplicate or reordering after {resumes} resumes");
}

#[test]
fn the_byte_cap_evicts_and_expired_messages_are_gone() {
    let server = Server::start(&["--history-size", "100", "--history-max-bytes", "10"]);
    let mut publisher = server.connect();
    let mut client = v3(&server);
    let start = confirmed_at(&mut client, "SUBSCRIBE cap");
    let (epoch, _) = split(&start);
    publisher.command("PUBLISH cap 12345", "CONFIRMED");
    publisher.command("PUBLISH cap 67890", "CONFIRMED");
    publisher.command("PUBLISH cap abc", "CONFIRMED");
    let mut late = v3(&server);
    late.command(&format!("RESUME cap {epoch}:0"), &format!("NOT RECOVERED {epoch}:3"));
    late.command(&format!("RESUME cap {epoch}:1"), "RECOVERED 2");

    let server = Server::start(&["--history-size", "100", "--history-ttl", "1"]);
    let mut publisher = server.connect();
    let mut client = v3(&server);
    let start = confirmed_at(&mut client, "SUBSCRIBE ttl");
    let (epoch, _) = split(&start);
    publisher.command("PUBLISH ttl soon gone", "CONFIRMED");
    // The time to live is the event here: wait it out.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut late = v3(&server);
    late.command(&format!("RESUME ttl {start}"), &format!("NOT RECOVERED {epoch}:1"));
}

#[test]
fn a_restart_is_a_new_epoch() {
    let mut server = Server::start(&["--history-size", "10"]);
    let mut client = v3(&server);
    let before = confirmed_at(&mut client, "SUBSCRIBE e");
    server.stop_with(libc::SIGTERM);
    let server = Server::start(&["--history-size", "10"]);
    let mut client = v3(&server);
    let reply = format!("RESUME e {before}");
    client.send(format!("{reply}\r\n").as_bytes());
    let line = String::from_utf8(client.line()).expect("ASCII");
    assert!(line.starts_with("NOT RECOVERED "), "{line}");
    assert_ne!(split(line.trim_start_matches("NOT RECOVERED ")).0, split(&before).0);
}

#[test]
fn get_history_and_the_web_transports_carry_ids() {
    use common::web::{self, Sse, Ws};
    let server = Server::start(&["--history-size", "3", "--history-channels", "h.*"]);
    let http = server.http();
    let mut ws = Ws::connect(http);
    ws.command("HELLO 2", "CONFIRMED");
    ws.command("SUBSCRIBE h.1", "CONFIRMED");
    let mut sse = Sse::open(http, "channel=h.1");
    for payload in [&b"one"[..], b"two", b"\xff", b"four"] {
        assert_eq!(web::post(http, "/publish?channel=h.1", payload).status, 200);
    }
    let first = ws.json();
    let id = first["id"].as_str().expect("an id").to_string();
    let (epoch, offset) = split(&id);
    assert_eq!((offset, first["data"].as_str()), (1, Some("one")));
    let event = sse.event().expect("an event");
    assert_eq!(event[0], format!("id: {id}"), "the SSE event carries the id");
    // Three kept (--history-size 3): 2, 3, 4; a binary payload as base64.
    let answer = web::get(http, "/history?channel=h.1");
    assert_eq!(answer.status, 200);
    let json: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON");
    assert_eq!(json["epoch"], epoch.as_str());
    assert_eq!(json["offset"], 4);
    let ids: Vec<&str> = json["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, [format!("{epoch}:2"), format!("{epoch}:3"), format!("{epoch}:4")]);
    assert_eq!(json["messages"][1]["data_base64"], "/w==");
    // "two", 0xff and "four" are kept: 8 bytes.
    assert!(web::get(http, "/metrics").text().contains("crier_history_bytes 8\n"));
    let after = web::get(http, &format!("/history?channel=h.1&since={epoch}:3&limit=5"));
    let json: serde_json::Value = serde_json::from_slice(&after.body).expect("JSON");
    assert_eq!(json["messages"].as_array().map(Vec::len), Some(1));
    // Errors: no history, bad id, no channel.
    let cases = [
        ("/history?channel=plain", 404, "ERR no history\n"),
        ("/history?channel=h.1&since=bad", 400, "ERR invalid id\n"),
        ("/history", 400, "ERR wrong number of arguments for 'history'\n"),
        ("/history?channel=h.1&limit=x", 400, "ERR invalid parameter\n"),
    ];
    for (path, status, body) in cases {
        let answer = web::get(http, path);
        assert_eq!((answer.status, answer.text().as_str()), (status, body), "{path}");
    }
}

#[test]
fn an_sse_stream_resumes_from_last_event_id_or_says_reset() {
    use common::web::{self, Sse};
    let server = Server::start(&["--history-size", "100"]);
    let http = server.http();
    let mut sse = Sse::open(http, "channel=s");
    assert_eq!(web::post(http, "/publish?channel=s", b"one").status, 200);
    let seen = sse.event().expect("an event")[0].trim_start_matches("id: ").to_string();
    drop(sse);
    assert_eq!(web::post(http, "/publish?channel=s", b"two").status, 200);
    assert_eq!(web::post(http, "/publish?channel=t", b"elsewhere").status, 200);
    // Reconnecting with the last id: the missed message, no reset.
    let mut again = Sse::open(http, &format!("channel=s&last-event-id={seen}"));
    assert_eq!(again.json()["data"], "two");
    // Two channels, one position: the other channel cannot be recovered.
    let mut both = Sse::open(http, &format!("channel=s&channel=t&last-event-id={seen}"));
    let reset = both.event().expect("an event");
    assert_eq!(reset[0], "event: reset");
    assert_eq!(reset[1], "data: {\"channels\":[\"t\"]}");
    assert_eq!(both.json()["data"], "two");
}

#[test]
fn sse_resume_edge_cases_reset_rather_than_fail() {
    use common::web::{self, Sse};
    let server = Server::start(&["--history-size", "100"]);
    let http = server.http();
    let mut sse = Sse::open(http, "channel=d");
    assert_eq!(web::post(http, "/publish?channel=d", b"one").status, 200);
    let seen = sse.event().expect("an event")[0].trim_start_matches("id: ").to_string();
    assert_eq!(web::post(http, "/publish?channel=d", b"two").status, 200);
    // A channel named twice is replayed once; a pattern cannot be resumed.
    let mut twice =
        Sse::open(http, &format!("channel=d&channel=d&pattern=x*&last-event-id={seen}"));
    let reset = twice.event().expect("an event");
    assert_eq!(reset, ["event: reset", "data: {\"channels\":[\"x*\"]}"]);
    assert_eq!(twice.json()["data"], "two");
    assert_eq!(web::post(http, "/publish?channel=d", b"three").status, 200);
    assert_eq!(twice.json()["data"], "three", "live after the replay, nothing twice");
    // An id this server cannot read: everything is reset, the stream opens.
    let mut mangled = Sse::open(http, "channel=d&last-event-id=garbage");
    assert_eq!(mangled.status, 200);
    assert_eq!(mangled.event().expect("an event")[0], "event: reset");
    // GET /history of a name never used makes nothing: no epoch yet.
    let answer = web::get(http, "/history?channel=never.used");
    let json: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON");
    assert_eq!((json["epoch"].as_str(), json["offset"].as_u64()), (Some("-"), Some(0)));
}

#[test]
fn a_replay_too_large_for_the_connection_is_not_recovered_rather_than_cut() {
    let server = Server::start(&["--history-size", "1000", "--max-pending", "65536"]);
    let mut watcher = v3(&server);
    let start = confirmed_at(&mut watcher, "SUBSCRIBE big");
    let (epoch, _) = split(&start);
    let mut publisher = server.connect();
    let payload = "p".repeat(1000);
    for _ in 0..100 {
        publisher.command(&format!("PUBLISH big {payload}"), "CONFIRMED");
    }
    // 100 KB to replay, 64 KiB of budget: plainly not recovered, still connected.
    let mut client = v3(&server);
    client.command(&format!("RESUME big {start}"), &format!("NOT RECOVERED {epoch}:100"));
    client.command("PING", "PONG");
    // A gap that fits is replayed.
    client.command(&format!("RESUME big {epoch}:90"), "RECOVERED 10");
}
