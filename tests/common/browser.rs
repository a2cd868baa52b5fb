//! A real headless Chromium, driven over the Chrome DevTools Protocol, for
//! testing crier's web page as a person's browser runs it.
//!
//! One WebSocket connection to the browser carries every page, each page on
//! its own flat session (`Target.attachToTarget` with `flatten: true`). A
//! background task reads the socket and routes each answer by its `id` to the
//! command that waits for it, and each event by its `sessionId` to that page's
//! state (console errors, exceptions, finished loads).
//!
//! Every wait has an upper bound, so a broken page fails its test instead of
//! hanging it; nothing sleeps to wait for something that can be awaited.
//!
//! ```ignore
//! let browser = Browser::launch().await;
//! let page = browser.open(&format!("http://{}/", server.addr)).await;
//! page.wait_for("document.querySelector('#status')?.textContent === 'connected'", DEADLINE).await;
//! assert_eq!(page.eval("1 + 1").await, 2);
//! assert!(page.errors().await.is_empty());
//! ```

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

/// The browser used when `$CRIER_TEST_CHROMIUM` is not set (Debian's package).
pub const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

/// Flags Chromium is started with, before `--user-data-dir=...` and the URL.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--remote-debugging-port=0",
    "--window-size=1280,900",
    // Several pages may be open at once, and only one tab of a window is in
    // front: keep the others' timers and rendering running at full speed.
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
];

/// Upper bound on starting the browser, on a page load, and on any command.
const LIMIT: Duration = Duration::from_secs(30);

/// Extra time `wait_for` gives the page to report its own timeout before the
/// Rust side gives up on it (a page stuck in a loop never reports).
const GRACE: Duration = Duration::from_secs(5);

/// How much of `document.body.innerText` a failed `wait_for` shows.
const BODY_SHOWN: usize = 2000;

/// A headless Chromium with its own fresh profile, killed (and the profile
/// removed) on drop.
pub struct Browser {
    cdp: Arc<Connection>,
    process: Process,
}

/// A tab of a [`Browser`], closed on drop.
pub struct Page {
    cdp: Arc<Connection>,
    session_id: String,
    target_id: String,
    state: Arc<Session>,
}

