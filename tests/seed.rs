//! The seed protocol, byte for byte: a client written for the Tornado tutorial
//! server works unchanged.

mod common;
use common::Server;

/// The seed's session: subscribe, receive, unsubscribe, unknown commands.
#[test]
fn the_seed_session() {
    let server = Server::start(&[]);
    let mut subscriber = server.connect();
    let mut publisher = server.connect();

    subscriber.command("SUBSCRIBE", "CONFIRMED");
    subscriber.command("SUBSCRIBE", "ALREADY SUBSCRIBED");
    publisher.command("PUBLISH updates Goal! 1-0", "CONFIRMED");
    subscriber.expect_line(b"Goal! 1-0");
    subscriber.command("UNSUBSCRIBE", "CONFIRMED");
    subscriber.command("UNSUBSCRIBE", "ALREADY UNSUBSCRIBED");
    subscriber.command("HELLO WORLD", "ERR unsupported protocol version");
    subscriber.command("GIMME", "UNKNOWN COMMAND");
}

/// Use case 1: nothing is delivered after UNSUBSCRIBE.
#[test]
fn no_delivery_after_unsubscribe() {
    let server = Server::start(&[]);
    let mut subscriber = server.connect();
    let mut publisher = server.connect();
    subscriber.command("SUBSCRIBE", "CONFIRMED");
    subscriber.command("UNSUBSCRIBE", "CONFIRMED");
    publisher.command("PUBLISH updates lost", "CONFIRMED");
    // PONG is the next thing it reads: the message never came.
    subscriber.command("PING", "PONG");
}

/// Use case 2: only subscribers receive.
#[test]
fn only_subscribers_receive() {
    let server = Server::start(&[]);
    let mut subscriber = server.connect();
    let mut bystander = server.connect();
    let mut publisher = server.connect();
    subscriber.command("SUBSCRIBE", "CONFIRMED");
    bystander.command("PING", "PONG");
    publisher.command("PUBLISH updates score", "CONFIRMED");
    subscriber.expect_line(b"score");
    bystander.command("PING", "PONG");
}

/// Use case 3: an unknown command is answered and the connection stays open.
#[test]
fn unknown_commands_keep_the_connection() {
    let server = Server::start(&[]);
    let mut client = server.connect();
    client.command("FLY ME TO THE MOON", "UNKNOWN COMMAND");
    client.command("", "UNKNOWN COMMAND");
    client.command("SUBSCRIBE", "CONFIRMED");
    let mut publisher = server.connect();
    publisher.command("PUBLISH updates still here", "CONFIRMED");
    client.expect_line(b"still here");
}

/// `--default-channel` changes what a bare SUBSCRIBE means.
#[test]
fn default_channel_is_configurable() {
    let server = Server::start(&["--default-channel", "scores"]);
    let mut subscriber = server.connect();
    let mut publisher = server.connect();
    subscriber.command("SUBSCRIBE", "CONFIRMED");
    subscriber.command("SUBSCRIBE scores", "ALREADY SUBSCRIBED");
    publisher.command("PUBLISH updates nope", "CONFIRMED");
    publisher.command("PUBLISH scores yes", "CONFIRMED");
    subscriber.expect_line(b"yes");
}
