//! History and recovery (§9) on the Redis backend, against real
//! `redis-server` and `crier` processes over real sockets: positions kept in
//! Redis, `RESUME`, several nodes, node restarts, the node's own reconnect
//! and the gap signal when Redis cuts a node off.

mod common;

use common::history::{Stream, confirmed_at, split, v3};
use common::web::{self, Ws};
use common::{Client, DEADLINE, Redis, Server};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Instant;

/// A node on `redis` with history for the channels `globs` (all: `*`),
/// `size` messages kept each; returns once it is connected.
fn node(redis: &Redis, size: &str, globs: &str, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--redis", &url, "--history-size", size, "--history-channels", globs];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    server.wait_log("redis: connected");
    server
}

/// Sends `command`, expects `RECOVERED <k>`: k.
fn recovered(client: &mut Client, command: &str) -> u64 {
    client.send(format!("{command}\r\n").as_bytes());
    let line = String::from_utf8(client.line()).expect("ASCII");
    let k = line.strip_prefix("RECOVERED ").unwrap_or_else(|| panic!("{command}: {line}"));
    k.parse().expect("a count")
}

/// A reply of Redis (RESP2: what a plain client speaks).
#[derive(Debug, PartialEq)]
enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

impl Reply {
    fn text(&self) -> String {
        match self {
            Reply::Bulk(Some(bytes)) => String::from_utf8(bytes.clone()).expect("UTF-8"),
            Reply::Status(text) => text.clone(),
            other => panic!("not a string: {other:?}"),
        }
    }
}

/// A plain Redis connection, as a backend that bypasses crier has.
struct Plain {
    reader: BufReader<TcpStream>,
}

impl Plain {
    fn connect(redis: &Redis) -> Plain {
        let stream = TcpStream::connect(("127.0.0.1", redis.port)).expect("connect to Redis");
        stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
        Plain { reader: BufReader::new(stream) }
    }

    fn send(&mut self, args: &[&[u8]]) {
        self.reader.get_mut().write_all(&common::resp(args)).expect("send to Redis");
    }

    fn reply(&mut self) -> Reply {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).expect("read from Redis");
        assert!(line.ends_with(b"\r\n"), "{}", line.escape_ascii());
        let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
        match line[0] {
            b'+' => Reply::Status(text),
            b'-' => Reply::Error(text),
            b':' => Reply::Integer(text.parse().expect("an integer")),
            b'$' => {
                let n: i64 = text.parse().expect("a length");
                if n < 0 {
                    return Reply::Bulk(None);
                }
                let mut bytes = vec![0; n as usize + 2];
                self.reader.read_exact(&mut bytes).expect("read from Redis");
                bytes.truncate(n as usize);
                Reply::Bulk(Some(bytes))
            }
            b'*' => {
                let n: i64 = text.parse().expect("a length");
                Reply::Array((0..n.max(0)).map(|_| self.reply()).collect())
            }
            other => panic!("not RESP: {:?}", other as char),
        }
    }

    fn call(&mut self, args: &[&[u8]]) -> Reply {
        self.send(args);
        self.reply()
    }

    /// `FCALL crier_publish`, the documented way to publish with history
    /// without crier; returns the message's id.
    fn fcall_args(channel: &str, payload: &[u8], size: &str) -> Vec<Vec<u8>> {
        let (meta, stream) = (format!("crier:{{{channel}}}:m"), format!("crier:{{{channel}}}:s"));
        [b"FCALL".as_slice(), b"crier_publish", b"2", meta.as_bytes(), stream.as_bytes()]
            .iter()
            .map(|a| a.to_vec())
            .chain([channel.as_bytes().to_vec(), payload.to_vec()])
            .chain([size.as_bytes().to_vec(), b"3600000".to_vec()])
            .collect()
    }

    fn send_fcall(&mut self, channel: &str, payload: &[u8], size: &str) {
        let args = Plain::fcall_args(channel, payload, size);
        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        self.send(&args);
    }

    fn fcall_publish(&mut self, channel: &str, payload: &[u8], size: &str) -> String {
        self.send_fcall(channel, payload, size);
        match self.reply() {
            Reply::Bulk(Some(id)) => String::from_utf8(id).expect("an ASCII id"),
            other => panic!("FCALL crier_publish: {other:?}"),
        }
    }
}

/// `GET /history...` as JSON.
fn history(http: SocketAddr, query: &str) -> serde_json::Value {
    let answer = web::get(http, &format!("/history?{query}"));
    assert_eq!(answer.status, 200, "{query}: {}", answer.text());
    serde_json::from_slice(&answer.body).expect("JSON")
}

/// The ids of a `GET /history` answer's messages.
fn ids(json: &serde_json::Value) -> Vec<String> {
    let messages = json["messages"].as_array().expect("messages");
    messages.iter().map(|m| m["id"].as_str().expect("an id").to_string()).collect()
}

