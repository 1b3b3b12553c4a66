//! A cluster of replica processes behind per-link proxies, its membership as the harness
//! knows it, and the end-of-run steps that need every replica: healing and convergence.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::net::Net;
use super::process::{parse_kv, Proc, Reply};

/// After healing, every replica must reach the same applied index and state within this.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Raft timing for the fault tests: fast elections that still hold on a loaded 2-core box.
pub fn raft_options(snapshot_entries: u64) -> Vec<(String, String)> {
    let mut o: Vec<(String, String)> = crate::common::FAST_RAFT
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    o.push(("snapshot_entries".into(), snapshot_entries.to_string()));
    o.push((
        "compaction_margin".into(),
        (snapshot_entries / 10).to_string(),
    ));
    o
}

pub struct Cluster {
    members: Mutex<Vec<Arc<Proc>>>,
    /// Replicas removed from the cluster (their processes are stopped).
    retired: Mutex<Vec<Arc<Proc>>>,
    /// `None` for a single-node replica (no peers, no transport).
    pub net: Option<Net>,
    pub dir: PathBuf,
    opts: Vec<(String, String)>,
    /// Replicas run under libfiu (joiners too).
    fiu: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cluster {
    /// Starts `n` replicas (n = 1: single-node mode) with data under `dir`.
    pub fn start(n: usize, dir: &Path, opts: &[(String, String)], seed: u64) -> Cluster {
        Cluster::start_with(n, dir, opts, seed, |_| None, false)
    }

    /// Like [`Cluster::start`], with a different argv prefix for some replicas, or with
    /// every founding replica under libfiu (`fiu`) for disk faults.
    pub fn start_with(
        n: usize,
        dir: &Path,
        opts: &[(String, String)],
        seed: u64,
        program_for: impl Fn(u64) -> Option<Vec<String>>,
        fiu: bool,
    ) -> Cluster {
        std::fs::create_dir_all(dir).expect("creating the run directory");
        let ids: Vec<u64> = (1..=n as u64).collect();
        let net = (n > 1).then(|| Net::new(&ids, seed));
        let procs: Vec<Arc<Proc>> = ids
            .iter()
            .map(|&id| {
                let peers = net
                    .as_ref()
                    .map(|net| net.peers_for(id, &ids))
                    .unwrap_or_default();
                Arc::new(Proc::new(id, &dir.join(format!("n{id}")), &peers, opts))
            })
            .collect();
        for p in &procs {
            if fiu {
                p.set_fiu(&dir.join(format!("fiu-{}", p.id)));
            }
            if let Some(program) = program_for(p.id) {
                p.set_program(program);
            }
            p.start();
        }
        Cluster {
            members: Mutex::new(procs),
            retired: Mutex::default(),
            net,
            dir: dir.to_path_buf(),
            opts: opts.to_vec(),
            fiu,
        }
    }

    /// The replicas that are members, running or not.
    pub fn members(&self) -> Vec<Arc<Proc>> {
        lock(&self.members).clone()
    }

    pub fn ids(&self) -> Vec<u64> {
        lock(&self.members).iter().map(|p| p.id).collect()
    }

    pub fn proc(&self, id: u64) -> Arc<Proc> {
        let members = lock(&self.members);
        let retired = lock(&self.retired);
        members
            .iter()
            .chain(retired.iter())
            .find(|p| p.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
            .clone()
    }

    /// Removes every fault: links healed, paused processes resumed, dead ones restarted.
    pub fn heal(&self) {
        if let Some(net) = &self.net {
            net.heal();
        }
        for p in self.members() {
            if p.paused() {
                p.pause(false);
            }
            if !p.running() {
                p.start();
            }
        }
    }

    /// The leader as reported by the running, unpaused members when they agree; else 0.
    pub fn leader(&self) -> u64 {
        let mut seen = None;
        for p in self.members().iter().filter(|p| p.running() && !p.paused()) {
            let st = parse_kv(&p.must("status", Duration::from_secs(30)));
            let l: u64 = st.get("leader").and_then(|v| v.parse().ok()).unwrap_or(0);
            match seen {
                None => seen = Some(l),
                Some(x) if x != l => return 0,
                _ => {}
            }
        }
        seen.unwrap_or(0)
    }

    /// The leader according to one running, unpaused member (0: it knows none). Cheaper than
    /// [`Cluster::leader`]: each status query waits for the client call in progress on that
    /// replica, which under faults can take a request timeout.
    pub fn leader_hint(&self, pick: usize) -> u64 {
        let up: Vec<Arc<Proc>> = self
            .members()
            .into_iter()
            .filter(|p| p.running() && !p.paused())
            .collect();
        if up.is_empty() {
            return 0;
        }
        let st = parse_kv(&up[pick % up.len()].must("status", Duration::from_secs(30)));
        st.get("leader").and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// Runs an admin command on some running member until it is answered `OK` or with a
    /// reply `done` accepts; gives up after `within`. An error reply leaves the change
    /// possibly made, so the command must be safe to repeat.
    fn admin(
        &self,
        cmd: &str,
        done: impl Fn(&str) -> bool,
        within: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let mut last = Reply::Down;
        while Instant::now() < deadline {
            let leader = self.leader();
            let target = match leader {
                0 => self
                    .members()
                    .into_iter()
                    .find(|p| p.running() && !p.paused()),
                l => Some(self.proc(l)),
            };
            if let Some(p) = target {
                last = p.admin_call(cmd, Duration::from_secs(60));
                if let Reply::Line(l) = &last {
                    if l == "OK" || done(l) {
                        return Ok(());
                    }
                }
            }
            thread::sleep(Duration::from_millis(300));
        }
        Err(format!(
            "{cmd:?} did not complete within {within:?}: {last:?}"
        ))
    }

    /// Replaces member `victim` by a new, empty replica: `remove`, stop its process, start
    /// a joiner, `add` it. Returns the new replica.
    pub fn replace(&self, victim: u64) -> Result<Arc<Proc>, String> {
        let net = self.net.as_ref().ok_or("a single node has no membership")?;
        let within = Duration::from_secs(60);
        self.admin(
            &format!("remove {victim}"),
            |l| l.contains("not a member"),
            within,
        )?;
        let old = {
            let mut members = lock(&self.members);
            let i = members
                .iter()
                .position(|p| p.id == victim)
                .expect("a member");
            members.remove(i)
        };
        old.retire();
        lock(&self.retired).push(old);
        let id = {
            let m = lock(&self.members);
            let r = lock(&self.retired);
            m.iter().chain(r.iter()).map(|p| p.id).max().unwrap_or(0) + 1
        };
        let ids = self.ids();
        let (listen, advertised) = net.add_node(id, &ids);
        let mut opts = self.opts.clone();
        opts.push(("join".into(), "true".into()));
        opts.push(("listen".into(), listen.to_string()));
        let peers = net.peers_for(id, &ids);
        let p = Arc::new(Proc::new(
            id,
            &self.dir.join(format!("n{id}")),
            &peers,
            &opts,
        ));
        p.start();
        lock(&self.members).push(p.clone());
        self.admin(
            &format!("add {id} {advertised}"),
            |l| l.contains("already"),
            within,
        )?;
        Ok(p)
    }

    /// Waits until every member reports the same applied index and the same digest of its
    /// data; returns one digest line, or an error naming each member's figures.
    pub fn converge(&self, within: Duration) -> Result<String, String> {
        let deadline = Instant::now() + within;
        loop {
            let members = self.members();
            let lines: Vec<String> = members
                .iter()
                .map(|p| p.must("digest", Duration::from_secs(30)))
                .collect();
            let digests: Vec<HashMap<String, String>> = lines.iter().map(|l| parse_kv(l)).collect();
            let same = digests.iter().all(|d| {
                d.get("digest").is_some()
                    && d.get("applied") == digests[0].get("applied")
                    && d.get("digest") == digests[0].get("digest")
            });
            if same {
                return Ok(lines[0].clone());
            }
            if Instant::now() >= deadline {
                let detail: Vec<String> = members
                    .iter()
                    .zip(&lines)
                    .map(|(p, l)| format!("node {}: {l} | {}", p.id, p.must("status", within)))
                    .collect();
                return Err(format!(
                    "replicas did not converge within {within:?}:\n{}",
                    detail.join("\n")
                ));
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops every process (kill -9: the checks are done, and a clean close is not what
    /// these tests are about).
    pub fn stop(&self) {
        for p in self.members().iter().chain(lock(&self.retired).iter()) {
            p.kill9();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}
