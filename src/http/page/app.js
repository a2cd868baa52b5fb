"use strict";

// crier live console. It talks to the server only through its public endpoints:
// a WebSocket on /ws for subscriptions, POST /publish, and GET /metrics.
// With auth on, a token (kept for this tab only) goes to /ws as ?token= and
// to POST /publish as "Authorization: Bearer".

const MAX_MESSAGES = 500;      // log entries kept; the oldest are dropped
const RETRY_MIN_MS = 1000;     // reconnect backoff: 1 s doubling to 10 s
const RETRY_MAX_MS = 10000;
const ERROR_LINGER_MS = 4000;  // how long a failed subscription stays visible
const METRICS_EVERY_MS = 1000;
const SPARK_POINTS = 60;       // one point per poll: the last minute

const $ = (selector) => document.querySelector(selector);
const words = (text) => text.split(/\s+/).filter(Boolean);

/** Creates an element with a class and plain text (never parsed as HTML). */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---------------------------------------------------------------------------
// Connection: one WebSocket. Replies come in command order, so each command
// sent pushes a reply handler onto a FIFO and each reply pops one.

let socket = null;
let retryDelay = RETRY_MIN_MS;
let awaiting = [];

const WS_ORIGIN = (location.protocol === "https:" ? "wss://" : "ws://") + location.host;

/** The token typed into the page, if any. */
const token = () => sessionStorage.getItem("crier-token") || "";

function socketUrl() {
  return WS_ORIGIN + "/ws" + (token() ? "?token=" + encodeURIComponent(token()) : "");
}

function connect() {
  setStatus("connecting");
  socket = new WebSocket(socketUrl());
  socket.binaryType = "arraybuffer";

  socket.onopen = () => {
    retryDelay = RETRY_MIN_MS;
    setStatus("connected");
    // Version 3: deliveries are JSON (as in version 2), and a SUBSCRIBE's
    // reply names the channel's position, so a drop before the first
    // message still resumes from the right place.
    send("HELLO 3", (reply) => {
      if (reply !== "CONFIRMED") notice("HELLO 3: " + reply);
    });
    for (const sub of subscriptions.values()) sendSubscribe(sub);
  };

  socket.onmessage = (event) => {
    // After HELLO 3 everything is text: deliveries are JSON objects, and
    // replies never start with "{".
    if (typeof event.data !== "string") return notice("(a binary message)");
    if (event.data.startsWith("{")) return deliver(JSON.parse(event.data));
    const onReply = awaiting.shift();
    if (onReply) onReply(event.data);
    else notice(event.data); // unsolicited, e.g. "ERR slow consumer" before a close
  };

  socket.onclose = () => {
    socket = null;
    awaiting = [];
    setStatus("disconnected", retryDelay);
    // The server forgot everything: what was leaving is gone, the rest waits.
    for (const sub of subscriptions.values()) {
      if (sub.leaving) forget(sub);
      else setSubState(sub, "pending");
    }
    setTimeout(connect, retryDelay);
    retryDelay = Math.min(retryDelay * 2, RETRY_MAX_MS);
  };
}

const isOpen = () => socket !== null && socket.readyState === WebSocket.OPEN;

/** Sends one command; `onReply` receives its reply line. */
function send(command, onReply) {
  socket.send(command);
  awaiting.push(onReply);
}

const STATUS_TEXT = { connecting: "connecting…", connected: "connected", disconnected: "disconnected" };

function setStatus(state, retryMs) {
  const status = $("#status");
  status.textContent = STATUS_TEXT[state];
  status.dataset.state = state;
  status.title = retryMs ? `retrying in ${retryMs / 1000} s` : "";
}

// ---------------------------------------------------------------------------
// Subscriptions, keyed by kind and name: a channel and a pattern may share a name.

const subscriptions = new Map(); // "channel:news" -> { key, name, kind, li, leaving, lastId }

function subscribe(name, kind) {
  const key = kind + ":" + name;
  if (subscriptions.has(key)) return;
  const sub = { key, name, kind, leaving: false };
  sub.li = renderSubscription(sub);
  subscriptions.set(key, sub);
  if (isOpen()) sendSubscribe(sub); // otherwise sent on (re)connect
}

/** Subscribes; after a reconnect, a channel that keeps history resumes from
 *  the last id the page saw (RESUME), so nothing published meanwhile is lost. */
