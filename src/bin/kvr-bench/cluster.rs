//! A 3-replica kvr cluster on 127.0.0.1: replica 1 in this process (Rust API or C ABI),
//! replicas 2 and 3 as `kvr` CLI processes.
//!
//! Replica 1 should lead, so that the in-process writers measure the leader's path rather than
//! a forwarding hop. The children get an election timeout six times replica 1's: with pre-vote
//! and check-quorum on, replica 1 (1–2 s) campaigns long before either child (6–12 s) would,
//! and afterwards the children's leader lease refuses any disruptive vote. If some other
//! replica wins anyway (a stalled machine), the run goes on against it and reports the leader.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::child;
use crate::procfs::{self, Mem};
use crate::signal;
use crate::store::{Api, Store};

/// Replicas in the cluster; replica 1 is in-process, the others are children.
pub const REPLICAS: u64 = 3;
/// Replica 1's election timeout in ticks (kvr's default).
const LEADER_ELECTION_TICKS: u32 = 10;
/// The children's election timeout in ticks: see the module docs.
const FOLLOWER_ELECTION_TICKS: u32 = 60;
/// How long a fresh cluster may take to elect a leader and commit a first write.
const LEADER_WAIT: Duration = Duration::from_secs(60);
/// Fresh starts tried before giving up (a port taken meanwhile by another program).
const START_ATTEMPTS: usize = 3;
/// How long a child may take to close cleanly after its stdin closes.
const CHILD_EXIT_WAIT: Duration = Duration::from_secs(15);
/// How often the leader wait polls.
const LEADER_POLL: Duration = Duration::from_millis(50);
/// How long a child may take to answer `status`.
const STATUS_WAIT: Duration = Duration::from_secs(10);

/// A running cluster. Dropping it kills the children.
pub struct Cluster {
    store: Option<Store>,
    children: Vec<ChildReplica>,
    /// The leader once the cluster first committed a write.
    pub leader: u64,
    /// Directory holding every replica's data.
    dir: PathBuf,
}

/// One child replica process.
struct ChildReplica {
    id: u64,
    proc: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl Drop for ChildReplica {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

impl Cluster {
    /// Starts a fresh cluster under `dir` (wiped first) and waits until it commits a write.
    pub fn start(api: Api, dir: &Path, kvr_bin: &Path) -> Result<Cluster, String> {
        let mut last = String::new();
        for attempt in 1..=START_ATTEMPTS {
            signal::check()?;
            match Self::try_start(api, dir, kvr_bin) {
                Ok(c) => return Ok(c),
                Err(e) => {
                    eprintln!("kvr-bench: cluster start attempt {attempt} failed: {e}");
                    last = e;
                }
            }
        }
        Err(format!("cannot start a kvr cluster: {last}"))
    }

    fn try_start(api: Api, dir: &Path, kvr_bin: &Path) -> Result<Cluster, String> {
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(|e| format!("wipe {}: {e}", dir.display()))?;
        }
        fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let peers = peer_list(&free_ports()?);
        let mut children = Vec::new();
        for id in 2..=REPLICAS {
            children.push(spawn_replica(kvr_bin, id, dir, &peers)?);
        }
        let election = LEADER_ELECTION_TICKS.to_string();
        let options = [
            ("node_id", "1".to_string()),
            ("dir", dir.join("1").display().to_string()),
            ("peers", peers),
            ("election_ticks", election),
        ];
        let store = Store::open_kvr(api, &options)?;
        let mut cluster = Cluster {
            store: Some(store),
            children,
            leader: 0,
            dir: dir.to_path_buf(),
        };
        cluster.leader = cluster.wait_for_leader()?;
        if cluster.leader != 1 {
            eprintln!(
                "kvr-bench: replica {} leads, not replica 1: writes are forwarded",
                cluster.leader
            );
        }
        Ok(cluster)
    }

    /// Directory holding every replica's data.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The in-process replica.
    pub fn store(&self) -> &Store {
        self.store
            .as_ref()
            .expect("the store is taken only by stop")
    }

    fn wait_for_leader(&mut self) -> Result<u64, String> {
        let deadline = Instant::now() + LEADER_WAIT;
        while Instant::now() < deadline {
            signal::check()?;
            self.check_alive()?;
            if self.store().leadership().0 != 0 {
                // A committed write proves the whole path: election, replication, apply.
                self.store().put(b"kvr-bench-probe", b"1")?;
                return Ok(self.store().leadership().0);
            }
            thread::sleep(LEADER_POLL);
        }
        Err(format!("no leader within {LEADER_WAIT:?}"))
    }

    /// Fails if a child replica has exited, quoting its log.
    pub fn check_alive(&mut self) -> Result<(), String> {
        for r in &mut self.children {
            if let Ok(Some(status)) = r.proc.try_wait() {
                return Err(format!(
                    "replica {} exited ({status}); its log ({}) ends:\n{}",
                    r.id,
                    r.log.display(),
                    child::tail(&r.log)
                ));
            }
        }
        Ok(())
    }

    /// Process ids of replicas 1, 2, 3 (replica 1 is this process).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![std::process::id()];
        pids.extend(self.children.iter().map(|r| r.proc.id()));
        pids
    }