impl Browser {
    /// Starts headless Chromium (`$CRIER_TEST_CHROMIUM`, or
    /// `/usr/bin/chromium`) and connects to it; panics with the reason if it
    /// is missing or does not start within 30 s.
    ///
    /// The connection is served by a task on the current tokio runtime (either
    /// flavour): launch one browser per test, since a `#[tokio::test]`'s
    /// runtime ends with its test.
    pub async fn launch() -> Browser {
        let program = std::env::var_os("CRIER_TEST_CHROMIUM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CHROMIUM));
        assert!(
            program.is_file(),
            "no Chromium at {}: these tests need a headless Chromium \
             (`apt-get install chromium`, or point $CRIER_TEST_CHROMIUM at one)",
            program.display()
        );

        let profile = fresh_profile_dir();
        let mut command = Command::new(&program);
        command
            .args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so that drop kills its helpers too.
            .process_group(0);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&profile);
                panic!("could not start {}: {error}", program.display());
            }
        };
        let mut process = Process { child, profile, stopped: false };

        // Read stderr up to the "DevTools listening on ws://..." line, then
        // keep draining it so that the pipe never fills and blocks Chromium.
        let stderr = process.child.stderr.take().expect("Chromium's stderr was not piped");
        let (url_tx, url_rx) = oneshot::channel::<String>();
        let early = Arc::new(Mutex::new(Vec::<String>::new()));
        let early_log = Arc::clone(&early);
        std::thread::Builder::new()
            .name("chromium-stderr".into())
            .spawn(move || {
                let mut url_tx = Some(url_tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(tx) = url_tx.take() {
                        if let Some(at) = line.find("ws://") {
                            let _ = tx.send(line[at..].trim().to_string());
                        } else {
                            url_tx = Some(tx);
                            early_log.lock().expect("Chromium stderr log poisoned").push(line);
                        }
                    }
                }
            })
            .expect("could not start the thread that reads Chromium's stderr");

        let url = match timeout(LIMIT, url_rx).await {
            Ok(Ok(url)) => url,
            outcome => {
                let why = if outcome.is_err() {
                    format!("did not print its DevTools URL within {LIMIT:?}")
                } else {
                    format!(
                        "exited ({:?}) before printing its DevTools URL",
                        process.child.try_wait()
                    )
                };
                let log = early.lock().expect("Chromium stderr log poisoned").join("\n");
                panic!("Chromium ({}) {why}; its stderr:\n{log}", program.display());
            }
        };

        let (socket, _) = match timeout(LIMIT, tokio_tungstenite::connect_async(url.as_str())).await
        {
            Ok(Ok(connected)) => connected,
            Ok(Err(error)) => panic!("could not connect to Chromium at {url}: {error}"),
            Err(_) => panic!("connecting to Chromium at {url} took over {LIMIT:?}"),
        };
        let (outgoing, to_send) = mpsc::unbounded_channel();
        let cdp = Arc::new(Connection {
            next_id: AtomicU64::new(1),
            outgoing: Mutex::new(Some(outgoing)),
            pending: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
        });
        tokio::spawn(pump(socket, to_send, Arc::clone(&cdp)));
        Browser { cdp, process }
    }

    /// Opens a new tab at `url` and waits (at most 30 s) for its load event.
    pub async fn open(&self, url: &str) -> Page {
        let created = self
            .cdp
            .call(
                None,
                "Target.createTarget",
                // A window of its own: a tab behind another would be hidden,
                // with no animation frames and throttled timers.
                json!({ "url": "about:blank", "newWindow": true }),
                LIMIT,
            )
            .await
            .unwrap_or_else(|error| panic!("could not open a tab: {error}"));
        let target_id = str_field(&created, "targetId", "Target.createTarget");
        let attached = self
            .cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
                LIMIT,
            )
            .await
            .unwrap_or_else(|error| panic!("could not attach to a new tab: {error}"));
        let session_id = str_field(&attached, "sessionId", "Target.attachToTarget");

        // Registered before any domain is enabled: no event can be missed.
        let state = Arc::new(Session {
            errors: Mutex::new(Vec::new()),
            loaded: watch::channel(HashSet::new()).0,
        });
        self.cdp
            .sessions
            .lock()
            .expect("session map poisoned")
            .insert(session_id.clone(), Arc::clone(&state));
        let page = Page { cdp: Arc::clone(&self.cdp), session_id, target_id, state };
        for (method, params) in [
            ("Page.enable", json!({})),
            ("Page.setLifecycleEventsEnabled", json!({ "enabled": true })),
            ("Runtime.enable", json!({})),
            ("Log.enable", json!({})),
            // The viewport of `--window-size`, whatever room this Chromium's
            // own window frame takes.
            (
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false }),
            ),
        ] {
            page.command(method, params).await;
        }
        page.navigate(url).await;
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Fail whatever still waits for an answer, then kill Chromium and
        // remove its profile.
        self.cdp.close();
        self.process.stop();
    }
}

impl Page {
    /// Evaluates the JS expression `expression` (awaiting it if it is a
    /// promise) and returns its value as JSON (`null` for `undefined`). A JS
    /// exception, or no answer within 30 s, is a panic naming the expression.
    pub async fn eval(&self, expression: &str) -> Value {
        self.evaluate(expression, LIMIT)
            .await
            .unwrap_or_else(|error| panic!("eval({expression:?}) failed: {error}"))
    }

    /// Resolves once the JS expression `condition` is truthy. The page checks
    /// it at once, then on every DOM mutation and every animation frame (an
    /// exception counts as false); after `within` this panics, naming the
    /// condition, its last exception and the page's text.
    pub async fn wait_for(&self, condition: &str, within: Duration) {
        let script = WAIT_FOR_JS
            .replace("__WITHIN_MS__", &within.as_millis().to_string())
            .replace("__CONDITION__", condition);
        match self.evaluate(&script, within + GRACE).await {
            Ok(outcome) if outcome["ok"] == json!(true) => {}
            Ok(outcome) => {
                let last_error = match outcome["lastError"].as_str() {
                    Some(error) => format!("\nits last evaluation threw: {error}"),
                    None => String::new(),
                };
                let body = outcome["body"].as_str().unwrap_or("<no document.body>");
                panic!(
                    "wait_for: `{condition}` did not become true within {within:?}{last_error}\n\
                     page text:\n{}",
                    truncate(body, BODY_SHOWN)
                );
            }
            Err(error) => {
                let body = match self
                    .evaluate(
                        "document.body ? document.body.innerText : '<no body>'",
                        Duration::from_secs(2),
                    )
                    .await
                {
                    Ok(Value::String(text)) => truncate(&text, BODY_SHOWN),
                    Ok(other) => other.to_string(),
                    Err(why) => format!("<could not be read: {why}>"),
                };
                panic!("wait_for: `{condition}` failed: {error}\npage text:\n{body}");
            }
        }
    }

