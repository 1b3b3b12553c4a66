//! Clients: one per replica, driving that replica's REPL with one outstanding operation, as
//! the host program of an embedded replica would. Each records every operation it issues.
//!
//! The mix: reads, writes and deletes of a few register keys (checked for linearizability),
//! and adds to a set (unique keys, each written once: checked for lost acknowledged writes).
//! Every written value is unique, so a write applied twice or out of place shows up as a
//! read that no linearization explains.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::history::{History, Op, OpKind, Outcome};
use super::process::{Proc, Reply, REPLY_TIMEOUT};
use super::rng::Rng;

/// What the clients do.
#[derive(Debug, Clone)]
pub struct Mix {
    /// Register keys `r0..`.
    pub keys: usize,
    /// Share of operations that add to the set, in percent.
    pub set_percent: u64,
    /// Of register operations: reads, in percent; the rest are writes, some of them deletes.
    pub read_percent: u64,
    /// Of reads: lease reads (`lget`), in percent; the rest are ReadIndex reads (`get`).
    /// The checker holds both to linearizability.
    pub lease_percent: u64,
    pub delete_percent: u64,
}

/// Counters shared by the clients.
#[derive(Default)]
pub struct ClientStats {
    pub ops: AtomicU64,
    pub ok: AtomicU64,
    pub unknown: AtomicU64,
    pub failed_reads: AtomicU64,
    /// Lease reads that returned a value or NOT_FOUND.
    pub lease_reads: AtomicU64,
}

/// How a reply to a write is read.
pub fn write_outcome(r: &Reply) -> Outcome {
    match r {
        Reply::Line(l) if l == "OK" => Outcome::Ok,
        // Invalid argument: refused before anything was proposed.
        Reply::Line(l) if l.starts_with("ERR -2:") => Outcome::Failed,
        // Every other error (timeout, no leader, closed, I/O, removed, refused, a killed
        // process) leaves the write possibly applied: kvr may still commit the proposal.
        _ => Outcome::Unknown,
    }
}

/// A read's result, if the reply is one (`None`: the read failed and says nothing).
pub fn read_result(r: &Reply) -> Option<Option<String>> {
    match r {
        Reply::Line(l) if l == "NOT_FOUND" => Some(None),
        Reply::Line(l) if l.starts_with("ERR ") || l.starts_with("ERR:") => None,
        Reply::Line(l) => Some(Some(l.clone())),
        _ => None,
    }
}

pub struct Client {
    pub node: Arc<Proc>,
    pub history: Arc<History>,
    pub stats: Arc<ClientStats>,
    pub mix: Mix,
    pub rng: Rng,
    /// Client id, renewed after every unknown outcome.
    id: u64,
    seq: u64,
}

impl Client {
    pub fn new(
        node: Arc<Proc>,
        history: Arc<History>,
        stats: Arc<ClientStats>,
        mix: Mix,
        rng: Rng,
    ) -> Client {
        let id = node.id * 1_000_000;
        Client {
            node,
            history,
            stats,
            mix,
            rng,
            id,
            seq: 0,
        }
    }

    pub fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) && !self.node.retired() {
            if !self.node.running() {
                thread::sleep(Duration::from_millis(20));
                continue;
            }
            self.one_op();
        }
    }

    /// After an error a client waits a little before its next call, as a real one would:
    /// a replica that fails fast (closed, removed) would otherwise be asked thousands of
    /// times a second, and each unknown outcome widens the checker's search.
    fn backoff(&mut self) {
        thread::sleep(Duration::from_millis(self.rng.range(20, 100)));
    }

    fn one_op(&mut self) {
        self.node.yield_to_admin();
        self.seq += 1;
        let node = self.node.id;
        if self.rng.chance(self.mix.set_percent) {
            let element = format!("s{node}-{}", self.seq);
            let r = self
                .node
                .call(&format!("put {element} {}", self.seq), REPLY_TIMEOUT);
            if r == Reply::Down {
                return;
            }
            let outcome = write_outcome(&r);
            self.count(outcome == Outcome::Ok, outcome == Outcome::Unknown);
            self.history.record_add(element, outcome);
            if outcome != Outcome::Ok {
                self.backoff();
            }
            return;
        }
        let key = format!("r{}", self.rng.below(self.mix.keys as u64));
        let call_ns = self.history.now_ns();
        if self.rng.chance(self.mix.read_percent) {
            let lease = self.rng.chance(self.mix.lease_percent);
            let cmd = if lease { "lget" } else { "get" };
            let r = self.node.call(&format!("{cmd} {key}"), REPLY_TIMEOUT);
            let ret_ns = self.history.now_ns();
            self.stats.ops.fetch_add(1, Ordering::Relaxed);
            match read_result(&r) {
                Some(v) => {
                    self.stats.ok.fetch_add(1, Ordering::Relaxed);
                    if lease {
                        self.stats.lease_reads.fetch_add(1, Ordering::Relaxed);
                    }
                    self.history.record(Op {
                        client: self.id,
                        key,
                        kind: OpKind::Get(v),
                        call_ns,
                        ret_ns: Some(ret_ns),
                    });
                }
                None => {
                    self.stats.failed_reads.fetch_add(1, Ordering::Relaxed);
                    self.backoff();
                }
            }
            return;
        }
        let (line, kind) = if self.rng.chance(self.mix.delete_percent) {
            (format!("delete {key}"), OpKind::Delete)
        } else {
            let v = format!("w{node}-{}", self.seq);
            (format!("put {key} {v}"), OpKind::Put(v))
        };
        let r = self.node.call(&line, REPLY_TIMEOUT);
        let ret_ns = self.history.now_ns();
        if r == Reply::Down {
            return;
        }
        let outcome = write_outcome(&r);
        self.count(outcome == Outcome::Ok, outcome == Outcome::Unknown);
        let ret_ns = match outcome {
            Outcome::Ok => Some(ret_ns),
            Outcome::Failed => {
                self.backoff();
                return;
            }
            Outcome::Unknown => None,
        };
        self.history.record(Op {
            client: self.id,
            key,
            kind,
            call_ns,
            ret_ns,
        });
        if ret_ns.is_none() {
            self.id += 1;
            self.backoff();
        }
    }

    fn count(&self, ok: bool, unknown: bool) {
        self.stats.ops.fetch_add(1, Ordering::Relaxed);
        if ok {
            self.stats.ok.fetch_add(1, Ordering::Relaxed);
        }
        if unknown {
            self.stats.unknown.fetch_add(1, Ordering::Relaxed);
        }
    }
}