#[test]
fn positions_confirmations_and_resume_line_by_line() {
    let redis = Redis::start();
    let server = node(&redis, "3", "h.*", &[]);
    let mut subscriber = v3(server.addr);
    let start = confirmed_at(&mut subscriber, "SUBSCRIBE h.a");
    let (epoch, offset) = split(&start);
    assert_eq!(offset, 0, "before the first message");
    assert!(!epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_alphanumeric()), "{epoch}");
    // The epoch lives in Redis, with its offset.
    let mut plain = Plain::connect(&redis);
    let meta = plain.call(&[b"HGETALL", b"crier:{h.a}:m"]);
    let fields = [b"epoch".as_slice(), epoch.as_bytes(), b"offset", b"0"];
    let expected = Reply::Array(fields.iter().map(|f| Reply::Bulk(Some(f.to_vec()))).collect());
    assert_eq!(meta, expected);
    // Versions 1 and 2: plain CONFIRMED, byte for byte.
    let mut v2 = server.connect_v2();
    v2.command("SUBSCRIBE h.a", "CONFIRMED");
    let mut v1 = server.connect();
    v1.command("SUBSCRIBE h.a", "CONFIRMED");
    // Offsets +1 per message, whoever publishes: crier clients, POST
    // /publish and a plain Redis connection through crier_publish.
    let mut publisher = server.connect();
    publisher.command("PUBLISH h.a m1", "CONFIRMED");
    assert_eq!(web::post(server.http(), "/publish?channel=h.a", b"m2").status, 200);
    assert_eq!(plain.fcall_publish("h.a", b"m3", "3"), format!("{epoch}:3"));
    for i in 1..=3 {
        let payload = format!("m{i}").into_bytes();
        let expected = (b"h.a".to_vec(), format!("{epoch}:{i}"), payload.clone());
        assert_eq!(subscriber.push_v3(), expected);
        assert_eq!(v2.push_v2(), (None, b"h.a".to_vec(), payload.clone()));
        v1.expect_line(&payload);
    }
    // A later SUBSCRIBE is confirmed at the channel's position.
    let mut late = v3(server.addr);
    assert_eq!(confirmed_at(&mut late, "SUBSCRIBE h.a"), format!("{epoch}:3"));
    late.command("SUBSCRIBE h.a", "ALREADY SUBSCRIBED");
    // A channel without history: `-` everywhere.
    assert_eq!(confirmed_at(&mut late, "SUBSCRIBE plain"), "-");
    late.command("PSUBSCRIBE h.*", "CONFIRMED");
    publisher.command("PUBLISH plain p", "CONFIRMED");
    assert_eq!(late.push_v3(), (b"plain".to_vec(), "-".to_string(), b"p".to_vec()));
    // What a plain Redis subscriber sees: the id, a space, the payload; a
    // pattern delivery carries the message's id too.
    publisher.command("PUBLISH h.a m4", "CONFIRMED");
    let (_, id, payload) = late.push_v3();
    assert_eq!((id.as_str(), payload.as_slice()), (format!("{epoch}:4").as_str(), &b"m4"[..]));
    assert_eq!(subscriber.push_v3().1, format!("{epoch}:4"));
    let line = late.line();
    assert_eq!(line, format!("PMESSAGE h.* h.a {epoch}:4 2").into_bytes());
    late.expect_line(b"m4");

    // RESUME replays the gap, then live; in every version.
    let mut again = v3(server.addr);
    assert_eq!(recovered(&mut again, &format!("RESUME h.a {epoch}:2")), 2);
    assert_eq!(again.push_v3(), (b"h.a".to_vec(), format!("{epoch}:3"), b"m3".to_vec()));
    assert_eq!(again.push_v3(), (b"h.a".to_vec(), format!("{epoch}:4"), b"m4".to_vec()));
    assert_eq!(plain.fcall_publish("h.a", b"m5", "3"), format!("{epoch}:5"));
    assert_eq!(again.push_v3(), (b"h.a".to_vec(), format!("{epoch}:5"), b"m5".to_vec()));
    again.command(&format!("RESUME h.a {epoch}:5"), "RECOVERED 0");
    again.command("PING", "PONG");
    let mut v1 = server.connect();
    v1.command(&format!("RESUME h.a {epoch}:4"), "RECOVERED 1");
    v1.expect_line(b"m5");
    let mut v2 = server.connect_v2();
    v2.command(&format!("RESUME h.a {epoch}:3"), "RECOVERED 2");
    assert_eq!(v2.push_v2().2, b"m4");
    assert_eq!(v2.push_v2().2, b"m5");

    // NOT RECOVERED: another epoch, the future, `-`, no history; and the
    // connection is subscribed all the same.
    let position = format!("NOT RECOVERED {epoch}:5");
    let mut client = v3(server.addr);
    client.command("RESUME h.a zzzz:1", &position);
    client.command(&format!("RESUME h.a {epoch}:6"), &position);
    client.command("RESUME h.a -", &position);
    client.command(&format!("RESUME plain {epoch}:1"), "NOT RECOVERED -");
    publisher.command("PUBLISH h.a m6", "CONFIRMED");
    assert_eq!(client.push_v3().1, format!("{epoch}:6"));
    // A history channel never used: a new epoch, at 0.
    client.send(b"RESUME h.b -\r\n");
    let line = String::from_utf8(client.line()).expect("ASCII");
    let fresh = line.strip_prefix("NOT RECOVERED ").unwrap_or_else(|| panic!("{line}"));
    assert_eq!(split(fresh).1, 0, "{line}");
    for bad in ["nonsense", "e:x", ":1", "e:", "e:1:2", "e-1"] {
        client.command(&format!("RESUME h.a {bad}"), "ERR invalid id");
    }
    client.command("RESUME h.a", "ERR wrong number of arguments for 'resume'");

    // Evicted by --history-size: Redis trims the stream in whole nodes
    // (`MAXLEN ~`), so enough messages make the oldest go.
    let mut pipeline = Plain::connect(&redis);
    for i in 7..=300 {
        pipeline.send_fcall("h.a", format!("m{i}").as_bytes(), "3");
    }
    for i in 7..=300 {
        assert_eq!(pipeline.reply().text(), format!("{epoch}:{i}"));
    }
    let mut client = v3(server.addr);
    client.command(&format!("RESUME h.a {start}"), &format!("NOT RECOVERED {epoch}:300"));
    client.command(&format!("RESUME h.a {epoch}:297"), "RECOVERED 3");
    for i in 298..=300 {
        assert_eq!(client.push_v3().2, format!("m{i}").into_bytes());
    }
}

