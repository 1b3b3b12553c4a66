//! Replica configuration: typed fields, string option keys, and validation.
//!
//! Every option is settable by a string key so that C, Python and Go bind it the same way
//! ([`Config::set`]). Unknown keys are an error, never silently ignored.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use crate::error::{Error, Result};

/// Longest key accepted, in bytes (LMDB's compiled-in key limit).
pub const KEY_BYTES_MAX: usize = 511;
/// Longest key accepted with a TTL, in bytes: the expiry index keys each deadline with the key
/// after it (8 + key bytes), under the same LMDB limit.
pub const TTL_KEY_BYTES_MAX: usize = KEY_BYTES_MAX - 8;
/// Largest value accepted, in bytes.
pub const VALUE_BYTES_MAX: usize = 4 << 20;
/// Largest frame accepted on a peer connection, in bytes (checked before allocating).
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Most peers a cluster may list.
pub const PEERS_MAX: usize = 64;
/// Shortest cluster secret accepted, in bytes.
pub const CLUSTER_SECRET_BYTES_MIN: usize = 16;

/// Configuration of one replica. Build it with [`Config::new`] and [`Config::set`], or by
/// filling the fields directly, then call [`Config::validate`] (done by `Replica::open`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This replica's id, ≥ 1, unique in the cluster (`node_id`).
    pub node_id: u64,
    /// Directory holding this replica's LMDB environments (`dir`).
    pub dir: PathBuf,
    /// Address to accept peer connections on (`listen`). Defaults to this node's entry in `peers`.
    pub listen: Option<String>,
    /// Initial members: node id → address, including this node (`peers`). Empty = single node.
    pub peers: BTreeMap<u64, String>,
    /// Cluster identity checked in every peer handshake (`cluster_id`).
    pub cluster_id: u64,
    /// How long a put/get/delete may block before `Timeout` (`request_timeout_ms`).
    pub request_timeout_ms: u64,
    /// Raft tick interval (`tick_ms`).
    pub tick_ms: u64,
    /// Ticks without a leader before an election (`election_ticks`).
    pub election_ticks: usize,
    /// Ticks between leader heartbeats (`heartbeat_ticks`).
    pub heartbeat_ticks: usize,
    /// LMDB map size of each environment, in MiB (`map_size_mb`); the files grow as needed up to it.
    pub map_size_mb: u64,
    /// Start empty and learn the membership from the cluster (`join`).
    pub join: bool,
    /// Entries applied between two snapshot points, after which the log is compacted
    /// (`snapshot_entries`).
    pub snapshot_entries: u64,
    /// Entries kept in the log below the last snapshot point, for followers that are a little
    /// behind (`compaction_margin`).
    pub compaction_margin: u64,
    /// Entries whose changes the watch feed keeps, 0 to keep none (`watch_retain_entries`).
    /// Each kept change stores its key and new value a second time, in the state machine and
    /// in its snapshots.
    pub watch_retain_entries: u64,
    /// Bytes (keys and values) the watch feed holds at most, 0 for no bound
    /// (`watch_retain_bytes`): past it, the oldest entries' changes leave the window early.
    pub watch_retain_bytes: u64,
    /// A backup file (from `kvr_backup`) to seed a new replica's state from (`restore_from`).
    pub restore_from: Option<PathBuf>,
    /// Secret every replica of the cluster shares; peers prove they know it in the handshake
    /// (HMAC-SHA256 challenge-response) and it never crosses the wire (`cluster_secret`).
    pub cluster_secret: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            dir: PathBuf::new(),
            listen: None,
            peers: BTreeMap::new(),
            cluster_id: 0,
            request_timeout_ms: 5000,
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            map_size_mb: 64 << 10,
            join: false,
            snapshot_entries: 50_000,
            compaction_margin: 5_000,
            watch_retain_entries: 10_000,
            watch_retain_bytes: 64 << 20,
            restore_from: None,
            cluster_secret: None,
        }
    }
}

/// The option keys [`Config::set`] accepts.
pub const OPTION_KEYS: &[&str] = &[
    "node_id",
    "dir",
    "listen",
    "peers",
    "cluster_id",
    "request_timeout_ms",
    "tick_ms",
    "election_ticks",
    "heartbeat_ticks",
    "map_size_mb",
    "join",
    "snapshot_entries",
    "compaction_margin",
    "watch_retain_entries",
    "watch_retain_bytes",
    "restore_from",
    "cluster_secret",
];

