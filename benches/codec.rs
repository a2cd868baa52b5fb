//! Micro-benchmarks of the hot path's pure parts: framing, push encoding, the
//! glob matcher and a registry fan-out. Run with `cargo bench`.

use bytes::Bytes;
use crier::broker::glob::Glob;
use crier::broker::{Registry, Topic};
use crier::outbox::{Batch, Deferred, Flush, Outbox};
use crier::protocol::{Command, Framing, codec};
use divan::{Bencher, black_box};
use std::sync::Arc;

fn main() {
    divan::main();
}

#[divan::bench(args = [64, 1024])]
fn push_message(bencher: Bencher, size: usize) {
    let payload = vec![b'x'; size];
    bencher.bench(|| codec::push(None, black_box(b"scores.eu"), None, black_box(&payload)));
}

#[divan::bench]
fn split_and_parse_100_lines(bencher: Bencher) {
    let input: Vec<u8> =
        (0..100).flat_map(|i| format!("PUBLISH ch.{i} payload {i}\r\n").into_bytes()).collect();
    bencher.bench(|| {
        let mut reader = codec::LineReader::new(65_536);
        let _ = reader.read_with(|scratch| {
            scratch[..input.len()].copy_from_slice(&input);
            Ok(input.len())
        });
        let mut parsed = 0;
        while let Ok(Some(line)) = reader.next_line() {
            parsed += usize::from(Command::parse(line).is_ok());
        }
        parsed
    });
}

#[divan::bench(args = ["news.*", "h[ae]llo.*.x?z", "*a*b*c*d"])]
fn glob_match(bencher: Bencher, pattern: &str) {
    let glob = Glob::new(pattern.as_bytes());
    let channels: Vec<&[u8]> =
        vec![b"news.art.figurative", b"hello.world.xyz", b"aXbXcXdX", b"nope"];
    bencher.bench(|| channels.iter().filter(|c| glob.matches(black_box(c))).count());
}

/// One publish to N subscribers as the server does it: encoding once, N queue
/// pushes, and each writer taking its batch.
#[divan::bench(args = [1, 100, 1000])]
fn registry_fan_out(bencher: Bencher, subscribers: usize) {
    let registry = Registry::new(usize::MAX);
    let topic = Topic::channel(Bytes::from_static(b"fan"));
    let outboxes: Vec<Arc<Outbox>> = (0..subscribers as u64)
        .map(|id| Outbox::new(id, usize::MAX, Framing::Line, Deferred) as Arc<Outbox>)
        .collect();
    for outbox in &outboxes {
        registry.add(topic.clone(), outbox).expect("under the limit");
    }
    let payload = vec![b'x'; 64];
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    bencher.bench_local(|| {
        let delivered = registry.publish(b"fan", &payload, None, &mut Flush::default());
        for outbox in &outboxes {
            let mut batch = Batch::default();
            runtime.block_on(outbox.next(&mut batch));
            outbox.written(batch.bytes());
        }
        delivered
    });
}

/// A publish that matches none of N patterns held on the server: what every
/// publish pays for the patterns in use. The patterns are indexed by literal
/// prefix, so this stays flat as N grows (a scan would run N glob matches).
#[divan::bench(args = [10, 1000, 10000])]
fn publish_past_patterns(bencher: Bencher, patterns: usize) {
    let registry = Registry::new(usize::MAX);
    let outbox: Arc<Outbox> = Outbox::new(1, usize::MAX, Framing::Line, Deferred);
    for i in 0..patterns {
        let topic = Topic::pattern(Bytes::from(format!("user.{i}.*")));
        registry.add(topic, &outbox).expect("under the limit");
    }
    bencher.bench_local(|| registry.publish(b"scores.eu", b"1-0", None, &mut Flush::default()));
}
