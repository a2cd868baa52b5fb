//! Transport adapters: each turns its input into command lines for a
//! [`Session`](crate::session::Session) and writes the session's outbox in
//! its own framing.
//! - `connection`: a session over a TCP socket (reader and writer in one
//!   task), for the two framings below;
//! - `tcp`: the seed's line protocol;
//! - `ws`: WebSocket, after an upgrade on the HTTP listener;
//! - `sse`: Server-Sent Events, a one-way subscription over HTTP.

pub mod connection;
pub mod sse;
pub mod tcp;
pub mod ws;