    /// A figure of replica `id`'s status (`snapshots_taken`, `applied`, ...): replica 1's from
    /// the API, a child's by asking its REPL for `status` and reading the reply from its log.
    pub fn status_u64(&mut self, id: u64, key: &str) -> Result<u64, String> {
        if id == 1 {
            let stats = self.store().stats_json().ok_or("replica 1 has no stats")?;
            let j = crate::json::parse(&stats).map_err(|e| format!("replica 1 stats: {e}"))?;
            let v = j
                .num(key)
                .ok_or_else(|| format!("replica 1 stats lack {key}"))?;
            return Ok(v as u64);
        }
        let r = self
            .children
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or_else(|| format!("no replica {id}"))?;
        let mut log = File::open(&r.log).map_err(|e| format!("open {}: {e}", r.log.display()))?;
        log.seek(SeekFrom::End(0))
            .map_err(|e| format!("seek {}: {e}", r.log.display()))?;
        let stdin = r.stdin.as_mut().ok_or("the replica's stdin is closed")?;
        stdin
            .write_all(b"status\n")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("asking replica {id} for its status: {e}"))?;
        let deadline = Instant::now() + STATUS_WAIT;
        let (line_start, field) = (format!("node={id} "), format!("{key}="));
        let mut fresh = Vec::new();
        loop {
            // Only what the replica wrote since the question: its reply and log lines.
            let _ = log.read_to_end(&mut fresh);
            // Whole lines only: a line still being written could show a cut-off value.
            let whole = fresh.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let text = String::from_utf8_lossy(&fresh[..whole]);
            let reply = text
                .lines()
                .filter(|l| l.starts_with(&line_start))
                .find_map(|l| l.split(' ').find_map(|kv| kv.strip_prefix(field.as_str())));
            if let Some(value) = reply {
                return value
                    .parse()
                    .map_err(|e| format!("replica {id} status: bad {key} {value:?}: {e}"));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "replica {id} did not answer status within {STATUS_WAIT:?}"
                ));
            }
            thread::sleep(LEADER_POLL);
        }
    }

    /// Resident memory of replicas 1, 2, 3 (zeros for a process that is gone).
    pub fn mem(&self) -> Vec<Mem> {
        self.pids()
            .into_iter()
            .map(|p| procfs::mem(p).unwrap_or_default())
            .collect()
    }

    /// Closes replica 1, then lets the children close on stdin EOF (killing stragglers).
    pub fn stop(mut self) -> Result<(), String> {
        for r in &mut self.children {
            drop(r.stdin.take());
        }
        let closed = self.store.take().map_or(Ok(()), Store::close);
        for r in &mut self.children {
            match child::wait_timeout(&mut r.proc, CHILD_EXIT_WAIT)? {
                Some(s) if !s.success() => eprintln!("kvr-bench: replica {} exited {s}", r.id),
                Some(_) => {}
                None => eprintln!("kvr-bench: replica {} did not exit, killing it", r.id),
            }
        }
        closed.map_err(|e| format!("closing replica 1: {e}"))
    }
}

/// Loopback ports that were free a moment ago (all held at once, so they are distinct).
fn free_ports() -> Result<Vec<u16>, String> {
    let listeners = (0..REPLICAS)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bind: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("local_addr: {e}"))
}

fn peer_list(ports: &[u16]) -> String {
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect();
    peers.join(",")
}

/// Starts `kvr` for replica `id`; stdin stays open (the CLI exits on EOF), output goes to
/// `dir/<id>.log`.
fn spawn_replica(kvr_bin: &Path, id: u64, dir: &Path, peers: &str) -> Result<ChildReplica, String> {
    let log = dir.join(format!("{id}.log"));
    let out = File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| format!("dup log: {e}"))?;
    let mut cmd = Command::new(kvr_bin);
    cmd.arg("--node-id")
        .arg(id.to_string())
        .arg("--dir")
        .arg(dir.join(id.to_string()))
        .arg("--peers")
        .arg(peers)
        .arg("--option")
        .arg(format!("election_ticks={FOLLOWER_ELECTION_TICKS}"))
        .env("KVR_LOG", std::env::var("KVR_LOG").unwrap_or("info".into()))
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err);
    let mut proc = child::die_with_parent(&mut cmd)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", kvr_bin.display()))?;
    let stdin = proc.stdin.take();
    Ok(ChildReplica {
        id,
        proc,
        stdin,
        log,
    })
}
