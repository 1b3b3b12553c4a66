//! A cluster of replica processes behind per-link proxies, and the end-of-run checks that
//! need every replica: healing, convergence, final reads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::net::Net;
use super::process::{parse_kv, Proc};

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
    pub procs: Vec<Arc<Proc>>,
    /// `None` for a single-node replica (no peers, no transport).
    pub net: Option<Net>,
    pub dir: PathBuf,
}

impl Cluster {
    /// Starts `n` replicas (n = 1: single-node mode) with data under `dir`.
    pub fn start(n: usize, dir: &Path, opts: &[(String, String)], seed: u64) -> Cluster {
        Cluster::start_with(n, dir, opts, seed, |_| None)
    }

    /// Like [`Cluster::start`], with a different argv prefix for some replicas (e.g. a
    /// `fiu-run` wrapper).
    pub fn start_with(
        n: usize,
        dir: &Path,
        opts: &[(String, String)],
        seed: u64,
        program_for: impl Fn(u64) -> Option<Vec<String>>,
    ) -> Cluster {
        std::fs::create_dir_all(dir).expect("creating the run directory");
        let ids: Vec<u64> = (1..=n as u64).collect();
        let net = (n > 1).then(|| Net::new(&ids, seed));
        let procs: Vec<Arc<Proc>> = ids
            .iter()
            .map(|&id| {
                let peers = net
                    .as_ref()
                    .map(|net| net.peers_for(id))
                    .unwrap_or_default();
                Arc::new(Proc::new(id, &dir.join(format!("n{id}")), &peers, opts))
            })
            .collect();
        for p in &procs {
            if let Some(program) = program_for(p.id) {
                p.set_program(program);
            }
            p.start();
        }
        Cluster {
            procs,
            net,
            dir: dir.to_path_buf(),
        }
    }

    pub fn proc(&self, id: u64) -> &Arc<Proc> {
        &self.procs[(id - 1) as usize]
    }

    /// Removes every fault: links healed, paused processes resumed, dead ones restarted.
    pub fn heal(&self) {
        if let Some(net) = &self.net {
            net.heal();
        }
        for p in &self.procs {
            if p.paused() {
                p.pause(false);
            }
            if !p.running() {
                p.start();
            }
        }
    }

    /// The leader as reported by the running, unpaused replicas when they agree; else 0.
    pub fn leader(&self) -> u64 {
        let mut seen = None;
        for p in self.procs.iter().filter(|p| p.running() && !p.paused()) {
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

    /// Waits until every replica reports the same applied index and the same digest of its
    /// data; returns the per-node digests line, or an error naming each node's figures.
    pub fn converge(&self, within: Duration) -> Result<String, String> {
        let deadline = Instant::now() + within;
        loop {
            let lines: Vec<String> = self
                .procs
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
                let detail: Vec<String> = self
                    .procs
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
        for p in &self.procs {
            p.kill9();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}
