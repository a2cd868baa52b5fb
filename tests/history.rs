//! History and recovery (§9) over real sockets, on the embedded backend.

mod common;

use common::history::{Stream, confirmed_at, split, v3};
use common::{Client, Server};

#[test]
fn positions_count_up_and_version_3_shows_them() {
    let server = Server::start(&["--history-size", "100"]);
    let mut subscriber = v3(server.addr);
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
    let mut client = v3(server.addr);
    assert_eq!(confirmed_at(&mut client, "SUBSCRIBE other"), "-");
    let mut publisher = server.connect();
    publisher.command("PUBLISH other x", "CONFIRMED");
    assert_eq!(client.push_v3().1, "-");
}

#[test]
fn resume_replays_the_gap_then_goes_live() {
    let server = Server::start(&["--history-size", "100"]);
    let mut first = v3(server.addr);
    let start = confirmed_at(&mut first, "SUBSCRIBE c");
    let mut publisher = server.connect();
    publisher.command("PUBLISH c one", "CONFIRMED");
    let (_, seen, _) = first.push_v3();
    drop(first);
    publisher.command("PUBLISH c two", "CONFIRMED");
    publisher.command("PUBLISH c three", "CONFIRMED");
    let mut again = v3(server.addr);
    again.command(&format!("RESUME c {seen}"), "RECOVERED 2");
    assert_eq!(again.push_v3().2, b"two");
    assert_eq!(again.push_v3().2, b"three");
    publisher.command("PUBLISH c four", "CONFIRMED");
    let (_, id, payload) = again.push_v3();
    assert_eq!((split(&id).1, payload), (4, b"four".to_vec()));
    // From the very start of the epoch: everything.
    let mut fresh = v3(server.addr);
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
    let mut watcher = v3(server.addr);
    let start = confirmed_at(&mut watcher, "SUBSCRIBE h.1");
    let (epoch, _) = split(&start);
    for i in 1..=3 {
        publisher.command(&format!("PUBLISH h.1 m{i}"), "CONFIRMED");
    }
    let mut client = v3(server.addr);
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
    let mut client = v3(server.addr);
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
            client = v3(server.addr);
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
    let mut client = v3(server.addr);
    let start = confirmed_at(&mut client, "SUBSCRIBE cap");
    let (epoch, _) = split(&start);
    publisher.command("PUBLISH cap 12345", "CONFIRMED");
    publisher.command("PUBLISH cap 67890", "CONFIRMED");
    publisher.command("PUBLISH cap abc", "CONFIRMED");
    let mut late = v3(server.addr);
    late.command(&format!("RESUME cap {epoch}:0"), &format!("NOT RECOVERED {epoch}:3"));
    late.command(&format!("RESUME cap {epoch}:1"), "RECOVERED 2");

    let server = Server::start(&["--history-size", "100", "--history-ttl", "1"]);
    let mut publisher = server.connect();
    let mut client = v3(server.addr);
    let start = confirmed_at(&mut client, "SUBSCRIBE ttl");
    let (epoch, _) = split(&start);
    publisher.command("PUBLISH ttl soon gone", "CONFIRMED");
    // The time to live is the event here: wait it out.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut late = v3(server.addr);
    late.command(&format!("RESUME ttl {start}"), &format!("NOT RECOVERED {epoch}:1"));
}

