//! Redis Cluster: which master serves a channel, and keeping that knowledge
//! fresh.
//!
//! - [`slot`]: a channel's hash slot, as Redis computes it for a key (CRC16
//!   of the name or of its hash tag, modulo 16384).
//! - [`SlotMap`]: the masters and the slots each serves, read from `CLUSTER
//!   SLOTS`.
//! - [`Topology`]: one task that reads the map from any reachable node (the
//!   known masters first, then the seeds) at start, whenever a task asks
//!   (a lost connection, a `MOVED`, a `sunsubscribe` Redis sent on its own)
//!   and every few seconds, and hands each new map to the subscriber and
//!   the publishing router through a `watch` channel.
//! - [`Router`]: one task that sends each publish to the publishing
//!   connection of its slot's master (one [`Publisher`] per master) and
//!   retries once at the new owner when a reply says `MOVED` or `ASK`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::Health;
use super::connect::{self, Target};
use super::publisher::{Job, Publisher};
use super::resp::{self, Value};
use crate::protocol::reply::Error;

/// Hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;
/// The map is read again this often even when nobody asks: a safety net
/// for changes no connection noticed.
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// Two reads of the map are at least this far apart, however often they are
/// asked for (a failover makes every connection ask at once).
const REFRESH_GAP: Duration = Duration::from_millis(200);
/// Jobs queued per master's publishing connection.
const QUEUED_PER_MASTER: usize = 4096;
/// A publish answered `MOVED` or `ASK` is sent again at most this often.
const MAX_TRIES: u8 = 3;

/// CRC16-XMODEM (polynomial 0x1021, initial value 0), the checksum Redis
/// Cluster hashes keys with. Bitwise: a handful of bytes per channel name,
/// once per subscribe or publish, does not need a table.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The part of a name Redis hashes: what lies between the first `{` and
/// the first `}` after it, when that is not empty; else the whole name.
pub fn hash_tag(name: &[u8]) -> &[u8] {
    if let Some(open) = memchr::memchr(b'{', name)
        && let Some(len) = memchr::memchr(b'}', &name[open + 1..])
        && len > 0
    {
        return &name[open + 1..open + 1 + len];
    }
    name
}

/// The hash slot of a key or shard channel.
pub fn slot(name: &[u8]) -> u16 {
    crc16(hash_tag(name)) % SLOTS
}

/// A node's address as the cluster announces it.
pub type Addr = (String, u16);

/// `HOST:PORT`, as Redis Cluster writes a node's address (an IPv6 host in
/// brackets, so that the port stays readable).
pub fn host_port((host, port): &Addr) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// Which master serves each slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
    pub masters: Vec<Addr>,
    /// Index in `masters` per slot; `u16::MAX`: nobody serves it.
    owner: Vec<u16>,
}

impl Default for SlotMap {
    fn default() -> SlotMap {
        SlotMap { masters: Vec::new(), owner: vec![u16::MAX; usize::from(SLOTS)] }
    }
}

impl SlotMap {
    /// The master serving `slot`, if any.
    pub fn owner(&self, slot: u16) -> Option<&Addr> {
        let index = *self.owner.get(usize::from(slot))?;
        self.masters.get(usize::from(index))
    }

    /// Reads `CLUSTER SLOTS`'s reply; `host` stands for a node announced
    /// without an address (Redis's "unknown endpoint"). `None` when the
    /// reply is not one.
    pub fn parse(reply: &Value<'_>, host: &str) -> Option<SlotMap> {
        let mut map = SlotMap::default();
        for range in reply.items()? {
            let [start, end, master, ..] = range.items()? else { return None };
            let start = u16::try_from(start.integer()?).ok()?;
            let end = u16::try_from(end.integer()?).ok()?;
            let [ip, port, ..] = master.items()? else { return None };
            let ip = std::str::from_utf8(ip.bytes()?).ok()?;
            let ip = if ip.is_empty() || ip == "?" { host } else { ip };
            let addr = (ip.to_string(), u16::try_from(port.integer()?).ok()?);
            let index = match map.masters.iter().position(|known| *known == addr) {
                Some(index) => index,
                None => {
                    map.masters.push(addr);
                    map.masters.len() - 1
                }
            };
            let index = u16::try_from(index).ok()?;
            for slot in start..=end.min(SLOTS - 1) {
                map.owner[usize::from(slot)] = index;
            }
        }
        Some(map)
    }