impl Config {
    /// A configuration with defaults for everything but `dir`.
    pub fn new(node_id: u64, dir: impl Into<PathBuf>) -> Config {
        Config {
            node_id,
            dir: dir.into(),
            ..Config::default()
        }
    }

    /// Sets one option by its string key, as the C ABI and bindings do.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "node_id" => self.node_id = parse_u64(key, value, 1, u64::MAX)?,
            "dir" => {
                if value.is_empty() {
                    return Err(Error::invalid("dir must not be empty"));
                }
                self.dir = PathBuf::from(value);
            }
            "listen" => {
                check_addr(key, value)?;
                self.listen = Some(value.to_string());
            }
            "peers" => self.peers = parse_peers(value)?,
            "cluster_id" => self.cluster_id = parse_u64(key, value, 0, u64::MAX)?,
            "request_timeout_ms" => {
                self.request_timeout_ms = parse_u64(key, value, 1, 24 * 3600 * 1000)?
            }
            "tick_ms" => self.tick_ms = parse_u64(key, value, 1, 60_000)?,
            "election_ticks" => self.election_ticks = parse_u64(key, value, 2, 10_000)? as usize,
            "heartbeat_ticks" => self.heartbeat_ticks = parse_u64(key, value, 1, 10_000)? as usize,
            "map_size_mb" => self.map_size_mb = parse_u64(key, value, 1, 1 << 30)?,
            "join" => self.join = parse_bool(key, value)?,
            "snapshot_entries" => self.snapshot_entries = parse_u64(key, value, 1, u64::MAX / 4)?,
            "compaction_margin" => self.compaction_margin = parse_u64(key, value, 0, u64::MAX / 4)?,
            "watch_retain_entries" => {
                self.watch_retain_entries = parse_u64(key, value, 0, u64::MAX / 4)?
            }
            "watch_retain_bytes" => {
                self.watch_retain_bytes = parse_u64(key, value, 0, u64::MAX / 4)?
            }
            "cluster_secret" => {
                if value.len() < CLUSTER_SECRET_BYTES_MIN {
                    return Err(Error::invalid(format!(
                        "cluster_secret must have at least {CLUSTER_SECRET_BYTES_MIN} bytes"
                    )));
                }
                self.cluster_secret = Some(value.to_string());
            }
            "restore_from" => {
                if value.is_empty() {
                    return Err(Error::invalid("restore_from must not be empty"));
                }
                self.restore_from = Some(PathBuf::from(value));
            }
            _ => {
                return Err(Error::invalid(format!(
                    "unknown option key {key:?} (known keys: {})",
                    OPTION_KEYS.join(", ")
                )))
            }
        }
        Ok(())
    }

    /// Checks the configuration as a whole. `Replica::open` calls it.
    pub fn validate(&self) -> Result<()> {
        if self.node_id == 0 {
            return Err(Error::invalid("node_id must be >= 1"));
        }
        if self.dir.as_os_str().is_empty() {
            return Err(Error::invalid("dir is required"));
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return Err(Error::invalid(format!(
                "election_ticks ({}) must be greater than heartbeat_ticks ({})",
                self.election_ticks, self.heartbeat_ticks
            )));
        }
        if !self.peers.is_empty() && !self.join && !self.peers.contains_key(&self.node_id) {
            return Err(Error::invalid(format!(
                "peers does not list this node (node_id {})",
                self.node_id
            )));
        }
        if self.join && self.restore_from.is_some() {
            return Err(Error::invalid("join and restore_from exclude each other"));
        }
        if self.join && self.listen_addr().is_none() {
            return Err(Error::invalid("join needs listen (or this node in peers)"));
        }
        if let Some(listen) = &self.listen {
            check_addr("listen", listen)?;
        }
        Ok(())
    }

    /// True when this replica runs without peers (no transport at all).
    pub fn single_node(&self) -> bool {
        !self.join && self.peers.len() <= 1 && self.listen.is_none()
    }

    /// The address this replica listens on, if any.
    pub fn listen_addr(&self) -> Option<&str> {
        self.listen
            .as_deref()
            .or_else(|| self.peers.get(&self.node_id).map(String::as_str))
    }

    /// Election timeout in milliseconds (the base; raft randomises up to twice that).
    pub fn election_timeout_ms(&self) -> u64 {
        self.tick_ms * self.election_ticks as u64
    }
}

