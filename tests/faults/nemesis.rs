//! Faults, chosen and timed from a schedule's seed, applied while the clients run.
//!
//! An episode applies one or two faults of the schedule's kinds at once, holds them, then
//! undoes them, followed by a quiet spell in which the cluster may recover.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::cluster::Cluster;
use super::process::Proc;
use super::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// kill -9 one or more replicas (sometimes the leader), restart them later.
    Kill,
    /// SIGSTOP a replica (sometimes the leader), SIGCONT later.
    Pause,
    /// Split the cluster into a majority and a minority.
    Partition,
    /// Isolate the leader, fully or in one direction only.
    LeaderIsolation,
    /// Drop and delay Raft messages on every link.
    Degrade,
    /// Move leadership to another replica.
    Transfer,
    /// Replace a replica (the leader half the time): remove it, add a new, empty one that
    /// catches up by snapshot.
    Membership,
    /// fsync/fdatasync or pwrite fail with EIO in one replica (libfiu); the fault clears
    /// with a restart.
    Disk,
}

pub const KINDS: [Kind; 8] = [
    Kind::Kill,
    Kind::Pause,
    Kind::Partition,
    Kind::LeaderIsolation,
    Kind::Degrade,
    Kind::Transfer,
    Kind::Membership,
    Kind::Disk,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::Partition => "partition",
            Kind::LeaderIsolation => "leader-isolation",
            Kind::Degrade => "degrade",
            Kind::Transfer => "transfer",
            Kind::Membership => "membership",
            Kind::Disk => "disk",
        }
    }

    /// Kinds that need peers (everything but kill, pause and disk faults).
    fn networked(self) -> bool {
        !matches!(self, Kind::Kill | Kind::Pause | Kind::Disk)
    }
}

/// What the nemesis did, by fault description (e.g. "partition/blackhole").
pub type FaultCounts = BTreeMap<String, u64>;

pub struct Nemesis<'a> {
    pub cluster: &'a Cluster,
    /// Starts a client for a replica that joined.
    pub on_join: &'a dyn Fn(Arc<Proc>),
    /// What went wrong on the nemesis's side (a membership change that never completed).
    pub problems: Vec<String>,
    pub kinds: Vec<Kind>,
    pub rng: Rng,
    /// Longest a fault is held, in ms.
    pub hold_ms_max: u64,
    /// Longest quiet spell between episodes, in ms.
    pub quiet_ms_max: u64,
    pub counts: FaultCounts,
    pub started: Instant,
    /// Replicas with a disk fault on: restarted (without it) when the episode ends.
    pub disk_faulted: Vec<u64>,
}

