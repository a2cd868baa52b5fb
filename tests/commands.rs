//! Every row of the command table of the wire contract.

mod common;
use common::Server;

#[test]
fn subscribe_many_channels_one_reply_each() {
    let server = Server::start(&[]);
    let mut client = server.connect();
    client.send(b"SUBSCRIBE a b a\r\n");
    client.expect_line(b"CONFIRMED");
    client.expect_line(b"CONFIRMED");
    client.expect_line(b"ALREADY SUBSCRIBED");
    client.send(b"unsubscribe a c b\r\n");
    client.expect_line(b"CONFIRMED");
    client.expect_line(b"ALREADY UNSUBSCRIBED");
    client.expect_line(b"CONFIRMED");
}

#[test]
fn psubscribe_and_punsubscribe() {
    let server = Server::start(&[]);
    let mut client = server.connect();
    let mut publisher = server.connect();
    client.send(b"PSUBSCRIBE news.* h?llo news.*\r\n");
    client.expect_line(b"CONFIRMED");
    client.expect_line(b"CONFIRMED");
    client.expect_line(b"ALREADY SUBSCRIBED");
    publisher.command("PUBLISH news.art first", "CONFIRMED");
    publisher.command("PUBLISH hallo second", "CONFIRMED");
    publisher.command("PUBLISH other never", "CONFIRMED");
    client.expect_line(b"first");
    client.expect_line(b"second");
    client.send(b"PUNSUBSCRIBE news.* nope\r\n");
    client.expect_line(b"CONFIRMED");
    client.expect_line(b"ALREADY UNSUBSCRIBED");
    publisher.command("PUBLISH news.art gone", "CONFIRMED");
    client.command("PING", "PONG");
    client.command("PSUBSCRIBE", "ERR wrong number of arguments for 'psubscribe'");
    client.command("PUNSUBSCRIBE", "ERR wrong number of arguments for 'punsubscribe'");
}

#[test]
fn glob_rules_are_redis_rules() {
    let server = Server::start(&[]);
    let mut client = server.connect();
    let mut publisher = server.connect();
    client.send(b"PSUBSCRIBE h[ae]llo h[^e]y [a-c]x \\*lit\r\n");
    for _ in 0..4 {
        client.expect_line(b"CONFIRMED");
    }
    for (channel, delivered) in [
        ("hello", true),
        ("hillo", false),
        ("hay", true),
        ("hey", false),
        ("bx", true),
        ("dx", false),
        ("*lit", true),
        ("alit", false),
    ] {
        publisher.command(&format!("PUBLISH {channel} {channel}"), "CONFIRMED");
        if delivered {
            client.expect_line(channel.as_bytes());
        }
    }
    client.command("PING", "PONG");
}

#[test]
fn publish_payload_rules() {
    let server = Server::start(&[]);
    let mut client = server.connect();
    let mut publisher = server.connect();
    client.command("SUBSCRIBE ch", "CONFIRMED");
    publisher.command("PUBLISH ch two  spaces ", "CONFIRMED");
    publisher.command("PUBLISH ch", "CONFIRMED");
    publisher.command("PUBLISH   ch  lead", "CONFIRMED");
    client.expect_line(b"two  spaces ");
    client.expect_line(b"");
    client.expect_line(b" lead");
    publisher.command("PUBLISH", "ERR wrong number of arguments for 'publish'");
    publisher.command("PUBLISH nobody-listens x", "CONFIRMED");
}

#[test]
fn publish_can_be_forbidden() {
    let server = Server::start(&["--deny-publish", "true"]);
    let mut client = server.connect();
    client.command("PUBLISH updates x", "ERR forbidden");
    client.command("PING", "PONG");
}

#[test]
fn ping_hello_quit() {
    let server = Server::start(&[]);
    let mut client = server.connect();
    client.command("PING", "PONG");
    client.command("ping hello there", "PONG hello there");
    client.command("HELLO 1", "CONFIRMED");
    client.command("HELLO 2", "CONFIRMED");
    client.command("HELLO 4", "ERR unsupported protocol version");
    client.command("HELLO", "ERR wrong number of arguments for 'hello'");
    client.command("QUIT", "BYE");
    client.expect_eof();
}

#[test]
fn invalid_names_are_refused() {
    let server = Server::start(&[]);
    let mut client = server.connect();
    let long = "x".repeat(257);
    client.command(&format!("SUBSCRIBE {long}"), "ERR invalid channel");
    client.command(&format!("SUBSCRIBE {}", &long[1..]), "CONFIRMED");
    client.send(b"SUBSCRIBE bad\x01name\r\n");
    client.expect_line(b"ERR invalid channel");
    client.command("PUBLISH \x7f x", "ERR invalid channel");
    client.command("PING", "PONG");
}

#[test]
fn version_2_pushes_and_patterns_deliver_once_per_subscription() {
    let server = Server::start(&[]);
    let mut client = server.connect_v2();
    let mut publisher = server.connect();
    client.command("SUBSCRIBE news.eu", "CONFIRMED");
    client.command("PSUBSCRIBE news.*", "CONFIRMED");
    publisher.command("PUBLISH news.eu hi", "CONFIRMED");
    // Once by name, once by pattern (Redis's rule), in that order.
    assert_eq!(client.push_v2(), (None, b"news.eu".to_vec(), b"hi".to_vec()));
    assert_eq!(client.push_v2(), (Some(b"news.*".to_vec()), b"news.eu".to_vec(), b"hi".to_vec()));
    client.command("HELLO 1", "CONFIRMED");
    publisher.command("PUBLISH news.eu back to v1", "CONFIRMED");
    client.expect_line(b"back to v1");
    client.expect_line(b"back to v1");
}

#[test]
fn too_many_subscriptions() {
    let server = Server::start(&["--max-subscriptions", "2"]);
    let mut client = server.connect();
    client.send(b"SUBSCRIBE a b c\r\n");
    client.expect_line(b"CONFIRMED");
    client.expect_line(b"CONFIRMED");
    client.expect_line(b"ERR too many subscriptions");
    client.command("PSUBSCRIBE p*", "ERR too many subscriptions");
    client.command("UNSUBSCRIBE a", "CONFIRMED");
    client.command("PSUBSCRIBE p*", "CONFIRMED");
}

#[test]
fn connection_limit() {
    let server = Server::start(&["--max-connections", "2"]);
    let mut first = server.connect();
    let mut second = server.connect();
    first.command("PING", "PONG");
    second.command("PING", "PONG");
    let mut third = server.connect();
    third.expect_line(b"ERR server full");
    third.expect_eof();
    second.command("QUIT", "BYE");
    second.expect_eof();
    // The slot is free again once the server has closed the second one; the
    // server may need a moment to notice, so ask until it says yes.
    first.command("PING", "PONG");
    let admitted = (0..10_000).find_map(|_| {
        let mut client = server.connect();
        client.send(b"PING\r\n");
        (client.line() == b"PONG").then_some(client)
    });
    admitted.expect("a slot was freed").command("PING", "PONG");
}
