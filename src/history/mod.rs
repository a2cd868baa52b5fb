//! History and recovery: a channel that keeps history gives each message a
//! position, and a client that reconnects either gets every message it
//! missed, in order, or is told plainly that it cannot.
//!
//! A position is an epoch (letters and digits, new whenever the channel's
//! continuity is lost: a restart, its kept messages all gone) and an offset
//! (1 for the epoch's first message, then +1 per message), written
//! `<epoch>:<offset>`; `-` stands for "no history".
//!
//! `memory`: the embedded backend's history, a ring per channel in this
//! process. `redis`: the Redis backend's, a stream per channel in Redis.

pub mod memory;
pub mod redis;

use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::broker::glob::Glob;
use crate::outbox::{Flush, Outbox};
use crate::protocol::Form;
use crate::protocol::reply::Error;

/// The history settings (every node behind one Redis must share them).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Messages kept per channel; 0: history is off.
    pub size: usize,
    pub ttl: Duration,
    /// Channels that keep history; `None`: all.
    pub channels: Option<Vec<Glob>>,
    /// Payload bytes kept in all (embedded only: Redis has its own
    /// `maxmemory`).
    pub max_bytes: usize,
}

impl Settings {
    /// Whether `channel` keeps history.
    pub fn keeps(&self, channel: &[u8]) -> bool {
        self.size > 0
            && self.channels.as_ref().is_none_or(|globs| globs.iter().any(|g| g.matches(channel)))
    }
}

/// Longest epoch accepted in an id.
const MAX_EPOCH: usize = 32;

/// A position in a channel's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: Bytes,
    pub offset: u64,
}

impl Position {
    /// `<epoch>:<offset>`.
    pub fn id(&self) -> Bytes {
        let mut digits = itoa::Buffer::new();
        let offset = digits.format(self.offset);
        let mut id = Vec::with_capacity(self.epoch.len() + 1 + offset.len());
        id.extend_from_slice(&self.epoch);
        id.push(b':');
        id.extend_from_slice(offset.as_bytes());
        Bytes::from(id)
    }

    /// Parses an id: `Ok(None)` for `-`; anything malformed is `ERR invalid id`.
    pub fn parse(id: &[u8]) -> Result<Option<Position>, Error> {
        Ok(Position::parts(id)?
            .map(|(epoch, offset)| Position { epoch: Bytes::copy_from_slice(epoch), offset }))
    }

    /// An id's epoch and offset, borrowed: `Ok(None)` for `-`.
    pub fn parts(id: &[u8]) -> Result<Option<(&[u8], u64)>, Error> {
        if id == b"-" {
            return Ok(None);
        }
        let colon = memchr::memchr(b':', id).ok_or(Error::InvalidId)?;
        let (epoch, offset) = (&id[..colon], &id[colon + 1..]);
        if epoch.is_empty()
            || epoch.len() > MAX_EPOCH
            || !epoch.iter().all(u8::is_ascii_alphanumeric)
        {
            return Err(Error::InvalidId);
        }
        if offset.is_empty() || offset.len() > 20 || !offset.iter().all(u8::is_ascii_digit) {
            return Err(Error::InvalidId);
        }
        let offset = std::str::from_utf8(offset)
            .map_err(|_| Error::InvalidId)?
            .parse()
            .map_err(|_| Error::InvalidId)?;
        Ok(Some((epoch, offset)))
    }
}

/// Queues the messages a client missed on `channel` to its outbox, unless
/// they would not fit: a replay the connection's budget cannot hold would
/// cut it off as a slow consumer, again at every retry, so it is said to be
/// unrecoverable instead (false), and the client reloads. Half the budget,
/// for the framing and the live messages that follow. Both backends call it
/// where nothing published later can be queued before it.
pub fn replay(
    outbox: &Arc<Outbox>,
    channel: &[u8],
    missed: &[(Position, Bytes)],
    flush: &mut Flush,
) -> bool {
    let bytes: usize = missed.iter().map(|(_, payload)| payload.len() + 64).sum();
    if bytes > outbox.budget() / 2 {
        return false;
    }
    let active = AtomicBool::new(true);
    for (position, payload) in missed {
        let id = position.id();
        let frame = |form: Form| form.encode(None, channel, payload, Some(&id));
        outbox.deliver(&active, frame, flush);
    }
    true
}

/// What a resume found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumed {
    /// Every message after the client's position is kept: `k` follow.
    Recovered(usize),
    /// The gap cannot be filled (another epoch, messages gone, no history):
    /// the channel's current position (`None`: no history).
    NotRecovered(Option<Position>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_bad_ones_are_refused() {
        let position = Position { epoch: Bytes::from("k3x9"), offset: 42 };
        assert_eq!(&position.id()[..], b"k3x9:42");
        assert_eq!(Position::parse(b"k3x9:42"), Ok(Some(position)));
        assert_eq!(Position::parse(b"-"), Ok(None));
        for bad in [
            &b""[..],
            b"k3x9",
            b":4",
            b"k3x9:",
            b"k-3:4",
            b"k:4x",
            b"k:-4",
            b"k:99999999999999999999999",
        ] {
            assert_eq!(Position::parse(bad), Err(Error::InvalidId), "{}", bad.escape_ascii());
        }
    }
}
