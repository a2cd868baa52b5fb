//! Redis Cluster measured directly (`--target redis --redis-cluster`):
//! where each bench channel lives, read once from the seed node at `--addr`.
//!
//! A channel is a shard channel: its hash slot (crier's
//! [`cluster::slot`](crier::broker::redis::cluster::slot), CRC16-XMODEM of
//! the name modulo 16384, as `CLUSTER KEYSLOT` computes it) is served by one
//! master, found in the seed's `CLUSTER SLOTS` reply. Each subscriber
//! `SSUBSCRIBE`s at its channel's master; every publisher has one
//! connection per master that owns a channel of the run, each sending
//! `SPUBLISH` for that master's channels only. The map is read once: the
//! bench measures a stable cluster, and a slot that moves during a run
//! shows up as `MOVED` publish errors, subscribers ending on
//! `sunsubscribe`, and the messages lost with them.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::BytesMut;
use crier::broker::redis::cluster::{self, Addr, SlotMap};
use crier::broker::redis::resp::{self, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::net::Connector;
use super::targets::{channel_name, show};

/// Longest `CLUSTER SLOTS` reply read (a few hundred bytes per master).
const MAX_REPLY: usize = 4 << 20;

/// The hash slot of a bench channel.
pub fn slot(channel: &str) -> u16 {
    cluster::slot(channel.as_bytes())
}

/// The masters that own the run's channels, and which owns each channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `HOST:PORT` of each master owning at least one channel, in the order
    /// of `CLUSTER SLOTS`.
    pub masters: Vec<String>,
    /// Per channel: its master, an index in `masters`.
    pub owner: Vec<usize>,
}

impl Layout {
    /// Where channels `bench.0` .. `bench.{channels - 1}` live in `map`.
    pub fn of(map: &SlotMap, channels: usize) -> Result<Layout> {
        let mut owners = Vec::with_capacity(channels);
        for c in 0..channels {
            let name = channel_name(c);
            let s = slot(&name);
            let addr = map.owner(s).with_context(|| {
                format!("no master serves slot {s} of {name}: is the cluster's state ok?")
            })?;
            owners.push(addr);
        }
        let masters: Vec<&Addr> = map.masters.iter().filter(|m| owners.contains(m)).collect();
        let owner = owners
            .iter()
            .map(|a| masters.iter().position(|m| m == a).ok_or_else(|| anyhow!("unknown master")))
            .collect::<Result<_>>()?;
        Ok(Layout { masters: masters.into_iter().map(cluster::host_port).collect(), owner })
    }

    /// The channels master `m` owns, in order.
    pub fn channels_of(&self, m: usize) -> Vec<usize> {
        (0..self.owner.len()).filter(|&c| self.owner[c] == m).collect()
    }
}

/// Asks the seed node for the cluster's slots (`CLUSTER SLOTS`, RESP2).
pub async fn slot_map(seed: &Connector, timeout: Duration) -> Result<SlotMap> {
    let host = seed.server.ip().to_string();
    let ask = async {
        let mut stream = seed.connect(0).await?;
        stream.write_all(b"*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n").await?;
        let mut buf = BytesMut::with_capacity(16 * 1024);
        loop {
            match resp::parse(&buf) {
                Ok(Some((reply, _))) => return read_slots(&reply, &host),
                Ok(None) => {}
                Err(e) => bail!("{e}"),
            }
            if buf.len() > MAX_REPLY {
                bail!("reply longer than {MAX_REPLY} bytes");
            }
            buf.reserve(16 * 1024);
            if stream.read_buf(&mut buf).await? == 0 {
                bail!("the node closed the connection");
            }
        }
    };
    tokio::time::timeout(timeout, ask)
        .await
        .map_err(|_| anyhow!("no answer within {timeout:?}"))
        .and_then(|r| r)
        .with_context(|| format!("--redis-cluster: CLUSTER SLOTS at {}", seed.server))
}

/// The slot map in a `CLUSTER SLOTS` reply; `host` stands for a node
/// announced without an address.
fn read_slots(reply: &Value<'_>, host: &str) -> Result<SlotMap> {
    if let Value::Error(e) = reply {
        bail!("the node answered {:?} (is it a Redis Cluster node?)", show(e));
    }
    let map = SlotMap::parse(reply, host).context("not a CLUSTER SLOTS reply")?;
    if map.masters.is_empty() {
        bail!("the cluster has no master serving any slot (not created yet?)");
    }
    Ok(map)
}