#[test]
fn expired_history_is_not_recovered() {
    let redis = Redis::start();
    let server = node(&redis, "100", "*", &["--history-ttl", "1"]);
    let mut client = v3(server.addr);
    let start = confirmed_at(&mut client, "SUBSCRIBE t");
    let mut publisher = server.connect();
    publisher.command("PUBLISH t soon gone", "CONFIRMED");
    assert_eq!(client.push_v3().2, b"soon gone");
    let json = history(server.http(), "channel=t");
    assert_eq!(ids(&json), [format!("{}:1", split(&start).0)]);
    // The time to live is the event: wait until GET /history no longer
    // shows the message (polled, bounded by the deadline).
    let began = Instant::now();
    while !history(server.http(), "channel=t")["messages"].as_array().expect("messages").is_empty()
    {
        assert!(began.elapsed() < DEADLINE, "the message never expired");
        thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut late = v3(server.addr);
    late.send(format!("RESUME t {start}\r\n").as_bytes());
    let line = String::from_utf8(late.line()).expect("ASCII");
    assert!(line.starts_with("NOT RECOVERED "), "{line}");
}

/// A reader of channel `race` that drops its connection every `every`
/// messages and resumes, alternately from the last id it received and from
/// `back` messages before it (those come again, as the client asked);
/// returns the (offset, payload) of every message it received, in order,
/// and checks as it goes that offsets are consecutive.
fn race_reader(
    addr: SocketAddr,
    epoch: String,
    from: u64,
    total: u64,
    every: usize,
    back: u64,
) -> Vec<(u64, String)> {
    let mut client = v3(addr);
    let mut last = from;
    if from == 0 {
        assert!(recovered(&mut client, &format!("RESUME race {epoch}:0")) <= total);
    } else {
        recovered(&mut client, &format!("RESUME race {epoch}:{from}"));
    }
    let mut got = Vec::new();
    let mut resumes = 0;
    while last < total {
        let (channel, id, payload) = client.push_v3();
        assert_eq!(channel, b"race");
        let (got_epoch, offset) = split(&id);
        assert_eq!(got_epoch, epoch, "one epoch throughout");
        assert_eq!(offset, last + 1, "after {epoch}:{last} came {id}: a gap or a duplicate");
        last = offset;
        got.push((offset, String::from_utf8(payload).expect("ASCII")));
        if got.len() % every == 0 && last < total {
            resumes += 1;
            let since = if resumes % 2 == 0 { last.saturating_sub(back) } else { last };
            client = v3(addr);
            let k = recovered(&mut client, &format!("RESUME race {epoch}:{since}"));
            assert!(k <= total - since, "RECOVERED {k} from {since} of at most {total}");
            last = since;
        }
    }
    got
}

#[test]
fn resume_under_concurrent_publishing_through_crier_and_redis() {
    let redis = Redis::start();
    let server = node(&redis, "100000", "*", &[]);
    let mut first = v3(server.addr);
    let (epoch, _) = split(&confirmed_at(&mut first, "SUBSCRIBE race"));
    drop(first);
    let per_publisher: u64 = 2_500;
    let total = 2 * per_publisher;
    // Two publishers at once: a crier client pipelining PUBLISH, and a
    // backend calling crier_publish on its own Redis connection.
    let addr = server.addr;
    let through_crier = thread::spawn(move || {
        let mut publisher = Client::connect(addr);
        for i in 1..=per_publisher {
            publisher.send(format!("PUBLISH race c{i}\r\n").as_bytes());
        }
        for _ in 1..=per_publisher {
            publisher.expect_line(b"CONFIRMED");
        }
    });
    let mut backend = Plain::connect(&redis);
    let through_redis = thread::spawn(move || {
        for i in 1..=per_publisher {
            backend.send_fcall("race", format!("f{i}").as_bytes(), "100000");
            if i % 100 == 0 {
                for _ in 0..100 {
                    assert!(matches!(backend.reply(), Reply::Bulk(Some(_))));
                }
            }
        }
    });
    // Readers resuming from various ids while the publishers go on.
    let readers: Vec<_> = [(0, 300, 0), (0, 250, 40), (0, 500, 499), (0, 97, 5), (0, 1000, 1)]
        .into_iter()
        .map(|(from, every, back)| {
            let epoch = epoch.clone();
            thread::spawn(move || race_reader(addr, epoch, from, total, every, back))
        })
        .collect();
    through_crier.join().expect("the crier publisher");
    through_redis.join().expect("the Redis publisher");
    // Late readers, from ids in the middle, once everything is published.
    let late: Vec<_> = [(1, 400, 3), (total / 2, 200, 100), (total - 1, 50, 0), (total, 50, 0)]
        .into_iter()
        .map(|(from, every, back)| {
            let epoch = epoch.clone();
            thread::spawn(move || race_reader(addr, epoch, from, total, every, back))
        })
        .collect();
    // Every reader saw every offset once per pass, and all agree on what
    // each offset holds; each publisher's messages are in its order.
    let mut payloads: HashMap<u64, String> = HashMap::new();
    for reader in readers.into_iter().chain(late) {
        for (offset, payload) in reader.join().expect("a reader") {
            let known = payloads.entry(offset).or_insert_with(|| payload.clone());
            assert_eq!(*known, payload, "offset {offset} holds two messages");
        }
    }
    assert_eq!(payloads.len() as u64, total);
    let mut order: Vec<(u64, String)> = payloads.into_iter().collect();
    order.sort();
    for prefix in ["c", "f"] {
        let numbers: Vec<u64> = order
            .iter()
            .filter_map(|(_, p)| p.strip_prefix(prefix))
            .map(|n| n.parse().expect("a number"))
            .collect();
        let expected: Vec<u64> = (1..=per_publisher).collect();
        assert!(numbers == expected, "{prefix}: lost, repeated or reordered");
    }
}

#[test]
fn two_nodes_agree_on_ids() {
    let redis = Redis::start();
    let a = node(&redis, "100", "*", &[]);
    let b = node(&redis, "100", "*", &[]);
    let mut on_a = v3(a.addr);
    let mut on_b = v3(b.addr);
    let start = confirmed_at(&mut on_a, "SUBSCRIBE n");
    assert_eq!(confirmed_at(&mut on_b, "SUBSCRIBE n"), start, "one position for both nodes");
    let (epoch, _) = split(&start);
    let mut publisher = a.connect();
    publisher.command("PUBLISH n from a", "CONFIRMED");
    b.connect().command("PUBLISH n from b", "CONFIRMED");
    Plain::connect(&redis).fcall_publish("n", b"from redis", "100");
    for (i, payload) in [(1, "from a"), (2, "from b"), (3, "from redis")] {
        let expected = (b"n".to_vec(), format!("{epoch}:{i}"), payload.as_bytes().to_vec());
        assert_eq!(on_a.push_v3(), expected);
        assert_eq!(on_b.push_v3(), expected);
    }
    // An id seen on A resumes on B; B's later SUBSCRIBE is at A's position.
    let mut moved = v3(b.addr);
    moved.command(&format!("RESUME n {epoch}:1"), "RECOVERED 2");
    assert_eq!(moved.push_v3().1, format!("{epoch}:2"));
    assert_eq!(moved.push_v3().1, format!("{epoch}:3"));
    assert_eq!(confirmed_at(&mut v3(a.addr), "SUBSCRIBE n"), format!("{epoch}:3"));
    // Both serve the same history.
    let (from_a, from_b) = (history(a.http(), "channel=n"), history(b.http(), "channel=n"));
    assert_eq!(from_a, from_b);
    assert_eq!(ids(&from_a), (1..=3).map(|i| format!("{epoch}:{i}")).collect::<Vec<_>>());
}

#[test]
fn a_node_restarted_between_a_drop_and_its_resume_loses_nothing() {
    let redis = Redis::start();
    let mut first = node(&redis, "100", "*", &[]);
    let other = node(&redis, "100", "*", &[]);
    let mut client = v3(first.addr);
    let start = confirmed_at(&mut client, "SUBSCRIBE r");
    let (epoch, _) = split(&start);
    let mut publisher = other.connect();
    publisher.command("PUBLISH r one", "CONFIRMED");
    publisher.command("PUBLISH r two", "CONFIRMED");
    assert_eq!(client.push_v3().2, b"one");
    let (_, seen, _) = client.push_v3();
    // The node dies (no goodbye); meanwhile messages go on, through the
    // other node and straight through Redis.
    first.stop_with(libc::SIGKILL);
    drop(client);
    publisher.command("PUBLISH r three", "CONFIRMED");
    let mut plain = Plain::connect(&redis);
    assert_eq!(plain.fcall_publish("r", b"four", "100"), format!("{epoch}:4"));
    // It comes back on the same Redis; the client resumes there.
    let again = node(&redis, "100", "*", &[]);
    let mut client = v3(again.addr);
    assert_eq!(recovered(&mut client, &format!("RESUME r {seen}")), 2);
    assert_eq!(client.push_v3(), (b"r".to_vec(), format!("{epoch}:3"), b"three".to_vec()));
    assert_eq!(client.push_v3(), (b"r".to_vec(), format!("{epoch}:4"), b"four".to_vec()));
    publisher.command("PUBLISH r five", "CONFIRMED");
    assert_eq!(client.push_v3(), (b"r".to_vec(), format!("{epoch}:5"), b"five".to_vec()));
    // Even from the confirmation of before the restart.
    let mut from_start = v3(again.addr);
    assert_eq!(recovered(&mut from_start, &format!("RESUME r {start}")), 5);
}

#[test]
fn the_nodes_own_reconnect_refills_history_and_signals_the_rest() {
    let redis = Redis::start();
    let server = node(&redis, "100", "h.*", &[]);
    let http = server.http();
    let mut kept = v3(server.addr);
    let (epoch, _) = split(&confirmed_at(&mut kept, "SUBSCRIBE h.r"));
    let mut plain_v2 = server.connect_v2();
    plain_v2.command("SUBSCRIBE plain", "CONFIRMED");
    let mut pattern_v2 = server.connect_v2();
    pattern_v2.command("PSUBSCRIBE pl*", "CONFIRMED");
    let mut plain_v1 = server.connect();
    plain_v1.command("SUBSCRIBE plain", "CONFIRMED");
    let mut ws = Ws::connect(http);
    ws.command("HELLO 2", "CONFIRMED");
    ws.command("SUBSCRIBE plain", "CONFIRMED");
    let mut sse = Stream::open(http, "channel=h.r&channel=plain");
    server.connect().command("PUBLISH h.r m1", "CONFIRMED");
    assert_eq!(kept.push_v3(), (b"h.r".to_vec(), format!("{epoch}:1"), b"m1".to_vec()));
    assert_eq!(sse.message(), ("h.r".into(), format!("{epoch}:1"), "m1".into()));

    // In one transaction: the node's subscription connection is cut, then
    // messages are published that it cannot receive.
    let mut plain = Plain::connect(&redis);
    assert_eq!(plain.call(&[b"MULTI"]), Reply::Status("OK".into()));
    plain.send(&[b"CLIENT", b"KILL", b"TYPE", b"pubsub"]);
    assert_eq!(plain.reply(), Reply::Status("QUEUED".into()));
    for payload in [&b"m2"[..], b"m3"] {
        plain.send_fcall("h.r", payload, "100");
        assert_eq!(plain.reply(), Reply::Status("QUEUED".into()));
    }
    plain.send(&[b"PUBLISH", b"plain", b"lost"]);
    assert_eq!(plain.reply(), Reply::Status("QUEUED".into()));
    let done = plain.call(&[b"EXEC"]);
    let expected = Reply::Array(vec![
        Reply::Integer(1),
        Reply::Bulk(Some(format!("{epoch}:2").into_bytes())),
        Reply::Bulk(Some(format!("{epoch}:3").into_bytes())),
        Reply::Integer(0),
    ]);
    assert_eq!(done, expected, "one subscription connection killed, nobody to receive");
    server.wait_log("redis: connection lost");
    server.wait_log("redis: connected");

    // The history channel: the missed messages, consecutive, no signal.
    assert_eq!(kept.push_v3(), (b"h.r".to_vec(), format!("{epoch}:2"), b"m2".to_vec()));
    assert_eq!(kept.push_v3(), (b"h.r".to_vec(), format!("{epoch}:3"), b"m3".to_vec()));
    // The others: the gap signal, in each one's form.
    plain_v2.expect_line(b"GAP plain");
    pattern_v2.expect_line(b"PGAP pl*");
    assert_eq!(ws.json(), serde_json::json!({"gap": true, "channel": "plain"}));
    assert_eq!(sse.reset(), ["plain"]);
    assert_eq!(sse.message(), ("h.r".into(), format!("{epoch}:2"), "m2".into()));
    assert_eq!(sse.message(), ("h.r".into(), format!("{epoch}:3"), "m3".into()));
    // Then live again, on every channel (version 1 got no signal at all:
    // its next line is the next message).
    let mut publisher = server.connect();
    publisher.command("PUBLISH h.r m4", "CONFIRMED");
    publisher.command("PUBLISH plain after", "CONFIRMED");
    assert_eq!(kept.push_v3(), (b"h.r".to_vec(), format!("{epoch}:4"), b"m4".to_vec()));
    assert_eq!(plain_v2.push_v2(), (None, b"plain".to_vec(), b"after".to_vec()));
    let through = (Some(b"pl*".to_vec()), b"plain".to_vec(), b"after".to_vec());
    assert_eq!(pattern_v2.push_v2(), through);
    plain_v1.expect_line(b"after");
    assert_eq!(ws.json(), serde_json::json!({"channel": "plain", "data": "after"}));
    assert_eq!(sse.message(), ("h.r".into(), format!("{epoch}:4"), "m4".into()));
    assert_eq!(sse.message(), ("plain".into(), "-".into(), "after".into()));
    assert_eq!(sse.entries(), [format!("{epoch}:4"), "-".to_string()]);
}

#[test]
fn redis_cutting_the_node_at_its_output_limit_is_signalled_and_refilled() {
    let redis = Redis::start();
    let limit: [&[u8]; 4] = [b"CONFIG", b"SET", b"client-output-buffer-limit", b"pubsub 256kb 0 0"];
    assert_eq!(redis.command(&limit), b"+OK\r\n");
    let server = node(&redis, "100", "h.*", &[]);
    let http = server.http();
    let mut v2 = server.connect_v2();
    v2.command("SUBSCRIBE news", "CONFIRMED");
    let mut ws = Ws::connect(http);
    ws.command("HELLO 2", "CONFIRMED");
    ws.command("SUBSCRIBE news", "CONFIRMED");
    let mut kept = v3(server.addr);
    let (epoch, _) = split(&confirmed_at(&mut kept, "SUBSCRIBE h.o"));
    // The flood's channel, subscribed by a client that reads it all.
    let mut flooded = server.connect();
    flooded.command("SUBSCRIBE flood", "CONFIRMED");
    let draining = thread::spawn(move || flooded.read_to_eof().len());

    // The node cannot read (frozen): what Redis sends it piles up in Redis
    // until the output limit, where Redis cuts it off.
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    assert_eq!(unsafe { libc::kill(server.pid() as i32, libc::SIGSTOP) }, 0);
    let mut plain = Plain::connect(&redis);
    assert_eq!(plain.fcall_publish("h.o", b"before the cut", "100"), format!("{epoch}:1"));
    let flood = vec![b'x'; 64 * 1024];
    let began = Instant::now();
    while plain.call(&[b"PUBLISH", b"flood", &flood]) != Reply::Integer(0) {
        assert!(began.elapsed() < DEADLINE, "Redis never cut the node off");
    }
    assert_eq!(plain.fcall_publish("h.o", b"after the cut", "100"), format!("{epoch}:2"));
    assert_eq!(plain.call(&[b"PUBLISH", b"news", b"lost"]), Reply::Integer(0));
    assert_eq!(unsafe { libc::kill(server.pid() as i32, libc::SIGCONT) }, 0);
    server.wait_log("redis: connection lost");
    server.wait_log("redis: connected");

    v2.expect_line(b"GAP news");
    assert_eq!(ws.json(), serde_json::json!({"gap": true, "channel": "news"}));
    let first = (b"h.o".to_vec(), format!("{epoch}:1"), b"before the cut".to_vec());
    assert_eq!(kept.push_v3(), first);
    let second = (b"h.o".to_vec(), format!("{epoch}:2"), b"after the cut".to_vec());
    assert_eq!(kept.push_v3(), second);
    // Delivery works again.
    server.connect().command("PUBLISH news back", "CONFIRMED");
    assert_eq!(v2.push_v2(), (None, b"news".to_vec(), b"back".to_vec()));
    assert_eq!(ws.json(), serde_json::json!({"channel": "news", "data": "back"}));
    server.connect().command("PUBLISH h.o live", "CONFIRMED");
    assert_eq!(kept.push_v3(), (b"h.o".to_vec(), format!("{epoch}:3"), b"live".to_vec()));
    drop(server);
    assert!(draining.join().expect("the flood's reader") > 0);
}

#[test]
fn get_history_reads_redis_and_makes_no_keys() {
    let redis = Redis::start();
    let server = node(&redis, "100", "h.*", &[]);
    let http = server.http();
    // Never used: answered, and nothing made in Redis.
    let json = history(http, "channel=h.never");
    assert_eq!(json["messages"], serde_json::json!([]));
    assert_eq!(json["offset"], 0);
    let mut plain = Plain::connect(&redis);
    assert_eq!(plain.call(&[b"KEYS", b"crier:*"]), Reply::Array(Vec::new()));
    // No history: 404.
    let answer = web::get(http, "/history?channel=plain");
    assert_eq!((answer.status, answer.text().as_str()), (404, "ERR no history\n"));
    let answer = web::get(http, "/history?channel=h.x&since=bad");
    assert_eq!(answer.status, 400);

    let epoch = split(&plain.fcall_publish("h.g", b"one", "100")).0;
    let mut publisher = server.connect();
    publisher.command("PUBLISH h.g two", "CONFIRMED");
    assert_eq!(web::post(http, "/publish?channel=h.g", b"\xff").status, 200);
    plain.fcall_publish("h.g", b"four", "100");
    publisher.command("PUBLISH h.g five", "CONFIRMED");
    let all = history(http, "channel=h.g");
    assert_eq!((all["epoch"].as_str(), all["offset"].as_u64()), (Some(epoch.as_str()), Some(5)));
    let expected: Vec<String> = (1..=5).map(|i| format!("{epoch}:{i}")).collect();
    assert_eq!(ids(&all), expected);
    assert_eq!(all["messages"][0]["data"], "one");
    assert_eq!(all["messages"][2]["data_base64"], "/w==");
    assert_eq!(all["messages"][4]["data"], "five");
    let since = history(http, &format!("channel=h.g&since={epoch}:3"));
    assert_eq!(ids(&since), expected[3..]);
    let limited = history(http, "channel=h.g&limit=2");
    assert_eq!(ids(&limited), expected[..2]);
    let page = history(http, &format!("channel=h.g&since={epoch}:2&limit=1"));
    assert_eq!(ids(&page), expected[2..3]);
    assert_eq!(page["offset"], 5);
    let none = history(http, &format!("channel=h.g&since={epoch}:5"));
    assert_eq!(ids(&none), Vec::<String>::new());
    // Another epoch's `since` counts as none: everything kept.
    let other = history(http, "channel=h.g&since=zzzz:4");
    assert_eq!(ids(&other), expected);
    // Reading made no keys for h.never, and h.g has exactly its two.
    let keys = plain.call(&[b"KEYS", b"crier:*"]);
    let mut names = match keys {
        Reply::Array(names) => names.iter().map(Reply::text).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    names.sort();
    assert_eq!(names, ["crier:{h.g}:m", "crier:{h.g}:s"]);
}

#[test]
fn websocket_and_sse_carry_ids_and_sse_resumes_across_nodes() {
    let redis = Redis::start();
    let a = node(&redis, "100", "h.*", &[]);
    let b = node(&redis, "100", "h.*", &[]);
    let (http_a, http_b) = (a.http(), b.http());
    let mut ws = Ws::connect(http_a);
    ws.command("HELLO 3", "CONFIRMED");
    let start = {
        ws.send("SUBSCRIBE h.s");
        let reply = ws.text();
        reply.strip_prefix("CONFIRMED ").unwrap_or_else(|| panic!("{reply}")).to_string()
    };
    let (epoch_s, _) = split(&start);
    ws.command("SUBSCRIBE plain", "CONFIRMED -");
    let query = "channel=h.s&channel=h.t&channel=plain";
    let mut sse = Stream::open(http_a, query);
    let mut plain = Plain::connect(&redis);
    plain.fcall_publish("h.s", b"s1", "100");
    let epoch_t = split(&plain.fcall_publish("h.t", b"t1", "100")).0;
    a.connect().command("PUBLISH plain p1", "CONFIRMED");
    b.connect().command("PUBLISH h.s s2", "CONFIRMED");
    let json = |channel: &str, id: Option<String>, data: &str| match id {
        Some(id) => serde_json::json!({"channel": channel, "id": id, "data": data}),
        None => serde_json::json!({"channel": channel, "data": data}),
    };
    assert_eq!(ws.json(), json("h.s", Some(format!("{epoch_s}:1")), "s1"));
    assert_eq!(ws.json(), json("plain", None, "p1"));
    assert_eq!(ws.json(), json("h.s", Some(format!("{epoch_s}:2")), "s2"));
    assert_eq!(sse.message(), ("h.s".into(), format!("{epoch_s}:1"), "s1".into()));
    assert_eq!(sse.message(), ("h.t".into(), format!("{epoch_t}:1"), "t1".into()));
    assert_eq!(sse.message(), ("plain".into(), "-".into(), "p1".into()));
    assert_eq!(sse.message(), ("h.s".into(), format!("{epoch_s}:2"), "s2".into()));
    // The stream's id: each channel's position, `-` for the one without.
    let entries = [format!("{epoch_s}:2"), format!("{epoch_t}:1"), "-".into()];
    assert_eq!(sse.entries(), entries);
    // RESUME over WebSocket.
    let mut again = Ws::connect(http_b);
    again.command("HELLO 3", "CONFIRMED");
    again.command(&format!("RESUME h.s {start}"), "RECOVERED 2");
    assert_eq!(again.json(), json("h.s", Some(format!("{epoch_s}:1")), "s1"));
    assert_eq!(again.json(), json("h.s", Some(format!("{epoch_s}:2")), "s2"));

    // The stream drops; messages go on; it comes back on the other node
    // with its last id, as EventSource would (the id is node-independent).
    let seen = sse.id.clone();
    drop(sse);
    plain.fcall_publish("h.t", b"t2", "100");
    a.connect().command("PUBLISH h.s s3", "CONFIRMED");
    plain.fcall_publish("h.t", b"t3", "100");
    let mut resumed = Stream::open(http_b, &format!("{query}&last-event-id={seen}"));
    assert_eq!(resumed.reset(), ["plain"], "only the channel without history");
    assert_eq!(resumed.message(), ("h.s".into(), format!("{epoch_s}:3"), "s3".into()));
    assert_eq!(resumed.message(), ("h.t".into(), format!("{epoch_t}:2"), "t2".into()));
    assert_eq!(resumed.message(), ("h.t".into(), format!("{epoch_t}:3"), "t3".into()));
    b.connect().command("PUBLISH h.t t4", "CONFIRMED");
    assert_eq!(resumed.message(), ("h.t".into(), format!("{epoch_t}:4"), "t4".into()));
    let entries = [format!("{epoch_s}:3"), format!("{epoch_t}:4"), "-".into()];
    assert_eq!(resumed.entries(), entries);
    // Nothing missed: nothing replayed; the next event is live.
    let seen = resumed.id.clone();
    drop(resumed);
    let mut quiet = Stream::open(http_a, &format!("{query}&last-event-id={seen}"));
    assert_eq!(quiet.reset(), ["plain"]);
    a.connect().command("PUBLISH h.s s4", "CONFIRMED");
    assert_eq!(quiet.message(), ("h.s".into(), format!("{epoch_s}:4"), "s4".into()));
}

#[test]
fn a_refill_that_cannot_be_complete_is_a_gap() {
    let mut redis = Redis::start();
    let server = node(&redis, "3", "h.*", &[]);
    let mut v3_client = v3(server.addr);
    let (epoch, _) = split(&confirmed_at(&mut v3_client, "SUBSCRIBE h.k"));
    let mut v2_client = server.connect_v2();
    v2_client.command("SUBSCRIBE h.k", "CONFIRMED");
    // Cut, and more published meanwhile than Redis keeps (3, trimmed in
    // whole stream nodes of 100).
    let mut plain = Plain::connect(&redis);
    plain.call(&[b"MULTI"]);
    plain.send(&[b"CLIENT", b"KILL", b"TYPE", b"pubsub"]);
    for i in 1..=300 {
        plain.send_fcall("h.k", format!("m{i}").as_bytes(), "3");
    }
    for _ in 0..=300 {
        assert_eq!(plain.reply(), Reply::Status("QUEUED".into()));
    }
    match plain.call(&[b"EXEC"]) {
        Reply::Array(replies) => assert_eq!(replies[0], Reply::Integer(1)),
        other => panic!("{other:?}"),
    }
    server.wait_log("redis: connection lost");
    server.wait_log("redis: connected");
    v3_client.expect_line(b"GAP h.k");
    v2_client.expect_line(b"GAP h.k");
    // Then live, from the channel's position.
    plain.fcall_publish("h.k", b"next", "3");
    assert_eq!(v3_client.push_v3(), (b"h.k".to_vec(), format!("{epoch}:301"), b"next".to_vec()));
    assert_eq!(v2_client.push_v2().2, b"next");

    // Redis restarted without its data: another epoch, so a gap too.
    redis.kill();
    server.wait_log("redis: connection lost");
    redis.restart();
    server.wait_log("redis: connected");
    v3_client.expect_line(b"GAP h.k");
    v2_client.expect_line(b"GAP h.k");
    let mut plain = Plain::connect(&redis);
    let id = plain.fcall_publish("h.k", b"new epoch", "3");
    let (new_epoch, offset) = split(&id);
    assert!(new_epoch != epoch && offset == 1, "{epoch} then {id}");
    assert_eq!(v3_client.push_v3(), (b"h.k".to_vec(), id, b"new epoch".to_vec()));
    assert_eq!(v2_client.push_v2().2, b"new epoch");
    let mut late = v3(server.addr);
    assert_eq!(confirmed_at(&mut late, "SUBSCRIBE h.k"), format!("{new_epoch}:1"));
}

#[test]
fn a_plain_publish_that_looks_like_an_envelope_is_a_plain_message() {
    // A payload published with plain PUBLISH that happens to start like
    // crier_publish's `<epoch>:<offset> ` was delivered with that fake id,
    // and moved the node's last position (helper's review, session 4).
    let redis = Redis::start();
    let server = node(&redis, "10", "h.*", &[]);
    let mut subscriber = v3(server.addr);
    let start = confirmed_at(&mut subscriber, "SUBSCRIBE h.fake");
    let (epoch, offset) = split(&start);
    let mut publisher = server.connect();
    publisher.command("PUBLISH h.fake one", "CONFIRMED");
    assert_eq!(
        subscriber.push_v3(),
        (b"h.fake".to_vec(), format!("{epoch}:{}", offset + 1), b"one".to_vec())
    );
    assert_eq!(redis.publish(b"h.fake", b"Note:42 the answer"), 1);
    assert_eq!(
        subscriber.push_v3(),
        (b"h.fake".to_vec(), "-".to_string(), b"Note:42 the answer".to_vec())
    );
    publisher.command("PUBLISH h.fake two", "CONFIRMED");
    assert_eq!(
        subscriber.push_v3(),
        (b"h.fake".to_vec(), format!("{epoch}:{}", offset + 2), b"two".to_vec())
    );
}