    /// Errors the page reported so far, in order: `console.error` and failed
    /// `console.assert` calls, uncaught exceptions and unhandled rejections,
    /// and the browser's own error log entries (a resource or WebSocket that
    /// failed to load, a blocked request, ...; not the browser's own
    /// `/favicon.ico` request). Empty means a clean page.
    pub async fn errors(&self) -> Vec<String> {
        // A round trip first, so that whatever the page logged before this
        // call has been routed here.
        self.evaluate("0", LIMIT)
            .await
            .unwrap_or_else(|error| panic!("errors(): the page does not answer: {error}"));
        self.state.errors.lock().expect("page errors poisoned").clone()
    }

    /// Writes a PNG screenshot of the viewport to `path` (creating its
    /// directory).
    pub async fn screenshot(&self, path: &Path) {
        let shot = self.command("Page.captureScreenshot", json!({ "format": "png" })).await;
        let data = str_field(&shot, "data", "Page.captureScreenshot");
        let png = base64_decode(&data).expect("Page.captureScreenshot returned invalid base64");
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|error| panic!("could not create {}: {error}", dir.display()));
        }
        std::fs::write(path, png)
            .unwrap_or_else(|error| panic!("could not write {}: {error}", path.display()));
    }

    async fn navigate(&self, url: &str) {
        let mut loaded = self.state.loaded.subscribe();
        let navigated = self.command("Page.navigate", json!({ "url": url })).await;
        if let Some(error) = navigated["errorText"].as_str() {
            panic!("could not load {url}: {error}");
        }
        // A navigation within the same document has no loader and no load.
        let Some(loader) = navigated["loaderId"].as_str() else {
            return;
        };
        match timeout(LIMIT, loaded.wait_for(|done| done.contains(loader))).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => panic!("the browser went away while {url} was loading"),
            Err(_) => panic!("{url} did not finish loading within {LIMIT:?}"),
        }
    }

    async fn command(&self, method: &str, params: Value) -> Value {
        self.cdp
            .call(Some(&self.session_id), method, params, LIMIT)
            .await
            .unwrap_or_else(|error| panic!("{method} failed: {error}"))
    }

    async fn evaluate(&self, expression: &str, limit: Duration) -> Result<Value, String> {
        let params = json!({
            "expression": expression,
            "awaitPromise": true,
            "returnByValue": true,
            "userGesture": true,
        });
        let answer =
            self.cdp.call(Some(&self.session_id), "Runtime.evaluate", params, limit).await?;
        if let Some(details) = answer.get("exceptionDetails") {
            return Err(exception_text(details));
        }
        Ok(answer["result"].get("value").cloned().unwrap_or(Value::Null))
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        self.cdp.sessions.lock().expect("session map poisoned").remove(&self.session_id);
        self.cdp.send_only("Target.closeTarget", json!({ "targetId": self.target_id }));
    }
}

/// Resolves to `{ok, lastError, body}`: `ok` once the condition holds,
/// otherwise after `within` with the page's text.
const WAIT_FOR_JS: &str = r#"(() => new Promise((resolve) => {
  let done = false, lastError = null, observer = null, frame = 0, timer = 0;
  const condition = () => (
__CONDITION__
  );
  const finish = (ok) => {
    done = true;
    if (observer) observer.disconnect();
    cancelAnimationFrame(frame);
    clearTimeout(timer);
    const body = ok || !document.body ? null : document.body.innerText;
    resolve({ ok, lastError, body });
  };
  const check = () => {
    if (done) return;
    try {
      if (condition()) finish(true);
    } catch (e) {
      lastError = String(e && e.stack || e);
    }
  };
  check();
  if (done) return;
  observer = new MutationObserver(check);
  observer.observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
  const onFrame = () => { check(); if (!done) frame = requestAnimationFrame(onFrame); };
  frame = requestAnimationFrame(onFrame);
  timer = setTimeout(() => { check(); if (!done) finish(false); }, __WITHIN_MS__);
}))()"#;

