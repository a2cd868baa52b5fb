//! Transport adapters: each turns its input into command lines for a
//! [`Session`](crate::session::Session) and writes the session's outbox in
//! its own framing. `tcp`: the seed's line protocol over TCP.

pub mod tcp;
