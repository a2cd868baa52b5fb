//! Tokens and permissions (§8) over real sockets, on every transport.

mod common;

use common::keys::{Keys, SECRET, hmac_token, now_plus};
use common::web::{self, Sse, Ws};
use common::{Client, Server};
use jsonwebtoken::Algorithm;
use serde_json::json;

fn hmac_server(extra: &[&str]) -> Server {
    let mut args = vec!["--auth-hmac-secret", SECRET];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn claims(subscribe: &[&str], publish: &[&str]) -> serde_json::Value {
    json!({"sub": "alice", "exp": now_plus(3600), "subscribe": subscribe, "publish": publish})
}

#[test]
fn every_algorithm_verifies_with_its_key() {
    let keys = Keys::create();
    let public = keys.public_keys();
    let mut args = vec!["--auth-hmac-secret", SECRET];
    for key in &public {
        args.extend_from_slice(&["--auth-public-key", key]);
    }
    let server = Server::start(&args);
    use Algorithm::*;
    for alg in [HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA]
    {
        let token = keys.mint(alg, &claims(&["news.*"], &[]));
        let mut client = server.connect();
        client.command("SUBSCRIBE news.eu", "ERR forbidden");
        client.command(&format!("AUTH {token}"), "CONFIRMED");
        client.command("SUBSCRIBE news.eu", "CONFIRMED");
    }
}

#[test]
fn bad_tokens_are_refused_and_change_nothing() {
    let keys = Keys::create();
    let public = keys.public_keys();
    // Only public keys: an HMAC token must not verify (key confusion).
    let server = Server::start(&["--auth-public-key", &public[0], "--anonymous-subscribe", "open"]);
    let good = keys.mint(Algorithm::RS256, &claims(&["*"], &[]));
    let rsa_public = std::fs::read(&public[0]).expect("the public key");
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims(&["*"], &[]),
        &jsonwebtoken::EncodingKey::from_secret(&rsa_public),
    )
    .expect("a token");
    let none = {
        use base64::Engine;
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims(&["*"], &[])))
    };
    let mut tampered = good.clone().into_bytes();
    let last = tampered.len() - 5;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ASCII");
    let expired = keys.mint(Algorithm::RS256, &json!({"sub": "a", "exp": now_plus(-10)}));
    // Within the library's whole-second leeway, but past the moment the
    // connection would be ended: refused, not confirmed and then cut.
    let just_expired = keys.mint(Algorithm::RS256, &json!({"sub": "a", "exp": now_plus(-1)}));
    let early = keys.mint(Algorithm::RS256, &json!({"sub": "a", "nbf": now_plus(600)}));
    let nobody = keys.mint(Algorithm::RS256, &json!({"exp": now_plus(600)}));
    let huge = keys.mint(Algorithm::RS256, &json!({"sub": "a", "pad": "x".repeat(9000)}));
    let mut client = server.connect();
    for bad in [
        confused.as_str(),
        none.as_str(),
        tampered.as_str(),
        "not.a.token",
        "%%%.@@@.!!!",
        expired.as_str(),
        just_expired.as_str(),
        early.as_str(),
        nobody.as_str(),
        huge.as_str(),
    ] {
        client.command(&format!("AUTH {bad}"), "ERR invalid token");
        client.command("SUBSCRIBE secret", "ERR forbidden");
        client.command("SUBSCRIBE open", "CONFIRMED");
        client.command("UNSUBSCRIBE open", "CONFIRMED");
    }
    client.command(&format!("AUTH {good}"), "CONFIRMED");
    client.command("SUBSCRIBE secret", "CONFIRMED");
}

#[test]
fn permissions_apply_per_name_and_a_new_token_replaces_them() {
    let server = hmac_server(&["--anonymous-subscribe", "public.*"]);
    let mut client = server.connect();
    client.send(b"SUBSCRIBE public.a private.b public.c\r\n");
    client.expect_line(b"CONFIRMED");
    client.expect_line(b"ERR forbidden");
    client.expect_line(b"CONFIRMED");
    client.command("PUBLISH public.a hi", "ERR forbidden");
    client.command("PSUBSCRIBE p*", "ERR forbidden");
    // A token for news and chat: the public subscriptions it does not allow end.
    let token = hmac_token(&claims(&["news.*", "public.a"], &["chat.*"]));
    client.command(&format!("AUTH {token}"), "CONFIRMED");
    client.command("UNSUBSCRIBE public.c", "ALREADY UNSUBSCRIBED");
    client.command("UNSUBSCRIBE public.a", "CONFIRMED");
    client.command("SUBSCRIBE news.eu", "CONFIRMED");
    client.command("PSUBSCRIBE news.sport.*", "CONFIRMED");
    client.command("PSUBSCRIBE news*", "ERR forbidden");
    client.command("PSUBSCRIBE *", "ERR forbidden");
    client.command("PUBLISH news.eu x", "ERR forbidden");
    client.command("PUBLISH chat.room hello", "CONFIRMED");
}