fn parse_u64(key: &str, value: &str, min: u64, max: u64) -> Result<u64> {
    let v: u64 = value
        .trim()
        .parse()
        .map_err(|_| Error::invalid(format!("{key}: {value:?} is not an unsigned integer")))?;
    if v < min || v > max {
        return Err(Error::invalid(format!(
            "{key}: {v} is outside [{min}, {max}]"
        )));
    }
    Ok(v)
}

fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value.trim() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(Error::invalid(format!("{key}: {value:?} is not a boolean"))),
    }
}

/// Checks that `value` is one `host:port`: a host that could be dialed (no separators of the
/// peers list, no whitespace or control characters) and a port that fits in 16 bits.
pub(crate) fn check_addr(key: &str, value: &str) -> Result<()> {
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| Error::invalid(format!("{key}: {value:?} is not host:port")))?;
    if host.is_empty() {
        return Err(Error::invalid(format!(
            "{key}: {value:?} has an empty host"
        )));
    }
    if let Some(c) = host
        .chars()
        .find(|c| matches!(c, ',' | '=') || c.is_whitespace() || c.is_control())
    {
        return Err(Error::invalid(format!(
            "{key}: {value:?} has {c:?} in its host"
        )));
    }
    port.parse::<u16>()
        .map_err(|_| Error::invalid(format!("{key}: {value:?} has a bad port")))?;
    Ok(())
}

/// Resolves `host:port` to a socket address.
pub fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .map_err(|e| Error::invalid(format!("cannot resolve {addr:?}: {e}")))?
        .next()
        .ok_or_else(|| Error::invalid(format!("{addr:?} resolves to no address")))
}

/// Parses `1=127.0.0.1:7001,2=127.0.0.1:7002`.
pub fn parse_peers(value: &str) -> Result<BTreeMap<u64, String>> {
    let mut peers = BTreeMap::new();
    if value.trim().is_empty() {
        return Ok(peers);
    }
    for item in value.split(',') {
        let item = item.trim();
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| Error::invalid(format!("peers: {item:?} is not id=host:port")))?;
        let id = parse_u64("peers", id, 1, u64::MAX)?;
        check_addr("peers", addr.trim())?;
        if peers.insert(id, addr.trim().to_string()).is_some() {
            return Err(Error::invalid(format!("peers: node id {id} listed twice")));
        }
        if peers.len() > PEERS_MAX {
            return Err(Error::invalid(format!(
                "peers: more than {PEERS_MAX} members"
            )));
        }
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_validate() {
        let mut c = Config::default();
        c.set("dir", "/tmp/x").unwrap();
        c.set("node_id", "2").unwrap();
        c.set(
            "peers",
            "1=127.0.0.1:7001, 2=127.0.0.1:7002,3=localhost:7003",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen_addr(), Some("127.0.0.1:7002"));
        assert!(!c.single_node());
    }

    #[test]
    fn rejects_bad_input() {
        let mut c = Config::default();
        assert!(matches!(c.set("nope", "1"), Err(Error::InvalidArgument(_))));
        assert!(c.set("node_id", "0").is_err());
        assert!(c.set("node_id", "-1").is_err());
        assert!(c.set("node_id", "x").is_err());
        assert!(c.set("peers", "1=a").is_err());
        assert!(c.set("peers", "1=:70").is_err());
        assert!(c.set("peers", "x=127.0.0.1:1").is_err());
        assert!(c.set("peers", "1=127.0.0.1:1,1=127.0.0.1:2").is_err());
        assert!(c.set("listen", "127.0.0.1").is_err());
        assert!(c.set("join", "maybe").is_err());
        assert!(c.validate().is_err(), "dir is required");
        c.set("dir", "d").unwrap();
        c.set("peers", "2=127.0.0.1:1").unwrap();
        assert!(c.validate().is_err(), "self must be in peers");
        c.set("election_ticks", "2").unwrap();
        c.set("heartbeat_ticks", "2").unwrap();
        assert!(c.validate().is_err());
    }
}
