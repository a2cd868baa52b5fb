//! The live web page in a real headless Chromium: what a person sees and
//! does, checked in the DOM, against a real server.

mod common;

use common::Server;
use common::browser::Browser;
use common::web;
use std::time::Duration;

/// How long the page may take to show something the server has sent.
const WITHIN: Duration = Duration::from_secs(20);

/// The page shows its WebSocket as connected.
const CONNECTED: &str = "document.querySelector('#status')?.textContent === 'connected'";

/// Fills a form field and submits its form, as a person would.
fn fill_and_submit(fields: &[(&str, &str)], form: &str) -> String {
    let mut script = String::new();
    for (selector, value) in fields {
        let value = serde_json::to_string(value).expect("a JSON string");
        script.push_str(&format!(
            "{{ const f = document.querySelector('{selector}'); f.value = {value}; \
             f.dispatchEvent(new Event('input', {{bubbles: true}})); }}\n"
        ));
    }
    script.push_str(&format!("document.querySelector('{form}').requestSubmit(); true"));
    script
}

/// A condition: a message of `channel` holding `data` is on the page.
fn message_shown(channel: &str, data: &str) -> String {
    format!(
        "[...document.querySelectorAll('#messages li.message')].some(li => \
         li.querySelector('.channel')?.textContent === {channel:?} && \
         li.querySelector('.data')?.textContent === {data:?})"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_subscribes_shows_messages_and_publishes() {
    let server = Server::start(&[]);
    let http = server.http();
    let browser = Browser::launch().await;
    let page = browser.open(&format!("http://{http}/")).await;
    page.wait_for(CONNECTED, WITHIN).await;

    // Subscribe through the form, to a channel and to a pattern.
    page.eval(&fill_and_submit(&[("#subscribe-name", "news")], "#subscribe-form")).await;
    page.wait_for(
        "document.querySelector('#subscriptions li.confirmed[data-topic=\"news\"]')",
        WITHIN,
    )
    .await;
    page.eval("document.querySelector('#subscribe-pattern').checked = true").await;
    page.eval(&fill_and_submit(&[("#subscribe-name", "sport.*")], "#subscribe-form")).await;
    page.wait_for(
        "document.querySelector('#subscriptions li.confirmed[data-topic=\"sport.*\"][data-kind=\"pattern\"]')",
        WITHIN,
    )
    .await;

    // A backend publishes with POST /publish: the message appears.
    let published = tokio::task::spawn_blocking(move || {
        let news = web::post(http, "/publish?channel=news", "<b>Goal!</b> 1-0".as_bytes());
        let sport = web::post(http, "/publish?channel=sport.tennis", b"deuce");
        (news.status, sport.status)
    })
    .await
    .expect("publish");
    assert_eq!(published, (200, 200));
    page.wait_for(&message_shown("news", "<b>Goal!</b> 1-0"), WITHIN).await;
    page.wait_for(&message_shown("sport.tennis", "deuce"), WITHIN).await;
    let through = page
        .eval(
            "[...document.querySelectorAll('#messages li.message')]\
             .find(li => li.querySelector('.channel').textContent === 'sport.tennis')\
             .querySelector('.pattern')?.textContent",
        )
        .await;
    assert_eq!(through, "sport.*", "a delivery through a pattern names it");
    let bold = page.eval("document.querySelectorAll('#messages b').length").await;
    assert_eq!(bold, 0, "payloads are shown as text, never as HTML");

    // Publish from the page's form: a TCP subscriber receives it.
    let mut tcp = server.connect();
    tcp.command("SUBSCRIBE chat", "CONFIRMED");
    page.eval(&fill_and_submit(
        &[("#publish-channel", "chat"), ("#publish-data", "typed in the page")],
        "#publish-form",
    ))
    .await;
    let (_tcp, received) = tokio::task::spawn_blocking(move || {
        let line = tcp.line();
        (tcp, line)
    })
    .await
    .expect("read");
    assert_eq!(received, b"typed in the page");
    page.wait_for(
        "/published/.test(document.querySelector('#publish-result').textContent)",
        WITHIN,
    )
    .await;

    // The counters come from /metrics: one WebSocket (the page) and one TCP client.
    page.wait_for("Number(document.querySelector('#stat-connections').textContent) >= 2", WITHIN)
        .await;
    page.wait_for("Number(document.querySelector('#stat-subscriptions').textContent) >= 3", WITHIN)
        .await;

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("page.png");
    page.screenshot(&shot).await;
    assert_eq!(page.errors().await, Vec::<String>::new(), "the page logged errors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_refused_publish() {
    let server = Server::start(&["--deny-publish", "true"]);
    let browser = Browser::launch().await;
    let page = browser.open(&format!("http://{}/", server.http())).await;
    page.wait_for(CONNECTED, WITHIN).await;
    page.eval(&fill_and_submit(
        &[("#publish-channel", "chat"), ("#publish-data", "hello")],
        "#publish-form",
    ))
    .await;
    page.wait_for(
        "document.querySelector('#publish-result').textContent.includes('ERR forbidden')",
        WITHIN,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_uses_a_token_for_its_websocket_and_its_publishes() {
    use common::keys::{SECRET, hmac_token, now_plus};
    let server = Server::start(&["--auth-hmac-secret", SECRET]);
    let token = hmac_token(&serde_json::json!({
        "sub": "page", "exp": now_plus(600), "subscribe": ["news"], "publish": ["news"]
    }));
    let browser = Browser::launch().await;
    let page = browser.open(&format!("http://{}/", server.http())).await;
    page.wait_for(CONNECTED, WITHIN).await;
    // Anonymous: refused.
    page.eval(&fill_and_submit(&[("#subscribe-name", "news")], "#subscribe-form")).await;
    page.wait_for(
        "document.querySelector('#subscriptions li.failed[data-topic=\"news\"]')",
        WITHIN,
    )
    .await;
    // With the token: the page reconnects, subscribes, publishes, receives.
    page.eval(&fill_and_submit(&[("#token", &token)], "#token-form")).await;
    page.wait_for(CONNECTED, WITHIN).await;
    page.eval(&fill_and_submit(&[("#subscribe-name", "news")], "#subscribe-form")).await;
    page.wait_for(
        "document.querySelector('#subscriptions li.confirmed[data-topic=\"news\"]')",
        WITHIN,
    )
    .await;
    page.eval(&fill_and_submit(
        &[("#publish-channel", "news"), ("#publish-data", "signed")],
        "#publish-form",
    ))
    .await;
    page.wait_for(&message_shown("news", "signed"), WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_ids_and_resumes_after_a_drop() {
    let server = Server::start(&["--history-size", "100"]);
    let http = server.http();
    let browser = Browser::launch().await;
    let page = browser.open(&format!("http://{http}/")).await;
    page.wait_for(CONNECTED, WITHIN).await;
    page.eval(&fill_and_submit(&[("#subscribe-name", "live quiet")], "#subscribe-form")).await;
    for topic in ["live", "quiet"] {
        let confirmed = format!("#subscriptions li.confirmed[data-topic=\"{topic}\"]");
        page.wait_for(&format!("document.querySelector('{confirmed}')"), WITHIN).await;
    }
    let post = move |payload: &'static [u8]| {
        tokio::task::spawn_blocking(move || {
            web::post(http, "/publish?channel=live", payload).status
        })
    };
    assert_eq!(post(b"before").await.expect("publish"), 200);
    page.wait_for(&message_shown("live", "before"), WITHIN).await;
    let id = page.eval("document.querySelector('#messages li.message .id')?.textContent").await;
    assert!(id.as_str().is_some_and(|id| id.ends_with(":1")), "the page shows the id: {id}");
    // The connection drops; a message is published meanwhile; the page
    // reconnects and resumes from the last id it saw.
    page.eval("socket.close(); true").await;
    page.wait_for("document.querySelector('#status')?.textContent === 'disconnected'", WITHIN)
        .await;
    assert_eq!(post(b"while away").await.expect("publish"), 200);
    let quiet = tokio::task::spawn_blocking(move || {
        web::post(http, "/publish?channel=quiet", b"first ever").status
    });
    assert_eq!(quiet.await.expect("publish"), 200);
    page.wait_for(&message_shown("live", "while away"), WITHIN).await;
    // A channel that had no message before the drop resumes from the
    // position its SUBSCRIBE was confirmed at (version 3).
    page.wait_for(&message_shown("quiet", "first ever"), WITHIN).await;
    page.wait_for(CONNECTED, WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browsers_event_source_resumes_every_channel_after_its_node_restarts() {
    // History in Redis survives the node: the browser's own EventSource
    // reconnects by itself with its Last-Event-ID header, and gets what
    // both channels missed while the node was down, with no reset.
    let redis = common::Redis::start();
    let url = redis.url();
    let http = format!("127.0.0.1:{}", common::free_port());
    let args = ["--redis", &url, "--history-size", "100", "--http", &http];
    let mut server = Server::start(&args);
    server.wait_log("redis: connected");
    let browser = Browser::launch().await;
    let page = browser.open(&format!("http://{http}/")).await;
    page.eval(
        "window.got = []; window.resets = []; window.opens = 0; \
         const stream = new EventSource('/sse?channel=a&channel=b'); \
         stream.onopen = () => window.opens++; \
         stream.onmessage = e => window.got.push(JSON.parse(e.data).data); \
         stream.addEventListener('reset', e => window.resets.push(e.data)); true",
    )
    .await;
    page.wait_for("window.opens === 1", WITHIN).await;
    let addr = server.http();
    tokio::task::spawn_blocking(move || {
        assert_eq!(web::post(addr, "/publish?channel=a", b"one").status, 200);
        assert_eq!(web::post(addr, "/publish?channel=b", b"two").status, 200);
    })
    .await
    .expect("publish");
    page.wait_for("window.got.length === 2", WITHIN).await;

    // The node goes away; a backend publishes straight into Redis meanwhile.
    server.stop_with(libc::SIGKILL);
    for (channel, payload) in [("a", "three"), ("b", "four")] {
        let (meta, stream) = (format!("crier:{{{channel}}}:m"), format!("crier:{{{channel}}}:s"));
        let reply = redis.command(&[
            b"FCALL",
            b"crier_publish",
            b"2",
            meta.as_bytes(),
            stream.as_bytes(),
            channel.as_bytes(),
            payload.as_bytes(),
            b"100",
            b"3600000",
        ]);
        assert!(reply.starts_with(b"$"), "crier_publish: {}", reply.escape_ascii());
    }
    let restarted = Server::start(&args);
    restarted.wait_log("redis: connected");
    page.wait_for("window.opens === 2 && window.got.length === 4", WITHIN).await;
    let got = page.eval("JSON.stringify([window.got, window.resets])").await;
    assert_eq!(got.as_str(), Some(r#"[["one","two","three","four"],[]]"#));
}