/// Splits `total` over parts in proportion to `weights` (whole numbers,
/// adding up to `total` exactly).
pub fn split(total: u64, weights: &[usize]) -> Vec<u64> {
    let sum: u128 = weights.iter().map(|&w| w as u128).sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let mut before = 0u128;
    weights
        .iter()
        .map(|&w| {
            let at = |cum: u128| (u128::from(total) * cum / sum) as u64;
            let share = at(before + w as u128) - at(before);
            before += w as u128;
            share
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_slots_are_what_redis_computes() {
        // `redis-cli -p PORT cluster keyslot bench.N` on Redis 7.0.
        for (name, want) in [
            ("bench.0", 15082),
            ("bench.1", 10955),
            ("bench.2", 6824),
            ("bench.3", 2697),
            ("bench.4", 14958),
            ("bench.5", 10831),
            ("bench.6", 6700),
            ("bench.7", 2573),
            ("bench.12", 373),
            ("bench.99", 14775),
        ] {
            assert_eq!(slot(name), want, "{name}");
        }
    }

    /// A three-master cluster as `redis-cli --cluster create` lays it out
    /// (RESP2 reply to `CLUSTER SLOTS`).
    const THREE_MASTERS: &[u8] = b"*3\r\n\
        *3\r\n:0\r\n:5460\r\n*4\r\n$9\r\n127.0.0.1\r\n:7201\r\n$2\r\nid\r\n*0\r\n\
        *3\r\n:5461\r\n:10922\r\n*4\r\n$9\r\n127.0.0.1\r\n:7202\r\n$2\r\nid\r\n*0\r\n\
        *3\r\n:10923\r\n:16383\r\n*4\r\n$9\r\n127.0.0.1\r\n:7203\r\n$2\r\nid\r\n*0\r\n";

    fn map_of(wire: &[u8]) -> Result<SlotMap> {
        let (reply, used) = resp::parse(wire).ok().flatten().context("a whole reply")?;
        assert_eq!(used, wire.len());
        read_slots(&reply, "127.0.0.1")
    }

    #[test]
    fn each_channel_goes_to_its_slots_master() {
        let map = map_of(THREE_MASTERS).expect("a map");
        let six = Layout::of(&map, 6).expect("a layout");
        assert_eq!(six.masters, ["127.0.0.1:7201", "127.0.0.1:7202", "127.0.0.1:7203"]);
        // Slots 15082 10955 6824 2697 14958 10831.
        assert_eq!(six.owner, [2, 2, 1, 0, 2, 1]);
        assert_eq!(six.channels_of(2), [0, 1, 4]);
        assert_eq!(six.channels_of(0), [3]);
        // Masters that own none of the run's channels get no connection.
        let two = Layout::of(&map, 2).expect("a layout");
        assert_eq!(two.masters, ["127.0.0.1:7203"]);
        assert_eq!(two.owner, [0, 0]);
    }

    #[test]
    fn a_slot_without_master_or_a_non_cluster_node_is_an_error() {
        // Slots 10923-16383 unassigned: bench.0 (slot 15082) has no master.
        let partial = b"*1\r\n*3\r\n:0\r\n:10922\r\n*2\r\n$9\r\n127.0.0.1\r\n:7201\r\n";
        let map = map_of(partial).expect("a map");
        assert_eq!(
            Layout::of(&map, 1)
                .err()
                .map(|e| e.to_string())
                .as_deref()
                .map(|e| e.contains("slot 15082")),
            Some(true)
        );
        assert!(Layout::of(&map, 4).is_err());
        let disabled = b"-ERR This instance has cluster support disabled\r\n";
        let e = map_of(disabled).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("cluster support disabled"), "{e}");
        assert!(map_of(b"*0\r\n").is_err(), "no master at all");
        assert!(map_of(b":3\r\n").is_err());
    }

    #[test]
    fn shares_follow_the_weights() {
        assert_eq!(split(10, &[1, 2, 3]), [1, 4, 5]);
        assert_eq!(split(12, &[1, 2, 3]), [2, 4, 6]);
        assert_eq!(split(7, &[1, 1, 1]), [2, 2, 3]);
        assert_eq!(split(5, &[6]), [5]);
        assert_eq!(
            split(u64::MAX, &[1, 1]).iter().map(|&n| n as u128).sum::<u128>(),
            u64::MAX as u128
        );
        assert_eq!(split(3, &[]), Vec::<u64>::new());
    }
}
