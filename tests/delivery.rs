//! The ordering and delivery promises, and what a slow consumer may not do.

mod common;
use common::Server;
use std::thread;

#[test]
fn a_thousand_pipelined_commands_are_answered_in_order() {
    let server = Server::start(&[]);
    let mut client = server.connect();
    let mut batch = Vec::new();
    for i in 0..1_000 {
        batch.extend_from_slice(format!("PING {i}\r\n").as_bytes());
    }
    client.send(&batch);
    for i in 0..1_000 {
        client.expect_line(format!("PONG {i}").as_bytes());
    }
}

#[test]
fn ten_thousand_messages_arrive_in_order() {
    let server = Server::start(&[]);
    let mut subscriber = server.connect_v2();
    subscriber.command("SUBSCRIBE seq", "CONFIRMED");
    let mut publisher = server.connect();
    let sender = thread::spawn(move || {
        let mut batch = Vec::new();
        for i in 0..10_000 {
            batch.extend_from_slice(format!("PUBLISH seq {i}\r\n").as_bytes());
        }
        publisher.send(&batch);
        for _ in 0..10_000 {
            publisher.expect_line(b"CONFIRMED");
        }
    });
    for i in 0..10_000 {
        assert_eq!(subscriber.push_v2().2, i.to_string().into_bytes());
    }
    sender.join().unwrap();
}

#[test]
fn confirmed_means_subscribed() {
    // A message published right after CONFIRMED always arrives, and it never
    // arrives before CONFIRMED.
    let server = Server::start(&[]);
    let mut subscriber = server.connect_v2();
    let mut publisher = server.connect();
    for i in 0..300 {
        subscriber.command(&format!("SUBSCRIBE fresh.{i}"), "CONFIRMED");
        publisher.command(&format!("PUBLISH fresh.{i} {i}"), "CONFIRMED");
        assert_eq!(subscriber.push_v2().2, i.to_string().into_bytes());
    }
}

#[test]
fn a_slow_consumer_is_cut_off_and_nobody_else_waits() {
    const MESSAGES: usize = 32 * 1024;
    const WINDOW: usize = 32;
    let server = Server::start(&["--max-pending", "65536"]);
    let mut slow = server.connect();
    slow.command("SUBSCRIBE firehose", "CONFIRMED");
    let mut healthy = server.connect();
    healthy.command("SUBSCRIBE firehose", "CONFIRMED");
    let rss_before = server.rss_kib();

    // 32 MiB in all, far beyond what the slow one's budget and socket
    // buffers hold. The publisher stays a small window ahead of the healthy
    // subscriber, so only the slow one can overflow.
    let mut publisher = server.connect();
    let payload = "p".repeat(1024);
    for batch in 0..MESSAGES / WINDOW {
        let mut commands = Vec::new();
        for i in 0..WINDOW {
            commands.extend_from_slice(
                format!("PUBLISH firehose {}{payload}\r\n", batch * WINDOW + i).as_bytes(),
            );
        }
        publisher.send(&commands);
        for i in 0..WINDOW {
            publisher.expect_line(b"CONFIRMED");
            let expected = format!("{}{payload}", batch * WINDOW + i);
            assert_eq!(healthy.line(), expected.as_bytes(), "the healthy subscriber missed one");
        }
    }
    let growth_kib = server.rss_kib().saturating_sub(rss_before);
    assert!(growth_kib < 16 * 1024, "server memory grew by {growth_kib} KiB");

    // The slow one gets what fitted, in order, then the error, then EOF.
    let mut received = 0;
    loop {
        let line = slow.line();
        if line == b"ERR slow consumer" {
            break;
        }
        assert_eq!(line, format!("{received}{payload}").into_bytes());
        received += 1;
    }
    assert!(received < MESSAGES, "the slow consumer was never cut off");
    slow.expect_eof();
}