#[test]
fn a_restart_is_a_new_epoch() {
    let mut server = Server::start(&["--history-size", "10"]);
    let mut client = v3(server.addr);
    let before = confirmed_at(&mut client, "SUBSCRIBE e");
    server.stop_with(libc::SIGTERM);
    let server = Server::start(&["--history-size", "10"]);
    let mut client = v3(server.addr);
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
    let sse = Sse::open(http, "channel=h.1");
    for payload in [&b"one"[..], b"two", b"\xff", b"four"] {
        assert_eq!(web::post(http, "/publish?channel=h.1", payload).status, 200);
    }
    let first = ws.json();
    let id = first["id"].as_str().expect("an id").to_string();
    let (epoch, offset) = split(&id);
    assert_eq!((offset, first["data"].as_str()), (1, Some("one")));
    // The JSON carries the message's own id; the `id:` line is the
    // stream's: every channel's position (here the one channel's).
    let mut sse = Stream::new(sse);
    let json = sse.json();
    assert_eq!((json["id"].as_str(), json["data"].as_str()), (Some(id.as_str()), Some("one")));
    assert_eq!(sse.entries(), [id.as_str()]);
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

fn publish(http: std::net::SocketAddr, channel: &str, payload: &str) {
    let path = format!("/publish?channel={channel}");
    assert_eq!(common::web::post(http, &path, payload.as_bytes()).status, 200);
}

#[test]
fn an_sse_stream_resumes_every_channel_from_last_event_id() {
    let server = Server::start(&["--history-size", "100"]);
    let http = server.http();
    let query = "channel=s&channel=t";
    let mut sse = Stream::open(http, query);
    for (channel, payload) in [("s", "s1"), ("t", "t1"), ("s", "s2")] {
        publish(http, channel, payload);
    }
    assert_eq!(sse.data(3), ["s1", "t1", "s2"]);
    // One entry per channel, in the URL's order: s is at 2, t at 1.
    let entries = sse.entries();
    assert_eq!(entries.len(), 2, "{}", sse.id);
    assert_eq!((split(&entries[0]).1, split(&entries[1]).1), (2, 1));
    let seen = sse.id.clone();
    drop(sse);
    for (channel, payload) in [("s", "s3"), ("t", "t2"), ("s", "s4"), ("t", "t3")] {
        publish(http, channel, payload);
    }
    // Every missed message of both channels, each channel in order (one
    // replay after the other), no reset; then live.
    let mut again = Stream::resume(http, query, &seen);
    assert_eq!(again.data(4), ["s3", "s4", "t2", "t3"]);
    publish(http, "t", "t4");
    assert_eq!(again.data(1), ["t4"]);
    let entries = again.entries();
    assert_eq!((split(&entries[0]).1, split(&entries[1]).1), (4, 4));
    // Nothing missed: nothing replayed, no reset.
    let seen = again.id.clone();
    drop(again);
    let mut quiet = Stream::resume(http, query, &seen);
    publish(http, "s", "s5");
    assert_eq!(quiet.data(1), ["s5"], "nothing twice");

    // A stream dropped before its first message still resumes: its first
    // event is its id alone, the positions it was confirmed at.
    let query = "channel=u&channel=v";
    let mut early = Stream::open(http, query);
    early.first_id();
    assert!(early.entries().iter().all(|entry| entry.ends_with(":0")), "{}", early.id);
    let seen = early.id.clone();
    drop(early);
    publish(http, "v", "v1");
    publish(http, "u", "u1");
    assert_eq!(Stream::resume(http, query, &seen).data(2), ["u1", "v1"]);
}

#[test]
fn sse_resumes_under_concurrent_publishing_lose_and_repeat_nothing() {
    let server = Server::start(&["--history-size", "100000"]);
    let http = server.http();
    let query = "channel=race.s&channel=race.t";
    let per_channel = 3_000;
    let mut sse = Stream::open(http, query);
    // The stream's confirmed positions arrive first: a drop from here on
    // loses nothing.
    sse.first_id();
    let addr = server.addr;
    let publishing = std::thread::spawn(move || {
        let mut publisher = Client::connect(addr);
        for i in 1..=per_channel {
            publisher.send(format!("PUBLISH race.s {i}\r\nPUBLISH race.t {i}\r\n").as_bytes());
        }
        for _ in 0..2 * per_channel {
            publisher.expect_line(b"CONFIRMED");
        }
    });
    let (mut s, mut t) = (Vec::new(), Vec::new());
    let mut resumes = 0;
    while s.len() + t.len() < 2 * per_channel {
        let json = sse.json();
        let number: usize = json["data"].as_str().and_then(|d| d.parse().ok()).expect("a number");
        match json["channel"].as_str() {
            Some("race.s") => s.push(number),
            Some("race.t") => t.push(number),
            other => panic!("{other:?}"),
        }
        if (s.len() + t.len()) % 400 == 0 {
            let id = sse.id.clone();
            drop(sse);
            sse = Stream::resume(http, query, &id);
            resumes += 1;
        }
    }
    publishing.join().expect("the publisher");
    assert!(resumes >= 10);
    let expected: Vec<usize> = (1..=per_channel).collect();
    assert!(s == expected && t == expected, "gap, duplicate or reordering");
}

#[test]
fn an_sse_stream_resets_exactly_what_it_cannot_recover() {
    let server = Server::start(&["--history-size", "2", "--history-channels", "h.*"]);
    let http = server.http();
    let query = "channel=h.a&channel=h.b&channel=plain";
    let mut sse = Stream::open(http, query);
    publish(http, "h.a", "a1");
    publish(http, "h.b", "b1");
    publish(http, "plain", "p1");
    assert_eq!(sse.data(3), ["a1", "b1", "p1"]);
    // A channel without history is `-` in the id.
    assert_eq!(sse.entries()[2], "-");
    let seen = sse.id.clone();
    drop(sse);
    // h.a's missed messages are partly evicted (2 kept of 3); h.b's are kept.
    for payload in ["a2", "a3", "a4"] {
        publish(http, "h.a", payload);
    }
    publish(http, "h.b", "b2");
    let mut again = Stream::resume(http, query, &seen);
    assert_eq!(again.reset(), ["h.a", "plain"]);
    // The reset carries the id: h.a from where it is now.
    assert_eq!(split(&again.entries()[0]).1, 4);
    assert_eq!(again.data(1), ["b2"]);
    publish(http, "h.a", "a5");
    assert_eq!(again.data(1), ["a5"], "live after the reset");
    let seen = again.id.clone();
    drop(again);
    // From there, h.a recovers again.
    publish(http, "h.a", "a6");
    let mut third = Stream::resume(http, query, &seen);
    assert_eq!(third.reset(), ["plain"]);
    assert_eq!(third.data(1), ["a6"]);
}

#[test]
fn sse_resume_edge_cases_reset_rather_than_fail() {
    let server = Server::start(&["--history-size", "100"]);
    let http = server.http();
    let mut sse = Stream::open(http, "channel=d");
    publish(http, "d", "one");
    assert_eq!(sse.data(1), ["one"]);
    let seen = sse.id.clone();
    publish(http, "d", "two");
    // A channel named twice is replayed once (and named once in ids); a
    // pattern cannot be resumed.
    let mut twice = Stream::resume(http, "channel=d&channel=d&pattern=x*", &seen);
    assert_eq!(twice.reset(), ["x*"]);
    assert_eq!(twice.data(1), ["two"]);
    publish(http, "d", "three");
    assert_eq!(twice.data(1), ["three"], "live after the replay, nothing twice");
    assert_eq!(twice.entries().len(), 1);
    // An id this server cannot read resets everything; the stream opens.
    let mut mangled = Stream::resume(http, "channel=d&channel=e", "garbage");
    assert_eq!(mangled.reset(), ["d", "e"]);
    // An id written for other channels (or the same in another order) maps
    // nothing: every channel is reset, none resumed from another's position.
    let mut both = Stream::open(http, "channel=d&channel=e");
    publish(http, "e", "e1");
    assert_eq!(both.data(1), ["e1"]);
    let mut swapped = Stream::resume(http, "channel=e&channel=d", &both.id);
    assert_eq!(swapped.reset(), ["e", "d"]);
    // The old one-position id: reset too.
    let old = both.entries()[1].clone();
    let mut old_form = Stream::resume(http, "channel=e", &old);
    assert_eq!(old_form.reset(), ["e"]);
    // GET /history of a name never used makes nothing: no epoch yet.
    let answer = common::web::get(http, "/history?channel=never.used");
    let json: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON");
    assert_eq!((json["epoch"].as_str(), json["offset"].as_u64()), (Some("-"), Some(0)));
}

#[test]
fn the_last_event_id_header_wins_over_the_url() {
    use std::io::{Read, Write};
    let server = Server::start(&["--history-size", "100"]);
    let http = server.http();
    let mut sse = Stream::open(http, "channel=s&channel=t");
    publish(http, "s", "s1");
    assert_eq!(sse.data(1), ["s1"]);
    let seen = sse.id.clone();
    drop(sse);
    publish(http, "t", "t-missed");
    publish(http, "s", "s-missed");
    // What a browser's EventSource sends: the same URL, the id in a header
    // (here the URL holds a mangled one, which the header overrides).
    let mut stream = std::net::TcpStream::connect(http).expect("connect");
    stream.set_read_timeout(Some(common::DEADLINE)).expect("timeout");
    let request = format!(
        "GET /sse?channel=s&channel=t&last-event-id=bad HTTP/1.1\r\nHost: x\r\n\
         Last-Event-ID: {seen}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut got = String::new();
    let mut buffer = [0; 4096];
    while !got.contains("t-missed") {
        let n = stream.read(&mut buffer).expect("read");
        assert!(n > 0, "the stream ended: {got}");
        got.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(!got.contains("event: reset"), "{got}");
    let (s, t) = (got.find("s-missed"), got.find("t-missed"));
    assert!(s.is_some() && s < t, "{got}");
}

#[test]
fn a_replay_too_large_for_the_connection_is_not_recovered_rather_than_cut() {
    let server = Server::start(&["--history-size", "1000", "--max-pending", "65536"]);
    let mut watcher = v3(server.addr);
    let start = confirmed_at(&mut watcher, "SUBSCRIBE big");
    let (epoch, _) = split(&start);
    let mut publisher = server.connect();
    let payload = "p".repeat(1000);
    for _ in 0..100 {
        publisher.command(&format!("PUBLISH big {payload}"), "CONFIRMED");
    }
    // 100 KB to replay, 64 KiB of budget: plainly not recovered, still connected.
    let mut client = v3(server.addr);
    client.command(&format!("RESUME big {start}"), &format!("NOT RECOVERED {epoch}:100"));
    client.command("PING", "PONG");
    // A gap that fits is replayed.
    client.command(&format!("RESUME big {epoch}:90"), "RECOVERED 10");
}
