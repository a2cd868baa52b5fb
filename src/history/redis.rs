//! The Redis backend's history: per channel, a stream of its recent messages
//! and a hash with its epoch and last offset, in Redis, so that every node
//! serves the same positions and a node restart loses nothing.
//!
//! Storing and publishing are one atomic step, the function `crier_publish`
//! of the library [`LIBRARY`] that every node loads at start: it appends to
//! the stream (`XADD ... MAXLEN ~ size`, the entry id `<offset>-<ms>`, so
//! the stream is ordered and ranged by offset and carries each message's
//! time), refreshes both keys' TTL and publishes `<epoch>:<offset> <payload>`
//! on the channel. A backend that does not go through crier calls it too:
//! `FCALL crier_publish 2 crier:{news}:m crier:{news}:s news <payload>
//! <size> <ttl-ms>`. A plain Redis subscriber sees the id, a space, then
//! the payload.
//!
//! `crier_read` reads a channel's position and the messages after an
//! offset. Either function makes a new epoch (and drops any stream left
//! over) when the hash is gone: the keys expired after `--history-ttl`
//! without a message, were evicted, or Redis lost its data. Completeness
//! is decided by the node ([`Read::after`]): the stream must still hold the
//! message right after the client's position, fresh.

use bytes::Bytes;
use std::time::Duration;

use super::{Position, Settings};
use crate::broker::redis::resp::{self, Value};

/// The library loaded with `FUNCTION LOAD REPLACE` at every connection.
pub const LIBRARY: &str = r#"#!lua name=crier

local digits = '0123456789abcdefghijklmnopqrstuvwxyz'

-- A new epoch: the server's time in microseconds, in base 36.
local function new_epoch()
  local time = redis.call('TIME')
  local n = tonumber(time[1]) * 1000000 + tonumber(time[2])
  local epoch = ''
  while n > 0 do
    local digit = n % 36
    epoch = string.sub(digits, digit + 1, digit + 1) .. epoch
    n = (n - digit) / 36
  end
  return epoch
end

-- The channel's epoch and last offset; a new epoch when its hash is gone.
local function position(meta, stream, ttl)
  local kept = redis.call('HMGET', meta, 'epoch', 'offset')
  if kept[1] then
    return kept[1], tonumber(kept[2])
  end
  local epoch = new_epoch()
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', meta, ttl)
  return epoch, 0
end

local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- KEYS: hash, stream. ARGV: channel, payload, size, ttl in ms, and
-- optionally 'shard': publish with SPUBLISH (Redis Cluster, where crier
-- subscribes to shard channels).
redis.register_function('crier_publish', function(keys, args)
  local epoch = position(keys[1], keys[2], args[4])
  local offset = redis.call('HINCRBY', keys[1], 'offset', 1)
  redis.call('XADD', keys[2], 'MAXLEN', '~', args[3], offset .. '-' .. now_ms(), 'd', args[2])
  redis.call('PEXPIRE', keys[1], args[4])
  redis.call('PEXPIRE', keys[2], args[4])
  local id = epoch .. ':' .. offset
  local verb = 'PUBLISH'
  if args[5] == 'shard' then
    verb = 'SPUBLISH'
  end
  redis.call(verb, args[1], id .. ' ' .. args[2])
  return id
end)

-- KEYS: hash, stream. ARGV: since (an offset, or -1: the position only),
-- limit, ttl in ms, create (1: make the epoch if there is none; 0: answer
-- the epoch '-'). Returns {epoch, offset, now in ms, oldest kept offset,
-- {offset, ms, payload, ...}} with the messages after since.
redis.register_function('crier_read', function(keys, args)
  if args[4] ~= '1' and redis.call('EXISTS', keys[1]) == 0 then
    return {'-', 0, now_ms(), 1, {}}
  end
  local epoch, offset = position(keys[1], keys[2], args[3])
  local since = tonumber(args[1])
  local found = {}
  local oldest = offset + 1
  if since >= 0 then
    local first = redis.call('XRANGE', keys[2], '-', '+', 'COUNT', 1)
    if first[1] then
      oldest = tonumber(string.match(first[1][1], '^(%d+)'))
    end
    if since < offset then
      local entries = redis.call('XRANGE', keys[2], tostring(since + 1), '+', 'COUNT', args[2])
      for _, entry in ipairs(entries) do
        local at, ms = string.match(entry[1], '^(%d+)-(%d+)$')
        table.insert(found, tonumber(at))
        table.insert(found, tonumber(ms))
        table.insert(found, entry[2][2])
      end
    end
  end
  return {epoch, offset, now_ms(), oldest, found}
end)
"#;

