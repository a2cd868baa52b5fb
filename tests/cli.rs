//! The command line: `crier client`, `crier sub`, `crier pub`, configuration
//! through flags, environment and file, and a clean shutdown on signals.

mod common;
use common::Server;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

fn crier() -> Command {
    Command::new(env!("CARGO_BIN_EXE_crier"))
}

#[test]
fn the_tour_with_sub_and_pub() {
    let server = Server::start(&[]);
    let addr = server.addr.to_string();
    let mut sub = crier()
        .args(["sub", "updates", "--pattern", "scores.*", "--addr", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = BufReader::new(sub.stderr.take().unwrap()).lines();
    assert!(said.next().unwrap().unwrap().contains("subscribed to 2 channels and patterns"));

    for (channel, message) in [("updates", "Goal! 1-0"), ("scores.eu", "2-1 für"), ("other", "x")]
    {
        let status = crier().args(["pub", channel, message, "--addr", &addr]).status().unwrap();
        assert!(status.success());
    }
    let mut printed = BufReader::new(sub.stdout.take().unwrap()).lines();
    assert_eq!(printed.next().unwrap().unwrap(), "updates Goal! 1-0");
    assert_eq!(printed.next().unwrap().unwrap(), "scores.eu 2-1 für");
    sub.kill().unwrap();
    sub.wait().unwrap();
}

#[test]
fn pub_reads_lines_from_stdin() {
    let server = Server::start(&[]);
    let mut subscriber = server.connect();
    subscriber.command("SUBSCRIBE feed", "CONFIRMED");
    let mut publisher = crier()
        .args(["pub", "feed", "-", "--addr", &server.addr.to_string()])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    publisher.stdin.take().unwrap().write_all(b"one\ntwo words\r\nthree\n").unwrap();
    assert!(publisher.wait().unwrap().success());
    for line in ["one", "two words", "three"] {
        subscriber.expect_line(line.as_bytes());
    }
}

#[test]
fn pub_reports_errors() {
    let server = Server::start(&["--deny-publish", "true"]);
    let output =
        crier().args(["pub", "feed", "x", "--addr", &server.addr.to_string()]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("ERR forbidden"));

    let output = crier().args(["pub", "feed", "x", "--addr", "127.0.0.1:1"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot connect to crier"));
}

#[test]
fn the_interactive_client_in_a_pipe() {
    let server = Server::start(&[]);
    let mut subscriber = server.connect();
    subscriber.command("SUBSCRIBE", "CONFIRMED");
    let mut client = crier()
        .args(["client", &server.addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    client
        .stdin
        .take()
        .unwrap()
        .write_all(b"HELLO 2\nSUBSCRIBE\nPUBLISH updates a\xffb\nFOO\nQUIT\n")
        .unwrap();
    let output = client.wait_with_output().unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    // The push and the PUBLISH reply race on the wire; everything else is ordered.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..2], ["CONFIRMED", "CONFIRMED"]);
    let mut middle = lines[2..4].to_vec();
    middle.sort();
    assert_eq!(middle, ["CONFIRMED", "message updates: a\\xffb"]);
    assert_eq!(lines[4..], ["UNKNOWN COMMAND", "BYE"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("connection closed by server"));
    subscriber.expect_line(b"a\xffb");
}

#[test]
fn settings_from_env_and_config_file() {
    let dir = std::env::temp_dir().join(format!("crier-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("crier.toml");
    std::fs::write(&file, "default-channel = \"from-file\"\nmax-subscriptions = 1\n").unwrap();

    let server = Server::start_with_env(
        &["--config", file.to_str().unwrap()],
        &[("CRIER_MAX_SUBSCRIPTIONS", "2")],
    );
    let mut client = server.connect();
    client.command("SUBSCRIBE", "CONFIRMED");
    client.command("SUBSCRIBE from-file", "ALREADY SUBSCRIBED");
    client.command("SUBSCRIBE second", "CONFIRMED");
    client.command("SUBSCRIBE third", "ERR too many subscriptions");

    std::fs::write(&file, "max-pendin = 1\n").unwrap();
    let output = crier().args(["serve", "--config", file.to_str().unwrap()]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown field `max-pendin`"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_settings_are_refused_with_one_line() {
    for args in [
        ["--max-line", "0"].as_slice(),
        &["--default-channel", "two words"],
        &["--listen", "nowhere"],
        &["--redis", "http://example"],
        &["--redis-cluster", "http://example"],
        &["--redis-cluster", "redis://127.0.0.1:1/2"],
    ] {
        let output = crier().arg("serve").args(args).output().unwrap();
        assert!(!output.status.success(), "{args:?} accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.trim().lines().count() <= 3, "{args:?}: {stderr}");
    }
    // One backend: a Redis or a cluster, not both.
    let both =
        ["serve", "--redis", "redis://127.0.0.1:1", "--redis-cluster", "redis://127.0.0.1:2"];
    let output = crier().args(both).output().unwrap();
    assert!(!output.status.success(), "--redis and --redis-cluster accepted together");
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot be used with"));
}

#[test]
fn sigterm_and_sigint_shut_down_cleanly() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut server = Server::start(&[]);
        let mut client = server.connect();
        client.command("SUBSCRIBE", "CONFIRMED");
        let status = server.stop_with(signal);
        assert!(status.success(), "exit status {status}");
        let mut rest = Vec::new();
        let _ = client.stream().read_to_end(&mut rest);
        assert!(rest.is_empty());
    }
}

#[test]
fn an_empty_secret_file_is_refused_rather_than_turning_auth_off() {
    let path = std::env::temp_dir().join(format!("crier-empty-secret-{}", std::process::id()));
    std::fs::write(&path, "\n  \n").expect("a file");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_crier"))
        .args(["serve", "--listen", "127.0.0.1:0", "--no-http", "--auth-hmac-secret-file"])
        .arg(&path)
        .output()
        .expect("run crier");
    let _ = std::fs::remove_file(&path);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no secret in the file"), "{stderr}");
}

#[test]
fn the_interactive_client_shows_version_3_ids() {
    let server = Server::start(&["--history-size", "10"]);
    let mut client = crier()
        .args(["client", &server.addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run crier client");
    let mut stdin = client.stdin.take().expect("stdin");
    stdin.write_all(b"HELLO 3\nSUBSCRIBE news\n").expect("send");
    let mut out = std::io::BufReader::new(client.stdout.take().expect("stdout"));
    let mut line = String::new();
    use std::io::BufRead;
    for _ in 0..2 {
        line.clear();
        out.read_line(&mut line).expect("a reply");
    }
    let id = line.trim().trim_start_matches("CONFIRMED ").to_string();
    let (epoch, offset) = id.split_once(':').expect("an id");
    assert_eq!(offset, "0");
    let mut publisher = server.connect();
    publisher.command("PUBLISH news goal", "CONFIRMED");
    line.clear();
    out.read_line(&mut line).expect("the message");
    assert_eq!(line, format!("message news [{epoch}:1]: goal\n"));
    drop(stdin);
    let _ = client.wait();
}
