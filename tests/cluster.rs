//! `--redis-cluster` against a real Redis Cluster (3 masters, 3 replicas,
//! `redis-cli --cluster create`) and real `crier` processes: delivery across
//! slots and nodes, a master killed and its replica promoted, a slot moved
//! while subscribers receive, patterns refused, and the per-master
//! metrics naming a master that is down. The rule checked
//! throughout: every message confirmed to its publisher reaches each
//! subscriber, or that subscriber got the gap signal.

mod common;

use common::{Client, DEADLINE, Server, free_port, redis_server, temp_dir, web};
use crier::broker::redis::cluster::slot;
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// A pause between two polls of something that cannot be awaited (the
/// cluster's own state): never a wait for an outcome on its own.
const POLL: Duration = Duration::from_millis(20);

/// Six `redis-server --cluster-enabled yes` on free ports, made one cluster
/// with a replica per master; killed on drop.
struct Cluster {
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
    dir: PathBuf,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = temp_dir("cluster");
        let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
        let mut children = Vec::new();
        for port in &ports {
            let config = dir.join(format!("nodes-{port}.conf"));
            let (port, dir) = (port.to_string(), dir.to_string_lossy().into_owned());
            children.push(Some(redis_server(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &config.to_string_lossy(),
                "--cluster-node-timeout",
                "1000",
                // A replica may take over however long ago it last heard
                // from its master, and syncs at once (not after 5 s).
                "--cluster-replica-validity-factor",
                "0",
                "--repl-diskless-sync-delay",
                "0",
                "--port",
                &port,
                "--dir",
                &dir,
            ])));
        }
        let cluster = Cluster { ports, children, dir };
        let nodes: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(created.success(), "redis-cli --cluster create failed");
        cluster.wait_ok();
        // Replicas in sync: a failover has something to promote.
        let deadline = Instant::now() + DEADLINE;
        while !cluster.ports.iter().all(|port| {
            let info = cli(*port, &["INFO", "replication"]);
            info.contains("role:master") || info.contains("master_link_status:up")
        }) {
            assert!(Instant::now() < deadline, "the replicas never synced");
            thread::sleep(POLL);
        }
        cluster
    }

    /// Seed URLs for crier: two of the nodes.
    fn seeds(&self) -> String {
        format!("redis://127.0.0.1:{},redis://127.0.0.1:{}", self.ports[0], self.ports[1])
    }

    fn alive(&self) -> impl Iterator<Item = u16> + '_ {
        self.ports.iter().zip(&self.children).filter(|(_, c)| c.is_some()).map(|(p, _)| *p)
    }

    /// Polls until every live node says `cluster_state:ok` and all agree on
    /// who serves each slot (three masters, all alive).
    fn wait_ok(&self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let ok = self
                .alive()
                .all(|port| cli(port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            let views: Vec<Vec<(u16, u16, u16)>> =
                self.alive().map(|port| self.ranges(port)).collect();
            let agreed = views.windows(2).all(|pair| pair[0] == pair[1])
                && views.first().is_some_and(|view| {
                    view.iter()
                        .map(|(_, _, owner)| owner)
                        .all(|owner| self.alive().any(|p| p == *owner))
                        && view.iter().map(|(from, to, _)| u32::from(to - from) + 1).sum::<u32>()
                            == 16384
                });
            if ok && agreed {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster never settled");
            thread::sleep(POLL);
        }
    }

    /// `(first, last, master's port)` of each slot range, as `port` sees it.
    fn ranges(&self, port: u16) -> Vec<(u16, u16, u16)> {
        let mut ranges = Vec::new();
        for line in cli(port, &["CLUSTER", "NODES"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let owner: u16 = fields[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse().ok())
                .expect("a port in CLUSTER NODES");
            for range in &fields[8..] {
                if range.starts_with('[') {
                    continue; // a slot being migrated
                }
                let (from, to) = range.split_once('-').unwrap_or((range, range));
                ranges.push((from.parse().unwrap(), to.parse().unwrap(), owner));
            }
        }
        ranges.sort();
        ranges
    }

    /// The port of the master serving `slot` now.
    fn master_of(&self, slot: u16) -> u16 {
        let port = self.alive().next().expect("a live node");
        let ranges = self.ranges(port);
        let found = ranges.iter().find(|(from, to, _)| (*from..=*to).contains(&slot));
        found.map(|(_, _, owner)| *owner).expect("an owner for every slot")
    }

    fn masters(&self) -> Vec<u16> {
        let port = self.alive().next().expect("a live node");
        let mut masters: Vec<u16> = self.ranges(port).iter().map(|(_, _, owner)| *owner).collect();
        masters.sort();
        masters.dedup();
        masters
    }

    /// The port of `master`'s replica.
    fn replica_of(&self, master: u16) -> u16 {
        let id = cli(master, &["CLUSTER", "MYID"]);
        let port = self.alive().next().expect("a live node");
        let nodes = cli(port, &["CLUSTER", "NODES"]);
        let replica = nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let follows = fields.len() > 3 && fields[2].contains("slave") && fields[3] == id;
            follows.then(|| fields[1].split(['@', ':']).nth(1)?.parse().ok())?
        });
        replica.expect("a replica of every master")
    }

    /// SIGKILL: the master vanishes as in a crash.
    fn kill(&mut self, port: u16) {
        let index = self.ports.iter().position(|p| *p == port).expect("a node of the cluster");
        if let Some(mut child) = self.children[index].take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Moves `slot` (and its keys) from its master to `to`, by hand, as
    /// `redis-cli --cluster reshard` does.
    fn move_slot(&self, slot: u16, to: u16) {
        let from = self.master_of(slot);
        let slot = slot.to_string();
        let from_id = cli(from, &["CLUSTER", "MYID"]);
        let to_id = cli(to, &["CLUSTER", "MYID"]);
        assert_eq!(cli(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]), "OK");
        assert_eq!(cli(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]), "OK");
        loop {
            let keys = cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            assert_eq!(cli(from, &args), "OK");
        }
        for port in [to, from] {
            assert_eq!(cli(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]), "OK");
        }
        // Every master is told, the new owner again: Redis then drops the
        // slot's shard subscriptions there once more (a `sunsubscribe`
        // with no change to the map), which the node must repair too.
        for port in self.masters() {
            let _ = cli(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-cli -p port args...`: its output, trimmed.
fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A channel name, with `prefix`, whose slot `master` serves.
fn channel_on(cluster: &Cluster, master: u16, prefix: &str) -> String {
    let port = cluster.alive().next().expect("a live node");
    let ranges = cluster.ranges(port);
    let serves = |slot: u16| {
        ranges.iter().any(|(from, to, owner)| *owner == master && (*from..=*to).contains(&slot))
    };
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|name| serves(slot(name.as_bytes())))
        .expect("a name")
}

/// Polls until `port` holds `count` shard subscribers of `channel`.
fn wait_shard_subscribers(server: &Server, port: u16, channel: &str, count: usize) {
    let deadline = Instant::now() + DEADLINE;
    let expected = format!("{channel}\n{count}");
    while cli(port, &["PUBSUB", "SHARDNUMSUB", channel]) != expected {
        assert!(
            Instant::now() < deadline,
            "{channel} never had {count} subscribers on {port}; the node's log:\n{}",
            server.log_now()
        );
        thread::sleep(POLL);
    }
}

/// `name{node="127.0.0.1:port"} value`: a line of `/metrics` about the
/// cluster node on `port`.
fn series(name: &str, port: u16, value: u64) -> String {
    format!("{name}{{node=\"127.0.0.1:{port}\"}} {value}")
}

/// `text` holds `line` as a whole line.
fn has(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// What a version 2 or 3 subscriber reads.
#[derive(Debug, PartialEq)]
enum Event {
    /// Channel, id (version 3), payload.
    Message(String, Option<String>, String),
    Gap(String),
}

/// Reads the next push or gap signal of a version 2 or 3 client.
fn event(client: &mut Client) -> Event {
    let line = String::from_utf8(client.line()).expect("an ASCII line");
    let words: Vec<&str> = line.split(' ').collect();
    match words[..] {
        ["GAP", channel] => Event::Gap(channel.to_string()),
        ["MESSAGE", channel, ref rest @ ..] => {
            let (id, n) = match rest {
                [n] => (None, n),
                [id, n] => (Some(id.to_string()), n),
                _ => panic!("not a push: {line}"),
            };
            let n: usize = n.parse().expect("a length");
            let mut payload = client.read_exact(n + 2);
            payload.truncate(n);
            Event::Message(channel.to_string(), id, String::from_utf8(payload).expect("UTF-8"))
        }
        _ => panic!("not a push nor a gap: {line}"),
    }
}

/// Reads events until every `(channel, payload)` of `awaited` arrived
/// (in any order: channels on different masters are not ordered with each
/// other); returns them all.
fn until(client: &mut Client, awaited: &[(&str, &str)]) -> Vec<Event> {
    let mut events = Vec::new();
    let mut left: Vec<(&str, &str)> = awaited.to_vec();
    while !left.is_empty() {
        let event = event(client);
        if let Event::Message(c, _, p) = &event {
            left.retain(|(channel, payload)| (*channel, *payload) != (c.as_str(), p.as_str()));
        }
        events.push(event);
    }
    events
}

/// Nothing silently lost: of the messages of `channel` confirmed to their
/// publisher, those in `events` came in order, once each, and any missing
/// one was covered by a gap signal. Returns the number of gap signals.
fn nothing_silently_lost(events: &[Event], channel: &str, confirmed: &[String]) -> usize {
    let wanted: HashSet<&String> = confirmed.iter().collect();
    // Others are fine: "after", "last", or one whose reply was lost with
    // the connection that carried it.
    let got: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Message(c, _, p) if c == channel && wanted.contains(p) => Some(p),
            _ => None,
        })
        .collect();
    let gaps = events.iter().filter(|e| matches!(e, Event::Gap(c) if c == channel)).count();
    let mut rest = confirmed.iter();
    for payload in &got {
        assert!(rest.any(|c| c == *payload), "{channel}: {payload} out of order or twice");
    }
    let got: HashSet<&String> = got.into_iter().collect();
    let missing: Vec<&String> = confirmed.iter().filter(|c| !got.contains(c)).collect();
    assert!(
        missing.is_empty() || gaps > 0,
        "{channel}: {} confirmed messages lost without a gap signal: {missing:?}",
        missing.len()
    );
    gaps
}

/// A crier node on the cluster, connected to every master.
fn node(cluster: &Cluster, extra: &[&str]) -> Server {
    let seeds = cluster.seeds();
    let mut args = vec!["--redis-cluster", seeds.as_str()];
    args.extend_from_slice(extra);
    let server = Server::start_with_env(&args, &[("CRIER_LOG", "info,crier::broker::redis=debug")]);
    server.wait_log("redis: connected to 3 masters");
    server
}

fn v(server: &Server, version: u8) -> Client {
    let mut client = server.connect();
    client.command(&format!("HELLO {version}"), "CONFIRMED");
    client
}

/// Publishes through crier, one `PUBLISH` after the other (a millisecond
/// apart, to leave the cluster's own traffic some CPU), until told to stop;
/// returns the payloads confirmed.
fn publisher(
    server: &Server,
    channel: String,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<String>> {
    let mut client = server.connect();
    thread::spawn(move || {
        let mut confirmed = Vec::new();
        for i in 0.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let payload = format!("m{i}");
            client.send(format!("PUBLISH {channel} {payload}\r\n").as_bytes());
            match client.line().as_slice() {
                b"CONFIRMED" => confirmed.push(payload),
                b"ERR backend unavailable" => {}
                other => panic!("PUBLISH: {}", other.escape_ascii()),
            }
            thread::sleep(Duration::from_millis(1));
        }
        confirmed
    })
}

/// Publishes `payload` on `channel` through crier until it is confirmed
/// (a master may still be failing over).
fn publish_confirmed(client: &mut Client, channel: &str, payload: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        client.send(format!("PUBLISH {channel} {payload}\r\n").as_bytes());
        match client.line().as_slice() {
            b"CONFIRMED" => return,
            b"ERR backend unavailable" if Instant::now() < deadline => thread::sleep(POLL),
            other => panic!("PUBLISH {channel}: {}", other.escape_ascii()),
        }
    }
}

/// `SPUBLISH` straight into the cluster, following `MOVED` (`redis-cli -c`).
fn spublish(cluster: &Cluster, channel: &str, payload: &str) {
    let port = cluster.alive().next().expect("a live node");
    let output = Command::new("redis-cli")
        .args(["-c", "-p", &port.to_string(), "SPUBLISH", channel, payload])
        .output()
        .expect("redis-cli");
    assert!(output.status.success(), "redis-cli -c SPUBLISH failed");
}

#[test]
fn delivery_across_slots_and_nodes_and_patterns_refused() {
    let cluster = Cluster::start();
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    let channels: Vec<String> =
        masters.iter().map(|&master| channel_on(&cluster, master, "news.")).collect();
    let one = node(&cluster, &[]);
    let two = node(&cluster, &[]);
    let mut subscribers = [v(&one, 2), v(&two, 2)];
    for subscriber in &mut subscribers {
        subscriber.send(format!("SUBSCRIBE {}\r\n", channels.join(" ")).as_bytes());
        for _ in &channels {
            subscriber.expect_line(b"CONFIRMED");
        }
    }
    let mut publisher = one.connect();
    for channel in &channels {
        publisher.command(&format!("PUBLISH {channel} via-crier"), "CONFIRMED");
        spublish(&cluster, channel, "via-redis");
    }
    let awaited: Vec<(&str, &str)> =
        channels.iter().map(|channel| (channel.as_str(), "via-redis")).collect();
    for subscriber in &mut subscribers {
        // Each channel's messages in order; channels of different masters
        // arrive over different connections, in no particular order.
        let events = until(subscriber, &awaited);
        assert_eq!(events.len(), 2 * channels.len(), "{events:?}");
        for channel in &channels {
            let got: Vec<&Event> = events
                .iter()
                .filter(|e| matches!(e, Event::Message(c, ..) if c == channel))
                .collect();
            let expected: Vec<Event> = ["via-crier", "via-redis"]
                .map(|payload| Event::Message(channel.clone(), None, payload.to_string()))
                .into();
            assert_eq!(got, expected.iter().collect::<Vec<_>>());
        }
    }
    // Each node holds one shard subscription per channel, on its master.
    for (channel, master) in channels.iter().zip(&masters) {
        wait_shard_subscribers(&one, *master, channel, 2);
    }
    // Patterns cannot be sharded: refused, the connection stays open; an
    // SSE stream asking for one is refused before it starts.
    let mut client = one.connect();
    client.command("PSUBSCRIBE news.*", "ERR patterns are not supported with --redis-cluster");
    client.command("PING", "PONG");
    let refused = web::get(one.http(), "/sse?pattern=news.*");
    assert_eq!(refused.status, 400);
    assert_eq!(refused.text().trim(), "ERR patterns are not supported with --redis-cluster");
}

#[test]
fn a_master_killed_and_its_replica_promoted() {
    let mut cluster = Cluster::start();
    let masters = cluster.masters();
    let (victim, survivor) = (masters[0], masters[1]);
    let plain = channel_on(&cluster, victim, "plain.");
    let kept = channel_on(&cluster, victim, "kept.");
    let elsewhere = channel_on(&cluster, survivor, "plain.");
    let server = node(&cluster, &["--history-size", "1000", "--history-channels", "kept.*"]);
    let mut gapped = v(&server, 2);
    gapped.send(format!("SUBSCRIBE {plain} {elsewhere}\r\n").as_bytes());
    gapped.expect_line(b"CONFIRMED");
    gapped.expect_line(b"CONFIRMED");
    let mut refilled = v(&server, 3);
    refilled.send(format!("SUBSCRIBE {kept}\r\n").as_bytes());
    assert!(refilled.line().starts_with(b"CONFIRMED "));

    let stop = Arc::new(AtomicBool::new(false));
    let publishing = [
        publisher(&server, plain.clone(), Arc::clone(&stop)),
        publisher(&server, kept.clone(), Arc::clone(&stop)),
        publisher(&server, elsewhere.clone(), Arc::clone(&stop)),
    ];
    assert_eq!(web::get(server.http(), "/readyz").status, 200);
    cluster.kill(victim);
    server.wait_log("redis: connection lost to");
    cluster.wait_ok();
    assert_ne!(cluster.master_of(slot(plain.as_bytes())), victim);
    server.wait_log("redis: connected to 3 masters");
    // Ready again: a connection to every master (the promoted one).
    assert_eq!(web::get(server.http(), "/readyz").status, 200);
    // Both publishers get through again before they stop.
    let mut client = server.connect();
    publish_confirmed(&mut client, &plain, "after");
    publish_confirmed(&mut client, &kept, "after");
    publish_confirmed(&mut client, &elsewhere, "after");
    stop.store(true, Ordering::Relaxed);
    let [on_plain, on_kept, on_elsewhere] =
        publishing.map(|publisher| publisher.join().expect("the publisher"));
    client.command(&format!("PUBLISH {plain} last"), "CONFIRMED");
    client.command(&format!("PUBLISH {elsewhere} last"), "CONFIRMED");
    client.command(&format!("PUBLISH {kept} last"), "CONFIRMED");

    // The channel on the killed master: the gap signal, then delivery again.
    let events = until(&mut gapped, &[(plain.as_str(), "last"), (elsewhere.as_str(), "last")]);
    let gaps = nothing_silently_lost(&events, &plain, &on_plain);
    assert!(gaps > 0, "no GAP for {plain}, whose master was killed: {events:?}");
    assert!(events.contains(&Event::Message(plain.clone(), None, "after".into())));
    // The channel on a master that stayed up lost nothing.
    let gaps = nothing_silently_lost(&events, &elsewhere, &on_elsewhere);
    assert_eq!(gaps, 0, "a GAP for {elsewhere}, whose master stayed up");

    // The history channel: refilled (or told), ids consecutive after.
    let events = until(&mut refilled, &[(kept.as_str(), "last")]);
    nothing_silently_lost(&events, &kept, &on_kept);
    let ids: Vec<u64> = events
        .iter()
        .rev()
        .take_while(|e| matches!(e, Event::Message(..)))
        .filter_map(|e| match e {
            Event::Message(_, Some(id), _) => id.split(':').nth(1)?.parse().ok(),
            _ => None,
        })
        .collect();
    assert!(ids.windows(2).all(|pair| pair[0] == pair[1] + 1), "ids not consecutive: {ids:?}");
}

#[test]
fn a_slot_moved_while_subscribers_receive() {
    let cluster = Cluster::start();
    let masters = cluster.masters();
    let (from, to) = (masters[0], masters[1]);
    let plain = channel_on(&cluster, from, "moving.");
    let kept = channel_on(&cluster, from, "kept.");
    assert_ne!(slot(plain.as_bytes()), slot(kept.as_bytes()), "two slots to move");
    let server = node(&cluster, &["--history-size", "1000", "--history-channels", "kept.*"]);
    let mut gapped = v(&server, 2);
    gapped.command(&format!("SUBSCRIBE {plain}"), "CONFIRMED");
    let mut refilled = v(&server, 3);
    refilled.send(format!("SUBSCRIBE {kept}\r\n").as_bytes());
    assert!(refilled.line().starts_with(b"CONFIRMED "));
    // Its keys would hash elsewhere than the channel: refused.
    refilled.command("SUBSCRIBE kept.{x}", "ERR invalid channel");

    let stop = Arc::new(AtomicBool::new(false));
    let publishing = [
        publisher(&server, plain.clone(), Arc::clone(&stop)),
        publisher(&server, kept.clone(), Arc::clone(&stop)),
    ];
    // Under way before the move: something was published.
    let before = until(&mut gapped, &[(plain.as_str(), "m0")]);
    cluster.move_slot(slot(plain.as_bytes()), to);
    cluster.move_slot(slot(kept.as_bytes()), to);
    cluster.wait_ok();
    assert_eq!(cluster.master_of(slot(plain.as_bytes())), to);
    // The node follows: its subscriptions are at the new master.
    wait_shard_subscribers(&server, to, &plain, 1);
    wait_shard_subscribers(&server, to, &kept, 1);
    server.wait_log("moved; resubscribing at its new master");
    let mut client = server.connect();
    publish_confirmed(&mut client, &plain, "after");
    publish_confirmed(&mut client, &kept, "after");
    stop.store(true, Ordering::Relaxed);
    let [on_plain, on_kept] = publishing.map(|publisher| publisher.join().expect("the publisher"));
    client.command(&format!("PUBLISH {plain} last"), "CONFIRMED");
    client.command(&format!("PUBLISH {kept} last"), "CONFIRMED");

    let mut events = before;
    events.extend(until(&mut gapped, &[(plain.as_str(), "last")]));
    nothing_silently_lost(&events, &plain, &on_plain);
    assert!(events.contains(&Event::Message(plain.clone(), None, "after".into())));
    let events = until(&mut refilled, &[(kept.as_str(), "last")]);
    nothing_silently_lost(&events, &kept, &on_kept);
    // And the history moved with the slot: the ids went on.
    let last_id = events.iter().rev().find_map(|e| match e {
        Event::Message(_, Some(id), _) => Some(id.clone()),
        _ => None,
    });
    let offset: u64 = last_id.and_then(|id| id.split(':').nth(1)?.parse().ok()).expect("an id");
    assert_eq!(offset as usize, on_kept.len() + 2, "every confirmed message kept its offset");
}

#[test]
fn the_metrics_name_the_master_that_is_down() {
    let mut cluster = Cluster::start();
    let masters = cluster.masters();
    let (victim, survivors) = (masters[0], &masters[1..]);
    // The victim's replica waits to be told before it takes over: the dead
    // master stays in the map for as long as the test looks at it.
    let replica = cluster.replica_of(victim);
    assert_eq!(cli(replica, &["CONFIG", "SET", "cluster-replica-no-failover", "yes"]), "OK");
    let on_victim = channel_on(&cluster, victim, "plain.");
    let elsewhere = channel_on(&cluster, survivors[0], "plain.");
    let server = node(&cluster, &[]);
    let mut client = v(&server, 2);
    client.send(format!("SUBSCRIBE {on_victim} {elsewhere}\r\n").as_bytes());
    client.expect_line(b"CONFIRMED");
    client.expect_line(b"CONFIRMED");

    let up = web::wait_metrics(server.http(), "three masters connected", |text| {
        has(text, "crier_redis_nodes_connected 3")
    });
    assert!(has(&up, "crier_redis_nodes 3"), "{up}");
    for &master in &masters {
        for line in [
            series("crier_redis_connected", master, 1),
            series("crier_redis_reconnects_total", master, 0),
            series("crier_redis_gaps_total", master, 0),
        ] {
            assert!(has(&up, &line), "{line} missing from:\n{up}");
        }
    }

    cluster.kill(victim);
    // The gap is counted before its signal is sent.
    assert_eq!(event(&mut client), Event::Gap(on_victim.clone()));
    let down = web::wait_metrics(server.http(), "the killed master disconnected", |text| {
        has(text, &series("crier_redis_connected", victim, 0))
            && has(text, "crier_redis_nodes_connected 2")
    });
    assert!(has(&down, "crier_redis_nodes 3"), "{down}");
    for line in [
        series("crier_redis_reconnects_total", victim, 1),
        series("crier_redis_gaps_total", victim, 1),
    ] {
        assert!(has(&down, &line), "{line} missing from:\n{down}");
    }
    for &master in survivors {
        for line in [
            series("crier_redis_connected", master, 1),
            series("crier_redis_reconnects_total", master, 0),
            series("crier_redis_gaps_total", master, 0),
        ] {
            assert!(has(&down, &line), "{line} missing from:\n{down}");
        }
    }

    // The replica takes over: the dead master leaves the map, and its
    // gauge with it (its counters stay); the new master is connected.
    assert_eq!(cli(replica, &["CONFIG", "SET", "cluster-replica-no-failover", "no"]), "OK");
    cluster.wait_ok();
    assert_eq!(cluster.master_of(slot(on_victim.as_bytes())), replica);
    let gone = format!("crier_redis_connected{{node=\"127.0.0.1:{victim}\"}}");
    let after = web::wait_metrics(server.http(), "the promoted replica connected", |text| {
        has(text, &series("crier_redis_connected", replica, 1))
            && has(text, "crier_redis_nodes_connected 3")
            && !text.contains(&gone)
    });
    assert!(has(&after, "crier_redis_nodes 3"), "{after}");
    assert!(has(&after, &series("crier_redis_reconnects_total", victim, 1)), "{after}");
    for &master in survivors {
        assert!(has(&after, &series("crier_redis_connected", master, 1)), "{after}");
    }
    // And the victim's channel is served again, by the promoted replica.
    publish_confirmed(&mut server.connect(), &on_victim, "after");
    until(&mut client, &[(on_victim.as_str(), "after")]);
}