/// The keys of `channel`'s history: its hash and its stream. The braces
/// put both in one Redis Cluster slot.
pub fn keys(channel: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let key = |suffix: &[u8]| [&b"crier:{"[..], channel, b"}:", suffix].concat();
    (key(b"m"), key(b"s"))
}

/// `FCALL crier_publish` for a message of `channel`; with `shard` (a
/// cluster), the function publishes it with `SPUBLISH`.
pub fn publish(channel: &[u8], payload: &[u8], settings: &Settings, shard: bool) -> Bytes {
    let (meta, stream) = keys(channel);
    let size = settings.size.to_string();
    let ttl = ttl_ms(settings.ttl);
    let mut args: Vec<&[u8]> = vec![
        b"FCALL",
        b"crier_publish",
        b"2",
        &meta,
        &stream,
        channel,
        payload,
        size.as_bytes(),
        ttl.as_bytes(),
    ];
    if shard {
        args.push(b"shard");
    }
    resp::encode(&args)
}

/// On a cluster, the keys of a channel's history must hash to the
/// channel's own slot, for `crier_publish` to store and `SPUBLISH` in one
/// step on one master. `crier:{<channel>}:m` hashes as `<channel>` only when
/// the name holds no brace (a brace would change which part is hashed, in
/// the key or in the channel).
pub fn shardable(channel: &[u8]) -> bool {
    !channel.iter().any(|&byte| byte == b'{' || byte == b'}')
}

/// `FCALL crier_read`: the position, and up to `limit` messages after
/// `since` (none without it). Without `create`, a channel with no epoch
/// yet gets none (reading must not make keys in Redis).
pub fn read(
    channel: &[u8],
    since: Option<u64>,
    limit: usize,
    create: bool,
    settings: &Settings,
) -> Bytes {
    let (meta, stream) = keys(channel);
    let since = since.map_or_else(|| "-1".to_string(), |offset| offset.to_string());
    // XRANGE's COUNT is a signed 64-bit integer: `GET /history` without a
    // limit (usize::MAX) must not become a count Redis refuses.
    let limit = limit.clamp(1, i64::MAX as usize).to_string();
    let ttl = ttl_ms(settings.ttl);
    resp::encode(&[
        b"FCALL",
        b"crier_read",
        b"2",
        &meta,
        &stream,
        since.as_bytes(),
        limit.as_bytes(),
        ttl.as_bytes(),
        if create { b"1" } else { b"0" },
    ])
}

fn ttl_ms(ttl: Duration) -> String {
    ttl.as_millis().max(1).to_string()
}

/// A message as `crier_publish` published it: `<epoch>:<offset> <payload>`.
#[derive(Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// `<epoch>:<offset>`.
    pub id: &'a [u8],
    pub epoch: &'a [u8],
    pub offset: u64,
    pub payload: &'a [u8],
}

/// Reads what `crier_publish` published; `None` for a message published
/// some other way. Allocates nothing: it runs for every message.
pub fn unwrap(message: &[u8]) -> Option<Envelope<'_>> {
    // An id is at most 32 + 1 + 20 bytes.
    let space = memchr::memchr(b' ', &message[..message.len().min(64)])?;
    let id = &message[..space];
    let (epoch, offset) = Position::parts(id).ok()??;
    Some(Envelope { id, epoch, offset, payload: &message[space + 1..] })
}

