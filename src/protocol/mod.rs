//! The wire protocol: framing of command lines and pushes (`codec`), the
//! parsing of a line into a [`Command`] (`command`), every reply and error
//! (`reply`), and the clients' parser of pushes (`push`). None does any I/O.

pub mod codec;
pub mod command;
pub mod push;
pub mod reply;

pub use command::{Command, Hello};

/// Push forms, chosen per connection with `HELLO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Version {
    /// The seed's form: the payload, then CRLF.
    V1 = 1,
    /// Binary-safe: `MESSAGE <channel> <n>` CRLF, n bytes, CRLF.
    V2 = 2,
}