#[test]
fn auth_without_keys_is_refused_plainly() {
    let server = Server::start(&[]);
    let mut client = server.connect();
    client.command("AUTH whatever", "ERR auth disabled");
    client.command("SUBSCRIBE anything", "CONFIRMED");
}

#[test]
fn an_expired_token_ends_the_connection_unless_renewed() {
    let server = hmac_server(&[]);
    let short = hmac_token(&json!({"sub": "a", "exp": now_plus(2), "subscribe": ["*"]}));
    let long = hmac_token(&json!({"sub": "a", "exp": now_plus(3600), "subscribe": ["*"]}));
    let later = hmac_token(&json!({"sub": "a", "exp": now_plus(3), "subscribe": ["*"]}));
    // Renewed before its expiry: stays.
    let mut renewed = server.connect();
    renewed.command(&format!("AUTH {short}"), "CONFIRMED");
    renewed.command(&format!("AUTH {long}"), "CONFIRMED");
    let mut expiring = server.connect();
    expiring.command(&format!("AUTH {short}"), "CONFIRMED");
    expiring.expect_line(b"ERR token expired");
    expiring.expect_eof();
    // Over WebSocket: the error, then close 1008.
    let mut ws = Ws::open(server.http(), &format!("/ws?token={later}")).expect("a WebSocket");
    ws.command("SUBSCRIBE x", "CONFIRMED");
    ws.expect_text("ERR token expired");
    assert_eq!(ws.expect_close(), 1008);
    // The renewed connection outlived both expiries.
    renewed.command("PING", "PONG");
}

#[test]
fn an_sse_stream_ends_when_its_token_expires() {
    let server = hmac_server(&[]);
    let token = hmac_token(&json!({"sub": "a", "exp": now_plus(2), "subscribe": ["*"]}));
    let mut sse = Sse::open(server.http(), &format!("channel=a&token={token}"));
    assert_eq!(sse.status, 200);
    assert_eq!(sse.event(), None, "the stream ends at the token's expiry");
}

#[test]
fn the_web_side_takes_tokens_in_the_url_or_the_authorization_header() {
    let server = hmac_server(&["--anonymous-subscribe", "public"]);
    let http = server.http();
    let token = hmac_token(&claims(&["news.*"], &["news.*"]));
    // WebSocket: ?token= at the upgrade.
    let refused = Ws::open(http, "/ws?token=garbage").err();
    assert_eq!(refused, Some((401, "ERR invalid token\n".to_string())));
    let mut ws = Ws::open(http, &format!("/ws?token={token}")).expect("a WebSocket");
    ws.command("SUBSCRIBE news.eu", "CONFIRMED");
    ws.command("SUBSCRIBE other", "ERR forbidden");
    // SSE: the header or the URL; a channel not allowed is 401 without a
    // token, 403 with one.
    let mut sse = Sse::open_with(http, "channel=news.eu", Some(&token));
    assert_eq!(sse.status, 200);
    let by_url = Sse::open(http, &format!("channel=news.us&token={token}"));
    assert_eq!(by_url.status, 200);
    let cases = [
        (Sse::open(http, "channel=news.eu"), 401, "ERR forbidden\n"),
        (Sse::open_with(http, "channel=secret", Some(&token)), 403, "ERR forbidden\n"),
        (Sse::open_with(http, "channel=news.eu", Some("bad")), 401, "ERR invalid token\n"),
    ];
    for (sse, status, body) in cases {
        assert_eq!((sse.status, sse.error_body.as_str()), (status, body));
    }
    assert_eq!(Sse::open(http, "channel=public").status, 200, "anonymous where allowed");
    // POST /publish: the bearer token's publish rights.
    let answer = web::post_with_token(http, "/publish?channel=news.eu", &token, b"hello");
    assert_eq!(answer.status, 200);
    assert_eq!(sse.json()["data"], "hello");
    ws.expect_text("hello");
    let answers = [
        (web::post_with_token(http, "/publish?channel=other", &token, b"x"), 403),
        (web::post(http, "/publish?channel=news.eu", b"x"), 401),
        (web::post_with_token(http, "/publish?channel=news.eu", "bad", b"x"), 401),
    ];
    for (answer, status) in answers {
        assert_eq!(answer.status, status, "{}", answer.text());
    }
}

