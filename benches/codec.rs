//! Micro-benchmarks of the hot path's pure parts: framing, push encoding, the
//! glob matcher and a registry fan-out. Run with `cargo bench`.

use bytes::{Bytes, BytesMut};
use crier::broker::glob::Glob;
use crier::broker::{Registry, Topic};
use crier::outbox::{Flush, Outbox};
use crier::protocol::{Command, codec};
use divan::{Bencher, black_box};
use std::sync::Arc;

fn main() {
    divan::main();
}

#[divan::bench(args = [64, 1024])]
fn push_message(bencher: Bencher, size: usize) {
    let payload = vec![b'x'; size];
    bencher.bench(|| codec::push_message(black_box(b"scores.eu"), black_box(&payload)));
}

#[divan::bench]
fn split_and_parse_100_lines(bencher: Bencher) {
    let input: Vec<u8> =
        (0..100).flat_map(|i| format!("PUBLISH ch.{i} payload {i}\r\n").into_bytes()).collect();
    bencher.bench(|| {
        let mut buf = BytesMut::from(&input[..]);
        let mut parsed = 0;
        while let Ok(Some(line)) = codec::next_line(&mut buf, 65_536) {
            parsed += usize::from(Command::parse(line.freeze()).is_ok());
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
    let registry = Registry::default();
    let topic = Topic::channel(Bytes::from_static(b"fan"));
    let outboxes: Vec<Arc<Outbox>> =
        (0..subscribers as u64).map(|id| Arc::new(Outbox::detached(id, usize::MAX))).collect();
    for outbox in &outboxes {
        registry.add(topic.clone(), outbox);
    }
    let payload = vec![b'x'; 64];
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let mut batch = std::collections::VecDeque::new();
    bencher.bench_local(|| {
        let delivered = registry.publish(b"fan", &payload, &mut Flush::default());
        for outbox in &outboxes {
            runtime.block_on(outbox.next(&mut batch));
            outbox.written();
            batch.clear();
        }
        delivered
    });
}