function sendSubscribe(sub) {
  setSubState(sub, "pending");
  const resuming = sub.kind === "channel" && sub.lastId;
  const command = resuming ? `RESUME ${sub.name} ${sub.lastId}`
    : (sub.kind === "pattern" ? "PSUBSCRIBE " : "SUBSCRIBE ") + sub.name;
  send(command, (reply) => {
    if (reply === "CONFIRMED" || reply === "ALREADY SUBSCRIBED") return setSubState(sub, "confirmed");
    if (reply.startsWith("CONFIRMED ")) { // version 3: the position, "-" without history
      remember(sub, reply.slice("CONFIRMED ".length));
      return setSubState(sub, "confirmed");
    }
    if (reply.startsWith("RECOVERED ")) return setSubState(sub, "confirmed");
    if (reply.startsWith("NOT RECOVERED ")) {
      notice(`${sub.name}: messages published while disconnected could not be recovered`);
      remember(sub, reply.slice("NOT RECOVERED ".length)); // resume from here next time
      return setSubState(sub, "confirmed");
    }
    // Refused (ERR invalid channel, ERR forbidden...): show why, then drop it.
    if (subscriptions.get(sub.key) === sub) subscriptions.delete(sub.key);
    sub.li.classList.replace("pending", "failed");
    flashError(sub.li, reply, () => sub.li.remove());
  });
}

/** Where a channel resumes from after a drop ("-": it keeps no history). */
function remember(sub, id) {
  sub.lastId = id === "-" ? undefined : id;
}

function unsubscribe(sub) {
  if (!isOpen()) return forget(sub);
  sub.leaving = true;
  sub.li.classList.add("leaving");
  send((sub.kind === "pattern" ? "PUNSUBSCRIBE " : "UNSUBSCRIBE ") + sub.name, (reply) => {
    if (reply === "CONFIRMED" || reply === "ALREADY UNSUBSCRIBED") return forget(sub);
    sub.leaving = false;
    sub.li.classList.remove("leaving");
    flashError(sub.li, reply);
  });
}

function forget(sub) {
  if (subscriptions.get(sub.key) === sub) subscriptions.delete(sub.key);
  sub.li.remove();
}

function setSubState(sub, state) {
  sub.li.classList.toggle("pending", state === "pending");
  sub.li.classList.toggle("confirmed", state === "confirmed");
}

function renderSubscription(sub) {
  const li = el("li", "pending");
  li.dataset.topic = sub.name;
  li.dataset.kind = sub.kind;
  li.append(el("span", "name", sub.name));
  if (sub.kind === "pattern") li.append(el("span", "badge", "pattern"));
  const remove = el("button", "remove", "×");
  remove.type = "button";
  remove.title = "unsubscribe";
  remove.setAttribute("aria-label", "unsubscribe " + sub.name);
  remove.addEventListener("click", () => unsubscribe(sub));
  li.append(remove);
  $("#subscriptions").append(li);
  return li;
}

/** Shows an error on a row for a few seconds, then calls `done` if given. */
function flashError(li, text, done) {
  const error = el("span", "error", text);
  li.append(error);
  setTimeout(() => {
    error.remove();
    if (done) done();
  }, ERROR_LINGER_MS);
}

// ---------------------------------------------------------------------------
// Message log: newest on top, capped, with pause (holds new rows) and filter.

let held = null; // rows received while paused, or null when live

function deliver(msg) {
  const li = el("li", "message");
  li.append(el("span", "time", clock(new Date())), el("span", "channel", msg.channel));
  if (msg.pattern !== undefined) li.append(el("span", "pattern", msg.pattern));
  if (msg.id !== undefined) {
    li.append(el("span", "id", msg.id));
    const sub = subscriptions.get("channel:" + msg.channel);
    if (sub && msg.pattern === undefined) sub.lastId = msg.id; // where to resume from
  }
  li.append(msg.data_base64 === undefined
    ? el("span", "data", msg.data)
    : el("span", "data base64", msg.data_base64)); // not UTF-8: shown as base64

  if (!held) return addToLog(li);
  held.push(li);
  if (held.length > MAX_MESSAGES) held.shift();
  showPauseState();
}

function notice(text) {
  addToLog(el("li", "notice", text));
}

function addToLog(li) {
  const log = $("#messages");
  li.hidden = !matchesFilter(li);
  log.prepend(li);
  while (log.childElementCount > MAX_MESSAGES) log.lastElementChild.remove();
}

function matchesFilter(li) {
  const query = $("#filter").value.trim().toLowerCase();
  return !query || li.textContent.toLowerCase().includes(query);
}

function showPauseState() {
  const button = $("#pause");
  button.textContent = held ? `resume (${held.length} new)` : "pause";
  button.setAttribute("aria-pressed", String(held !== null));
}

