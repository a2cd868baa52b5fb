//! Framing and bad input: binary-safe version 2 pushes, odd bytes, dribbled
//! commands, over-long lines, abrupt disconnects. None may hurt anyone else.

mod common;
use common::Server;
use std::io::Write;

#[test]
fn version_2_payloads_are_byte_exact() {
    let server = Server::start(&[]);
    let mut subscriber = server.connect_v2();
    subscriber.command("SUBSCRIBE bin", "CONFIRMED");
    let mut publisher = server.connect();
    let payloads: [&[u8]; 5] =
        [b"with spaces  ", b"cr\rinside", b"\xff\xfe not utf-8 \xc3", b"nul\x00byte", b""];
    for payload in payloads {
        publisher.send(&[b"PUBLISH bin ".as_slice(), payload, b"\r\n"].concat());
        publisher.expect_line(b"CONFIRMED");
        assert_eq!(subscriber.push_v2(), (None, b"bin".to_vec(), payload.to_vec()));
    }
}

#[test]
fn names_and_commands_are_bytes() {
    let server = Server::start(&[]);
    let mut subscriber = server.connect_v2();
    subscriber.send(b"SUBSCRIBE caf\xc3\xa9 \xff\xfe\r\n");
    subscriber.expect_line(b"CONFIRMED");
    subscriber.expect_line(b"CONFIRMED");
    let mut publisher = server.connect();
    publisher.send(b"PUBLISH \xff\xfe \x00\xff\r\n\xc3\x28\r\nPUB\x00LISH x y\r\n");
    publisher.expect_line(b"CONFIRMED");
    publisher.expect_line(b"UNKNOWN COMMAND");
    publisher.expect_line(b"UNKNOWN COMMAND");
    assert_eq!(subscriber.push_v2(), (None, b"\xff\xfe".to_vec(), b"\x00\xff".to_vec()));
}

#[test]
fn a_command_dribbled_byte_by_byte() {
    let server = Server::start(&[]);
    let mut client = server.connect();
    for byte in b"SUBSCRIBE slow\r\nPING\n" {
        client.send(&[*byte]);
        client.stream().flush().unwrap();
    }
    client.expect_line(b"CONFIRMED");
    client.expect_line(b"PONG");
}

#[test]
fn thousands_of_empty_lines() {
    let server = Server::start(&[]);
    let mut client = server.connect();
    client.send(&b"\r\n".repeat(5_000));
    client.send(&b"\n".repeat(5_000));
    for _ in 0..10_000 {
        client.expect_line(b"UNKNOWN COMMAND");
    }
    client.command("PING", "PONG");
}

#[test]
fn an_over_long_line_closes_only_that_connection() {
    let server = Server::start(&["--max-line", "1024"]);
    let mut bystander = server.connect();
    bystander.command("SUBSCRIBE", "CONFIRMED");
    let mut client = server.connect();
    client.command(&format!("PING {}", "x".repeat(1019)), &format!("PONG {}", "x".repeat(1019)));
    client.send(format!("PUBLISH updates {}\r\n", "y".repeat(100_000)).as_bytes());
    client.expect_line(b"ERR line too long");
    client.expect_eof();

    let mut publisher = server.connect();
    publisher.command("PUBLISH updates fine", "CONFIRMED");
    bystander.expect_line(b"fine");
}

#[test]
fn the_default_line_limit_is_64_kib() {
    let server = Server::start(&[]);
    let mut client = server.connect();
    let fits = "x".repeat(64 * 1024 - "PUBLISH a ".len());
    client.command(&format!("PUBLISH a {fits}"), "CONFIRMED");
    client.send(format!("PUBLISH a {fits}x\r\n").as_bytes());
    client.expect_line(b"ERR line too long");
    client.expect_eof();
}

#[test]
fn abrupt_disconnects_leave_the_server_serving() {
    let server = Server::start(&[]);
    for i in 0..50 {
        let mut client = server.connect();
        match i % 3 {
            0 => client.send(b"SUBSCRIBE updates"),
            1 => client.send(b"SUBSCRIBE updates\r\nPUBLISH updates half"),
            _ => {
                client.command("SUBSCRIBE", "CONFIRMED");
                client.reset_on_close();
            }
        }
    }
    let mut subscriber = server.connect();
    subscriber.command("SUBSCRIBE", "CONFIRMED");
    let mut publisher = server.connect();
    publisher.command("PUBLISH updates alive", "CONFIRMED");
    subscriber.expect_line(b"alive");
}

#[test]
fn replies_flush_after_the_client_half_closes() {
    let server = Server::start(&[]);
    let mut client = server.connect();
    client.send(b"PING\r\nPING again\r\n");
    client.shutdown_write();
    client.expect_line(b"PONG");
    client.expect_line(b"PONG again");
    client.expect_eof();
}