impl Nemesis<'_> {
    /// Runs episodes until `deadline` (or `stop`), then heals everything.
    pub fn run(&mut self, deadline: Instant, stop: &AtomicBool) {
        let single = self.cluster.ids().len() == 1;
        self.kinds.retain(|k| !(single && k.networked()));
        while Instant::now() < deadline && !stop.load(Ordering::SeqCst) && !self.kinds.is_empty() {
            let quiet = self.rng.range(300, self.quiet_ms_max);
            sleep_until(Instant::now() + Duration::from_millis(quiet), deadline);
            if Instant::now() >= deadline {
                break;
            }
            let n = if self.kinds.len() > 1 && self.rng.chance(30) {
                2
            } else {
                1
            };
            let mut chosen = self.kinds.clone();
            // The first episode has the schedule's first kind, so that a run of a few
            // schedules is sure to see every kind its seeds name.
            let first_episode = self.counts.is_empty();
            self.rng.shuffle(&mut chosen[usize::from(first_episode)..]);
            chosen.truncate(n);
            // A membership change goes first, while the cluster can still make progress;
            // the other fault of the episode then hits it while the new replica catches up.
            chosen.sort_by_key(|k| *k != Kind::Membership);
            for k in chosen {
                let what = self.apply(k);
                self.log(&what);
                *self.counts.entry(what).or_default() += 1;
            }
            let hold = self.rng.range(500, self.hold_ms_max);
            sleep_until(Instant::now() + Duration::from_millis(hold), deadline);
            self.clear_disk_faults();
            self.cluster.heal();
            self.log("healed");
        }
        self.clear_disk_faults();
        self.cluster.heal();
    }

    fn log(&self, what: &str) {
        eprintln!(
            "nemesis +{:.1}s: {what}",
            self.started.elapsed().as_secs_f64()
        );
    }

    fn ids(&self) -> Vec<u64> {
        self.cluster.ids()
    }

    fn leader(&mut self) -> u64 {
        let pick = self.rng.below(64) as usize;
        self.cluster.leader_hint(pick)
    }

    /// A replica to hit: the leader about half the time, when one is known.
    fn target(&mut self) -> u64 {
        if self.rng.chance(50) {
            let l = self.leader();
            // A hint may name a replica that was just removed.
            if self.ids().contains(&l) {
                return l;
            }
        }
        *self.rng.pick(&self.ids())
    }

    fn apply(&mut self, kind: Kind) -> String {
        match kind {
            Kind::Kill => self.kill(),
            Kind::Pause => {
                let id = self.target();
                self.cluster.proc(id).pause(true);
                "pause".into()
            }
            Kind::Partition => self.partition(),
            Kind::Disk => self.disk(),
            Kind::LeaderIsolation => self.isolate_leader(),
            Kind::Degrade => {
                let net = self.cluster.net.as_ref().expect("networked");
                let drop = self.rng.range(20, 300) as u32;
                let delay = self.rng.range(0, 40) as u32;
                let jitter = self.rng.range(0, 60) as u32;
                net.degrade(drop, delay, jitter);
                "degrade/loss+delay".into()
            }
            Kind::Membership => {
                let victim = self.target();
                match self.cluster.replace(victim) {
                    Ok(p) => {
                        self.log(&format!("replaced node {victim} by node {}", p.id));
                        (self.on_join)(p);
                        "membership/replace".into()
                    }
                    Err(e) => {
                        self.problems.push(format!("replacing node {victim}: {e}"));
                        "membership/failed".into()
                    }
                }
            }
            Kind::Transfer => {
                let l = self.leader();
                let others: Vec<u64> = self.ids().into_iter().filter(|&i| i != l).collect();
                if !self.ids().contains(&l) {
                    return "transfer/no-leader".into();
                }
                let to = *self.rng.pick(&others);
                let reply = self
                    .cluster
                    .proc(l)
                    .admin_call(&format!("transfer {to}"), Duration::from_secs(30));
                self.log(&format!("transfer {l} -> {to}: {reply:?}"));
                "transfer".into()
            }
        }
    }

    /// A replica whose disk failed has stopped (fails closed); the fault clears by
    /// restarting it without the fault, as an operator would once the disk is replaced.
    fn clear_disk_faults(&mut self) {
        for id in std::mem::take(&mut self.disk_faulted) {
            self.cluster.proc(id).kill9();
        }
    }

    fn disk(&mut self) -> String {
        let id = self.target();
        let p = self.cluster.proc(id);
        // A stopped process cannot take the command (it is taken by a thread of its own).
        let (Some(ctl), Some(pid), false) = (p.fiu_ctl(), p.pid(), p.paused()) else {
            return "disk/skipped".into();
        };
        let (points, what) = if self.rng.chance(50) {
            (super::disk::SYNC_POINTS, "disk/fsync-eio")
        } else {
            (super::disk::WRITE_POINTS, "disk/write-eio")
        };
        if let Err(e) = super::disk::try_fiu_ctrl(&ctl, pid, points, Some(super::disk::EIO)) {
            self.log(&format!("disk fault on {id} not injected: {e}"));
            return "disk/skipped".into();
        }
        self.disk_faulted.push(id);
        what.into()
    }

    fn kill(&mut self) -> String {
        let ids = self.ids();
        // Up to a minority at once in a cluster, and now and then a majority (the cluster
        // must then wait for restarts, and every acknowledged write must survive that too).
        let majority = ids.len() / 2 + 1;
        let count = if ids.len() > 1 && self.rng.chance(15) {
            majority
        } else {
            self.rng.range(1, (ids.len() - 1).max(1) as u64) as usize
        };
        let mut victims = vec![self.target()];
        let mut rest: Vec<u64> = ids.into_iter().filter(|i| *i != victims[0]).collect();
        self.rng.shuffle(&mut rest);
        victims.extend(rest.into_iter().take(count - 1));
        for &v in &victims {
            self.cluster.proc(v).kill9();
        }
        // Some come back quickly (crash-restart), others stay down for the whole episode.
        if self.rng.chance(50) {
            thread::sleep(Duration::from_millis(self.rng.range(0, 300)));
            for &v in &victims {
                self.cluster.proc(v).start();
            }
            return "kill/restart".into();
        }
        if victims.len() >= majority {
            "kill/majority".into()
        } else {
            "kill".into()
        }
    }

    fn partition(&mut self) -> String {
        let net = self.cluster.net.as_ref().expect("networked");
        let mut ids = self.ids();
        self.rng.shuffle(&mut ids);
        let minority = self.rng.range(1, ((ids.len() - 1) / 2).max(1) as u64) as usize;
        let groups = vec![ids[..minority].to_vec(), ids[minority..].to_vec()];
        let blackhole = self.rng.chance(50);
        net.partition(&groups, blackhole);
        if blackhole {
            "partition/blackhole".into()
        } else {
            "partition/cut".into()
        }
    }

    fn isolate_leader(&mut self) -> String {
        let net = self.cluster.net.as_ref().expect("networked");
        let mut l = self.leader();
        if !self.ids().contains(&l) {
            l = *self.rng.pick(&self.ids());
        }
        let others: Vec<u64> = self.ids().into_iter().filter(|&i| i != l).collect();
        match self.rng.below(3) {
            0 => {
                net.partition(&[vec![l], others], self.rng.chance(50));
                "leader-isolation/full".into()
            }
            1 => {
                // The leader still hears the others but cannot reach them.
                for &o in &others {
                    net.link(l, o).cut();
                }
                "leader-isolation/outbound".into()
            }
            _ => {
                // The leader reaches the others but hears none of them.
                for &o in &others {
                    net.link(o, l).cut();
                }
                "leader-isolation/inbound".into()
            }
        }
    }
}

fn sleep_until(t: Instant, deadline: Instant) {
    let t = t.min(deadline);
    let now = Instant::now();
    if t > now {
        thread::sleep(t - now);
    }
}