/// The browser process and its profile directory; stopped on drop too, so
/// that a launch that fails half-way leaves nothing behind.
struct Process {
    child: Child,
    profile: PathBuf,
    stopped: bool,
}

impl Process {
    /// Kills Chromium with its helpers and removes its profile (once).
    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        unsafe extern "C" {
            fn kill(pid: i32, signal: i32) -> i32;
        }
        const SIGKILL: i32 = 9;
        // The whole process group: Chromium and its helpers. The group id is
        // the child's pid (`process_group(0)`), and the child is not reaped
        // yet, so the id cannot have been reused.
        if let Ok(group) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { kill(-group, SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Err(error) = std::fs::remove_dir_all(&self.profile) {
            eprintln!("could not remove Chromium's profile {}: {error}", self.profile.display());
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

type Reply = Result<Value, String>;

/// The CDP connection shared by the browser and its pages.
struct Connection {
    next_id: AtomicU64,
    /// Messages for the socket; `None` once the connection is closed.
    outgoing: Mutex<Option<mpsc::UnboundedSender<String>>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

/// What one page's events told so far.
struct Session {
    errors: Mutex<Vec<String>>,
    /// Loader ids whose document fired its load event.
    loaded: watch::Sender<HashSet<String>>,
}

impl Connection {
    /// Sends a command (to the browser, or to a page's session) and waits at
    /// most `limit` for its answer.
    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
        limit: Duration,
    ) -> Reply {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending map poisoned").insert(id, tx);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        if !self.send(message) {
            self.pending.lock().expect("pending map poisoned").remove(&id);
            return Err("the connection to Chromium is closed".into());
        }
        match timeout(limit, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err("the connection to Chromium closed before it answered".into()),
            Err(_) => {
                self.pending.lock().expect("pending map poisoned").remove(&id);
                Err(format!("Chromium did not answer {method} within {limit:?}"))
            }
        }
    }

    /// Sends a browser command whose answer nobody waits for.
    fn send_only(&self, method: &str, params: Value) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.send(json!({ "id": id, "method": method, "params": params }));
    }

    fn send(&self, message: Value) -> bool {
        match &*self.outgoing.lock().expect("outgoing sender poisoned") {
            Some(outgoing) => outgoing.send(message.to_string()).is_ok(),
            None => false,
        }
    }

    /// Stops sending and fails every command still waiting for an answer.
    fn close(&self) {
        self.outgoing.lock().expect("outgoing sender poisoned").take();
        self.pending.lock().expect("pending map poisoned").clear();
    }

    /// Routes one message from Chromium: an answer to its command, an event
    /// to its page.
    fn dispatch(&self, text: &str) {
        let Ok(message) = serde_json::from_str::<Value>(text) else {
            return;
        };
        if let Some(id) = message["id"].as_u64() {
            let waiter = self.pending.lock().expect("pending map poisoned").remove(&id);
            if let Some(waiter) = waiter {
                let reply = match message.get("error") {
                    Some(error) => Err(format!("Chromium answered with an error: {error}")),
                    None => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
                };
                let _ = waiter.send(reply);
            }
            return;
        }
        let (Some(method), Some(session)) =
            (message["method"].as_str(), message["sessionId"].as_str())
        else {
            return;
        };
        let state = self.sessions.lock().expect("session map poisoned").get(session).cloned();
        if let Some(state) = state {
            state.event(method, &message["params"]);
        }
    }
}

impl Session {
    fn event(&self, method: &str, params: &Value) {
        let error = match method {
            "Page.lifecycleEvent" => {
                if params["name"] == "load"
                    && let Some(loader) = params["loaderId"].as_str()
                {
                    self.loaded.send_modify(|done| {
                        done.insert(loader.to_string());
                    });
                }
                return;
            }
            "Runtime.consoleAPICalled" => {
                let kind = params["type"].as_str().unwrap_or("");
                if kind != "error" && kind != "assert" {
                    return;
                }
                let args = params["args"].as_array().map(Vec::as_slice).unwrap_or(&[]);
                let text: Vec<String> = args.iter().map(remote_object_text).collect();
                format!(
                    "console.{kind}: {}{}",
                    text.join(" "),
                    location(&params["stackTrace"]["callFrames"][0])
                )
            }
            "Runtime.exceptionThrown" => {
                format!("uncaught: {}", exception_text(&params["exceptionDetails"]))
            }
            "Log.entryAdded" => {
                let entry = &params["entry"];
                let url = entry["url"].as_str().unwrap_or("");
                // The browser asks every site for /favicon.ico by itself; a
                // server without one is not the page's error.
                if entry["level"] != "error" || url.ends_with("/favicon.ico") {
                    return;
                }
                format!(
                    "{} error: {}{}",
                    entry["source"].as_str().unwrap_or("browser"),
                    entry["text"].as_str().unwrap_or(""),
                    if url.is_empty() { String::new() } else { format!(" ({url})") }
                )
            }
            "Inspector.targetCrashed" => "the page crashed".to_string(),
            _ => return,
        };
        self.errors.lock().expect("page errors poisoned").push(error);
    }
}

/// Reads the socket and routes what arrives; writes what the pages send.
async fn pump(
    mut socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    mut to_send: mpsc::UnboundedReceiver<String>,
    cdp: Arc<Connection>,
) {
    loop {
        tokio::select! {
            incoming = socket.next() => match incoming {
                Some(Ok(Message::Text(text))) => cdp.dispatch(text.as_str()),
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            outgoing = to_send.recv() => match outgoing {
                Some(text) => {
                    if socket.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
        }
    }
    cdp.close();
}

/// A fresh, empty directory for Chromium's profile.
fn fresh_profile_dir() -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("crier-test-chromium-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            // Left by an earlier run whose process had the same id.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) => panic!("could not create {}: {error}", dir.display()),
        }
    }
}

fn str_field(answer: &Value, field: &str, method: &str) -> String {
    match answer[field].as_str() {
        Some(value) => value.to_string(),
        None => panic!("{method} answered without a {field}: {answer}"),
    }
}

/// The text of a CDP `ExceptionDetails`: the exception's description (its
/// message and stack) when there is one, and where it was thrown.
fn exception_text(details: &Value) -> String {
    let exception = &details["exception"];
    let text = exception["description"]
        .as_str()
        .map(str::to_string)
        .or_else(|| exception.get("value").map(|_| remote_object_text(exception)))
        .unwrap_or_else(|| details["text"].as_str().unwrap_or("exception").to_string());
    format!("{text}{}", location(details))
}

/// " (url:line:column)" for a call frame or exception details with a URL.
fn location(at: &Value) -> String {
    match (at["url"].as_str(), at["lineNumber"].as_u64()) {
        (Some(url), Some(line)) if !url.is_empty() => {
            let column = at["columnNumber"].as_u64().unwrap_or(0);
            format!(" ({}:{}:{})", truncate(url, 100), line + 1, column + 1)
        }
        _ => String::new(),
    }
}

/// How a CDP `RemoteObject` (a console argument) reads: a primitive as
/// itself, an error as its stack, an object or array by its preview.
fn remote_object_text(object: &Value) -> String {
    if let Some(value) = object.get("value") {
        return match value {
            Value::String(text) => text.clone(),
            value => value.to_string(),
        };
    }
    let properties = object["preview"]["properties"].as_array();
    if let (Some(properties), false) = (properties, object["subtype"] == "error") {
        let array = object["subtype"] == "array";
        let mut items: Vec<String> = properties
            .iter()
            .map(|property| {
                let value = property["value"].as_str().unwrap_or("?");
                let value = match property["type"].as_str() {
                    Some("string") => format!("{value:?}"),
                    _ => value.to_string(),
                };
                match (array, property["name"].as_str()) {
                    (false, Some(name)) => format!("{name}: {value}"),
                    _ => value,
                }
            })
            .collect();
        if object["preview"]["overflow"] == true {
            items.push("...".into());
        }
        let (open, close) = if array { ("[", "]") } else { ("{", "}") };
        return format!("{open}{}{close}", items.join(", "));
    }
    object["unserializableValue"]
        .as_str()
        .or_else(|| object["description"].as_str())
        .or_else(|| object["type"].as_str())
        .unwrap_or("?")
        .to_string()
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}... ({} more bytes)", &text[..end], text.len() - end),
        None => text.to_string(),
    }
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let digits = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut bits = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            bits |= value(c)? << (18 - 6 * i);
        }
        let bytes = bits.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}
