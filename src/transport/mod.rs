//! Transport adapters: each turns its input into command lines for a
//! [`Session`](crate::session::Session) and writes the session's outbox in
//! its own framing.
//! - `connection`: a session over a socket (reader and writer in one
//!   task), for the two framings below;
//! - `socket`: the streams a connection runs over: TCP, and TLS over TCP;
//! - `tcp`: the seed's line protocol;
//! - `ws`: WebSocket, after an upgrade on the HTTP listener;
//! - `sse`: Server-Sent Events, a one-way subscription over HTTP;
//! - `expiry`: the timer that ends a connection when its token expires.

pub mod connection;
pub mod expiry;
pub mod socket;
pub mod sse;
pub mod tcp;
pub mod ws;