/// What `crier_read` answered.
#[derive(Debug)]
pub struct Read {
    /// The channel's position: its epoch and last offset.
    pub position: Position,
    /// Redis's clock, in ms since the epoch, when it read.
    now: u64,
    /// The offset of the oldest message the stream holds (`offset + 1`
    /// when it holds none).
    oldest: u64,
    /// The messages read: offset, time in ms, payload.
    messages: Vec<(u64, u64, Bytes)>,
}

impl Read {
    /// Parses the reply; `None` when it is not `crier_read`'s.
    pub fn parse(value: &Value<'_>) -> Option<Read> {
        let [epoch, offset, now, oldest, found] = value.items()? else {
            return None;
        };
        let epoch = Bytes::copy_from_slice(epoch.bytes()?);
        let offset = u64::try_from(offset.integer()?).ok()?;
        let now = u64::try_from(now.integer()?).ok()?;
        let oldest = u64::try_from(oldest.integer()?).ok()?;
        let mut messages = Vec::new();
        for entry in found.items()?.chunks(3) {
            let [at, ms, payload] = entry else { return None };
            messages.push((
                u64::try_from(at.integer()?).ok()?,
                u64::try_from(ms.integer()?).ok()?,
                Bytes::copy_from_slice(payload.bytes()?),
            ));
        }
        Some(Read { position: Position { epoch, offset }, now, oldest, messages })
    }

    /// The messages after `since`, if all of them are still kept (same
    /// epoch, none trimmed, none older than the TTL, at most the last
    /// `--history-size`); `None` otherwise.
    pub fn after(self, since: &Position, settings: &Settings) -> Option<Vec<(Position, Bytes)>> {
        if since.epoch != self.position.epoch || since.offset > self.position.offset {
            return None;
        }
        let missed = self.position.offset - since.offset;
        if missed == 0 {
            return Some(Vec::new());
        }
        // `MAXLEN ~` trims in whole stream nodes and may keep more than
        // the size: what the embedded ring would have dropped is gone here too.
        let fresh = self.fresh_since(settings);
        let complete = missed <= settings.size as u64
            && self.oldest <= since.offset + 1
            && self.messages.len() as u64 == missed
            && self
                .messages
                .first()
                .is_some_and(|(at, ms, _)| *at == since.offset + 1 && *ms >= fresh);
        complete.then(|| self.into_positions())
    }

    /// The messages kept after the offset read from, oldest first, without
    /// those the embedded ring would have dropped (older than the TTL,
    /// before the last `--history-size`): `GET /history`.
    pub fn kept(self, settings: &Settings) -> (Position, Vec<(Position, Bytes)>) {
        let fresh = self.fresh_since(settings);
        let first = self.position.offset.saturating_sub(settings.size as u64);
        let position = self.position.clone();
        let messages = self
            .messages
            .into_iter()
            .filter(|(at, ms, _)| *ms >= fresh && *at > first)
            .map(|(offset, _, payload)| {
                (Position { epoch: position.epoch.clone(), offset }, payload)
            })
            .collect();
        (position, messages)
    }

    /// Redis's time, in ms, before which a message is past the TTL.
    fn fresh_since(&self, settings: &Settings) -> u64 {
        self.now.saturating_sub(settings.ttl.as_millis().try_into().unwrap_or(u64::MAX))
    }

    fn into_positions(self) -> Vec<(Position, Bytes)> {
        let epoch = self.position.epoch;
        self.messages
            .into_iter()
            .map(|(offset, _, payload)| (Position { epoch: epoch.clone(), offset }, payload))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_message_splits_into_id_and_payload() {
        let envelope = unwrap(b"k3x9:42 hello world").expect("an envelope");
        assert_eq!(
            envelope,
            Envelope { id: b"k3x9:42", epoch: b"k3x9", offset: 42, payload: b"hello world" }
        );
        assert!(unwrap(b"hello world").is_none());
        assert!(unwrap(b"k3x9:42").is_none(), "no space: not crier_publish's");
    }

    #[test]
    fn both_keys_of_a_channel_share_a_cluster_slot() {
        let (meta, stream) = keys(b"news");
        assert_eq!(meta, b"crier:{news}:m");
        assert_eq!(stream, b"crier:{news}:s");
    }
}