/** Local time as HH:MM:SS.mmm. */
function clock(date) {
  const pad = (n, width = 2) => String(n).padStart(width, "0");
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}` +
    `.${pad(date.getMilliseconds(), 3)}`;
}

// ---------------------------------------------------------------------------
// Publishing over HTTP: 200 with a JSON object, or a plain "ERR <reason>".

async function publish(channels, data) {
  const query = channels.map((channel) => "channel=" + encodeURIComponent(channel)).join("&");
  try {
    const headers = token() ? { Authorization: "Bearer " + token() } : {};
    const response = await fetch("/publish?" + query, { method: "POST", body: data, headers });
    if (response.ok) return showPublishResult(true, describePublish(await response.json()));
    const text = (await response.text()).trim();
    showPublishResult(false, text || `HTTP ${response.status}`);
  } catch (error) {
    showPublishResult(false, "ERR " + error.message);
  }
}

/** The server answers {"published": <number of channels>}. */
function describePublish(body) {
  const n = body.published;
  return typeof n === "number" ? `published to ${n} channel${n === 1 ? "" : "s"}` : JSON.stringify(body);
}

function showPublishResult(ok, text) {
  const result = $("#publish-result");
  result.textContent = text;
  result.className = ok ? "ok" : "error";
}

// ---------------------------------------------------------------------------
// Counters: poll /metrics (Prometheus text), sum each metric over its labels.

let previous = null; // { at, sums } of the last successful poll
const outRates = [];

function parseMetrics(text) {
  const sums = new Map();
  for (const line of text.split("\n")) {
    // name{labels} value [timestamp]; labels may hold spaces inside quotes
    const match = /^([A-Za-z_:][\w:]*)(?:\{.*\})?\s+(\S+)/.exec(line);
    if (!match) continue; // blank lines and "# HELP" / "# TYPE" comments
    sums.set(match[1], (sums.get(match[1]) ?? 0) + Number(match[2]));
  }
  return sums;
}

async function pollMetrics() {
  let sums = null;
  try {
    const response = await fetch("/metrics", { cache: "no-store" });
    if (response.ok) sums = parseMetrics(await response.text());
  } catch {
    // unreachable server: the counters show "–"
  }
  showMetrics(sums);
  setTimeout(pollMetrics, METRICS_EVERY_MS);
}

function showMetrics(sums) {
  const now = performance.now();
  const rate = (name) => {
    const value = sums?.get(name);
    const before = previous?.sums.get(name);
    if (value === undefined || before === undefined) return undefined;
    return Math.max(0, value - before) / ((now - previous.at) / 1000); // a restart resets counters
  };
  setStat("#stat-connections", sums?.get("crier_connections"));
  setStat("#stat-subscriptions", sums?.get("crier_subscriptions"));
  setStat("#stat-channels", sums?.get("crier_channels"));
  setStat("#stat-in", rate("crier_messages_published_total"));
  const out = rate("crier_deliveries_total");
  setStat("#stat-out", out);
  previous = sums && { at: now, sums };

  outRates.push(out ?? 0);
  if (outRates.length > SPARK_POINTS) outRates.shift();
  drawSparkline();
}

function setStat(selector, value) {
  let text = "–";
  if (value !== undefined) {
    text = Number.isInteger(value) || value >= 10
      ? Math.round(value).toLocaleString()
      : value.toFixed(1);
  }
  $(selector).textContent = text;
}

function drawSparkline() {
  const peak = Math.max(1, ...outRates);
  const offset = SPARK_POINTS - outRates.length; // newest point at the right edge
  const points = outRates.map((value, i) => `${offset + i},${(19.5 - (value / peak) * 19).toFixed(2)}`);
  $("#spark polyline").setAttribute("points", points.join(" "));
}

// ---------------------------------------------------------------------------
// Wiring.

$("#subscribe-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const kind = $("#subscribe-pattern").checked ? "pattern" : "channel";
  for (const name of words($("#subscribe-name").value)) subscribe(name, kind);
  $("#subscribe-name").value = "";
});

$("#publish-form").addEventListener("submit", (event) => {
  event.preventDefault();
  publish(words($("#publish-channel").value), $("#publish-data").value);
});

$("#publish-data").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    $("#publish-form").requestSubmit();
  }
});

$("#filter").addEventListener("input", () => {
  for (const li of $("#messages").children) li.hidden = !matchesFilter(li);
});

$("#pause").addEventListener("click", () => {
  if (held) held.forEach(addToLog); // oldest first, so the newest ends on top
  held = held ? null : [];
  showPauseState();
});

$("#clear").addEventListener("click", () => {
  $("#messages").replaceChildren();
  if (held) held = [];
  showPauseState();
});

// The snippets name this server.
const fills = { origin: location.origin, "ws-origin": WS_ORIGIN };
for (const span of document.querySelectorAll("[data-fill]")) span.textContent = fills[span.dataset.fill];

connect();
pollMetrics();

// ---------------------------------------------------------------------------
// Token: applied by reconnecting (the server checks it at the upgrade).

$("#token").value = token();
$("#token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("crier-token", $("#token").value.trim());
  if (socket) socket.close(); // onclose reconnects with the new token
});