    /// Every slot has a master.
    pub fn complete(&self) -> bool {
        self.owner.iter().all(|&index| index != u16::MAX)
    }
}

/// What the tasks of a cluster backend share: the latest map and a way to
/// ask for a fresher one.
#[derive(Clone)]
pub struct Shared {
    pub map: watch::Receiver<Arc<SlotMap>>,
    pub refresh: Arc<Notify>,
    /// Any seed: credentials and TLS for every node.
    pub seed: Target,
}

impl Shared {
    /// Where `channel` lives now.
    pub fn owner(&self, channel: &[u8]) -> Option<Addr> {
        self.map.borrow().owner(slot(channel)).cloned()
    }
}

/// See the module documentation.
pub struct Topology {
    pub seeds: Vec<Target>,
    pub map: watch::Sender<Arc<SlotMap>>,
    pub refresh: Arc<Notify>,
    pub shutdown: CancellationToken,
}

impl Topology {
    pub async fn run(self) {
        let mut warned = false;
        loop {
            match self.fetch().await {
                Some(map) => {
                    warned = false;
                    if **self.map.borrow() != map {
                        tracing::info!(
                            "redis cluster: {} masters{}",
                            map.masters.len(),
                            if map.complete() { "" } else { ", some slots unserved" }
                        );
                        self.map.send_replace(Arc::new(map));
                    }
                }
                None if !warned => {
                    warned = true;
                    tracing::warn!("redis cluster: no node answered CLUSTER SLOTS; retrying");
                }
                None => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(REFRESH_GAP) => {}
                _ = self.shutdown.cancelled() => return,
            }
            tokio::select! {
                _ = self.refresh.notified() => {}
                _ = tokio::time::sleep(REFRESH_EVERY) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// The map from the first node that gives one: the masters known, then
    /// the seeds.
    async fn fetch(&self) -> Option<SlotMap> {
        let known = self.map.borrow().masters.clone();
        let seed = self.seeds.first()?;
        let targets = known.iter().map(|(host, port)| seed.at(host, *port));
        for target in targets.chain(self.seeds.iter().cloned()) {
            match slots_of(&target).await {
                Ok(map) => return Some(map),
                Err(error) => tracing::debug!("redis cluster: {}: {error}", target.describe()),
            }
        }
        None
    }
}

/// `CLUSTER SLOTS` of one node.
async fn slots_of(target: &Target) -> std::io::Result<SlotMap> {
    let mut stream = target.open().await?;
    let command = resp::encode(&[b"CLUSTER", b"SLOTS"]);
    connect::ask(&mut *stream, &command, |reply| {
        SlotMap::parse(reply, target.host())
            .ok_or_else(|| std::io::Error::other("not a CLUSTER SLOTS reply"))
    })
    .await
}

/// See the module documentation.
pub struct Router {
    pub shared: Shared,
    pub jobs: mpsc::Receiver<Job>,
    /// Jobs a master answered `MOVED` or `ASK`, sent back by its publisher.
    pub bounced: mpsc::UnboundedReceiver<Job>,
    pub bounce: mpsc::UnboundedSender<Job>,
    /// Load crier's functions on each connection (history is on).
    pub functions: bool,
    pub shutdown: CancellationToken,
    /// One publishing connection per master, by address.
    pub publishers: HashMap<Addr, mpsc::Sender<Job>>,
}

impl Router {
    pub async fn run(mut self) {
        loop {
            tokio::select! {
                // Redirected jobs first: they were queued before any new one.
                biased;
                Some(job) = self.bounced.recv() => {
                    // The map is stale: read it again, and meanwhile follow
                    // the redirection (`MOVED` names the new owner).
                    self.shared.refresh.notify_one();
                    let to = job.moved_to.clone();
                    self.route(job, to).await;
                }
                job = self.jobs.recv() => match job {
                    Some(job) => self.route(job, None).await,
                    None => return,
                },
                changed = self.shared.map.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // Masters that serve nothing any more: their publishers
                    // end when their queue closes.
                    let map = Arc::clone(&self.shared.map.borrow_and_update());
                    self.publishers.retain(|addr, _| map.masters.contains(addr));
                }
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Sends `job` to its slot's master (or to `to`).
    async fn route(&mut self, mut job: Job, to: Option<Addr>) {
        let owner = to.or_else(|| {
            let slot = job.slot?;
            self.shared.map.borrow().owner(slot).cloned()
        });
        let Some(addr) = owner.filter(|_| job.tries < MAX_TRIES) else {
            job.done.answer(Err(Error::BackendUnavailable));
            return;
        };
        job.tries += 1;
        let publisher = self.publisher(addr);
        if let Err(refused) = publisher.send(job).await {
            refused.0.done.answer(Err(Error::BackendUnavailable));
        }
    }

    /// The publishing connection of `addr`, started on first use.
    fn publisher(&mut self, addr: Addr) -> mpsc::Sender<Job> {
        if let Some(jobs) = self.publishers.get(&addr) {
            return jobs.clone();
        }
        let (jobs, queued) = mpsc::channel(QUEUED_PER_MASTER);
        let publisher = Publisher {
            target: self.shared.seed.at(&addr.0, addr.1),
            jobs: queued,
            functions: self.functions,
            // Its own: the node's readiness follows the subscription links.
            health: Arc::new(Health::default()),
            shutdown: self.shutdown.clone(),
            bounce: Some(self.bounce.clone()),
            lost: Some(Arc::clone(&self.shared.refresh)),
        };
        tokio::spawn(publisher.run());
        self.publishers.insert(addr, jobs.clone());
        jobs
    }
}

/// Where a `MOVED` error sends a command: `MOVED <slot> <host>:<port>`
/// (an empty host: the node that answered).
pub fn moved_to(error: &[u8], host: &str) -> Option<Addr> {
    let text = std::str::from_utf8(error).ok()?;
    let mut words = text.split(' ');
    if words.next()? != "MOVED" {
        return None;
    }
    let (ip, port) = words.nth(1)?.rsplit_once(':')?;
    let ip = if ip.is_empty() { host } else { ip };
    Some((ip.to_string(), port.parse().ok()?))
}

/// A reply that says the slot is served elsewhere.
pub fn redirected(error: &[u8]) -> bool {
    error.starts_with(b"MOVED ") || error.starts_with(b"ASK ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(host_port(&("::1".into(), 7001)), "[::1]:7001");
        assert_eq!(host_port(&("10.0.0.1".into(), 7001)), "10.0.0.1:7001");
    }

    #[test]
    fn crc16_is_xmodem_with_redis_test_vector() {
        // From the Redis Cluster specification.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
    }

    #[test]
    fn slots_follow_hash_tags() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"), "an empty tag hashes it all");
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"crier:{news}:m"), b"news");
    }

    #[test]
    fn a_slots_reply_maps_every_range_to_its_master() {
        let wire = b"*2\r\n\
            *3\r\n:0\r\n:8191\r\n*3\r\n$9\r\n127.0.0.1\r\n:7001\r\n$2\r\nid\r\n\
            *4\r\n:8192\r\n:16383\r\n*3\r\n$0\r\n\r\n:7002\r\n$2\r\nid\r\n*3\r\n$1\r\n?\r\n:7003\r\n$2\r\nid\r\n";
        let (reply, _) = resp::parse(wire).unwrap().unwrap();
        let map = SlotMap::parse(&reply, "seed").expect("a map");
        assert!(map.complete());
        assert_eq!(map.owner(0), Some(&("127.0.0.1".to_string(), 7001)));
        assert_eq!(map.owner(16383), Some(&("seed".to_string(), 7002)));
        assert_eq!(map.masters.len(), 2);
        assert!(SlotMap::parse(&Value::Integer(3), "seed").is_none());
    }

    #[test]
    fn moved_names_the_new_owner() {
        assert_eq!(moved_to(b"MOVED 3999 127.0.0.1:6381", "x"), Some(("127.0.0.1".into(), 6381)));
        assert_eq!(moved_to(b"MOVED 3999 :6381", "x"), Some(("x".into(), 6381)));
        assert_eq!(moved_to(b"ASK 3999 127.0.0.1:6381", "x"), None);
        assert!(redirected(b"ASK 3999 127.0.0.1:6381"));
        assert!(!redirected(b"ERR nope"));
    }
}
