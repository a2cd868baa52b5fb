//! crier: a real-time pub/sub server. Clients hold persistent connections (TCP, WebSocket, SSE)
//! and receive every message published to the channels they subscribed to.
//!
//! The architecture, module by module:
//! - [`protocol`]: framing of command lines and pushes, command parsing (no I/O);
//! - [`session`]: the transport-neutral core of a connection: commands,
//!   subscriptions, push form, limits, permissions, cleanup;
//! - [`transport`]: the adapters that carry a session: the line protocol,
//!   WebSocket and Server-Sent Events;
//! - [`outbox`]: a connection's bounded outbound queue, where fan-out meets the transport;
//! - [`broker`]: who receives what: the registry, the glob matcher, and the
//!   embedded and Redis backends behind one trait;
//! - [`server`]: the accept loop, why connections end, shutdown;
//! - [`http`]: the HTTP listener: the web page, `/ws`, `/sse`, `POST /publish`,
//!   health, readiness and metrics;
//! - [`auth`]: who may do what (the permission check of every transport);
//! - [`metrics`]: the Prometheus metrics;
//! - [`history`]: kept messages, positions and resume;
//! - [`client`]: `crier client`, `crier sub`, `crier pub`;
//! - [`config`]: flags, environment and config file.

pub mod auth;
pub mod broker;
pub mod client;
pub mod config;
pub mod history;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod server;
pub mod session;
pub mod sync;
pub mod sys;
pub mod tls;
pub mod transport;