#[test]
fn ten_thousand_bad_auths_cost_nothing_lasting() {
    let server = hmac_server(&["--anonymous-subscribe", "*", "--anonymous-publish", "news"]);
    let mut attacker = server.connect();
    let mut bystander = server.connect();
    bystander.command("SUBSCRIBE news", "CONFIRMED");
    let bad = hmac_token(&claims(&["*"], &[])).replace('.', "x");
    let round = |attacker: &mut Client| {
        for _ in 0..10 {
            let burst = format!("AUTH {bad}\r\n").repeat(1000);
            attacker.send(burst.as_bytes());
            for _ in 0..1000 {
                attacker.expect_line(b"ERR invalid token");
            }
        }
    };
    round(&mut attacker);
    let after_first = server.rss_kib();
    round(&mut attacker);
    let after_second = server.rss_kib();
    assert!(
        after_second <= after_first + 1024,
        "memory grew from {after_first} KiB to {after_second} KiB over 10,000 more bad AUTHs"
    );
    // The others are served all along.
    let mut publisher = server.connect();
    publisher.command("PUBLISH news still here", "CONFIRMED");
    bystander.expect_line(b"still here");
    attacker.command("PING", "PONG");
}

#[test]
fn crier_token_mints_what_the_server_accepts() {
    let server = hmac_server(&[]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_crier"))
        .args(["token", "--sub", "bob", "--subscribe", "alerts.*", "--publish", "alerts.*"])
        .args(["--ttl", "10m", "--auth-hmac-secret", SECRET])
        .output()
        .expect("run crier token");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).expect("UTF-8");
    let mut client = server.connect();
    client.command(&format!("AUTH {}", token.trim()), "CONFIRMED");
    client.command("SUBSCRIBE alerts.fire", "CONFIRMED");
    client.command("SUBSCRIBE other", "ERR forbidden");
    // The CLI clients present it too.
    let published = std::process::Command::new(env!("CARGO_BIN_EXE_crier"))
        .args(["pub", "alerts.fire", "smoke", "--addr", &server.addr.to_string()])
        .args(["--token", token.trim()])
        .output()
        .expect("run crier pub");
    assert!(published.status.success(), "{}", String::from_utf8_lossy(&published.stderr));
    client.expect_line(b"smoke");
}

#[test]
fn keys_rotate_through_a_secret_file_and_a_jwk_set() {
    use base64::Engine;
    let keys = Keys::create();
    // Two HMAC secrets at once: tokens of either verify.
    let old = "an old secret that is also at least 32 bytes";
    let secrets = keys.dir.join("secrets");
    std::fs::write(&secrets, format!("{SECRET}\n  {old}  \n\n")).expect("the secret file");
    // A JWK set holding the Ed25519 public key.
    let to_der = ["pkey", "-pubin", "-in", "ed25519.pub", "-outform", "DER", "-out", "ed25519.der"];
    common::openssl(&keys.dir, &to_der);
    let der = std::fs::read(keys.dir.join("ed25519.der")).expect("the DER key");
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&der[der.len() - 32..]);
    let jwks = keys.dir.join("jwks.json");
    let set = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA"}]});
    std::fs::write(&jwks, set.to_string()).expect("the JWK set");
    let server = Server::start(&[
        "--auth-hmac-secret-file",
        secrets.to_str().expect("UTF-8"),
        "--auth-jwks",
        jwks.to_str().expect("UTF-8"),
    ]);
    let by_old = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims(&["a"], &[]),
        &jsonwebtoken::EncodingKey::from_secret(old.as_bytes()),
    )
    .expect("a token");
    // Other claims are ignored, `aud` included, and `exp` may have a fraction.
    let with_aud =
        json!({"sub": "a", "aud": "someone", "exp": now_plus(60) as f64 + 0.5, "subscribe": ["a"]});
    for token in [
        hmac_token(&claims(&["a"], &[])),
        by_old,
        keys.mint(Algorithm::EdDSA, &claims(&["a"], &[])),
        hmac_token(&with_aud),
    ] {
        let mut client = server.connect();
        client.command(&format!("AUTH {token}"), "CONFIRMED");
        client.command("SUBSCRIBE a", "CONFIRMED");
    }
}

#[test]
fn sighup_without_tls_keeps_the_server_running() {
    let server = Server::start(&[]);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    server.wait_log("SIGHUP: nothing to reload");
    let mut client = server.connect();
    client.command("PING", "PONG");
    let mut ws = Ws::open(server.http(), "/ws?cache=123").expect("unknown parameters are ignored");
    ws.command("PING", "PONG");
}

#[test]
fn secrets_and_tokens_never_reach_the_log() {
    let token = hmac_token(&claims(&["a"], &[]));
    let server = Server::start_with_env(&["--auth-hmac-secret", SECRET], &[("CRIER_LOG", "debug")]);
    let mut client = server.connect();
    client.command(&format!("AUTH {token}"), "CONFIRMED");
    let forged = token.replace('.', "x");
    client.command(&format!("AUTH {forged}"), "ERR invalid token");
    client.command("QUIT", "BYE");
    client.expect_eof();
    let closed = server.wait_log("reason=client_quit");
    let log = server.log_so_far();
    for secret in [SECRET, token.as_str(), forged.as_str()] {
        assert!(!log.contains(secret), "the log holds a secret:\n{log}");
    }
    assert!(log.contains("token refused"), "the refusal is logged (without the token)");
    assert!(!closed.is_empty());
}
