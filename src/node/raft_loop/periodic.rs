//! What the raft thread does on each tick besides ticking raft: compact the log, renew the
//! read lease ahead of time, propose expiry of keys whose TTL passed (leader only), and publish
//! figures for `stats`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use raft::{ProgressState, StateRole};

use super::RaftLoop;
use crate::command::{Command, Op};
use crate::error::Result;
use crate::replica::PeerProgress;

/// Most keys one expiry entry removes.
const EXPIRE_BATCH_MAX: usize = 1000;
/// A key proposed for expiry is not proposed again for this long (the entry may be in flight).
const EXPIRE_RETRY: Duration = Duration::from_secs(3);
/// How often the figures for `stats` are refreshed.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// State of the periodic work.
#[derive(Default)]
pub struct Periodic {
    expiring: HashMap<(Vec<u8>, u64), Instant>,
    stats_at: Option<Instant>,
    proposals_at_stats: u64,
}

impl RaftLoop {
    /// Runs the periodic work; an error is fatal (a failed log write).
    pub(super) fn on_tick(&mut self, now: Instant) -> Result<()> {
        self.maybe_compact()?;
        self.renew_lease(now);
        if self.raw.raft.state == StateRole::Leader {
            self.propose_expiry(now);
        }
        self.publish_stats(now);
        Ok(())
    }

    /// Drops log entries below the last durable snapshot point, keeping a margin for
    /// followers that are a little behind, the entries a follower receiving a snapshot will
    /// need once it has installed it, and those a live follower being probed still needs
    /// (including one that has just been sent a snapshot and not yet answered).
    fn maybe_compact(&mut self) -> Result<()> {
        let snap = self.shared.snapshot_index.load(Ordering::Acquire);
        let mut target = snap
            .saturating_sub(self.compaction_margin)
            .min(self.raw.raft.raft_log.applied);
        if self.raw.raft.state == StateRole::Leader {
            // Without this, writes that go on during a long transfer get the log compacted
            // past the snapshot being sent (or, once it is installed, past the point the
            // follower resumes from), and the follower needs another one, and so on. A
            // follower that needs entries already gone holds nothing back (it needs a
            // snapshot anyway), nor does one silent for an election timeout (check-quorum
            // clears `recent_active`), so a dead or hopeless peer never stops compaction.
            let truncated = self.raw.store().truncated_index();
            let needed = self
                .raw
                .raft
                .prs()
                .iter()
                .filter_map(|(_, p)| match p.state {
                    ProgressState::Snapshot => Some(p.pending_snapshot),
                    // Right after a snapshot was sent, raft probes from the snapshot's
                    // index while `matched` is still the old one: keep what it will ask for.
                    ProgressState::Probe if p.recent_active => {
                        [p.matched, p.next_idx.saturating_sub(1)]
                            .into_iter()
                            .find(|&i| i >= truncated)
                    }
                    _ => None,
                })
                .min();
            if let Some(needed) = needed {
                target = target.min(needed);
            }
        }
        let store = self.raw.mut_store();
        if target > store.truncated_index() && target <= store.last_index_now() {
            store.compact(target)?;
            log::debug!(
                "node {}: log compacted through {target}",
                self.shared.node_id
            );
        }
        Ok(())
    }

    /// While lease reads keep coming, confirms leadership again before half the lease is gone,
    /// so that they rarely wait for a quorum round.
    fn renew_lease(&mut self, now: Instant) {
        let wanted = self
            .lease_wanted
            .is_some_and(|t| now.duration_since(t) < self.lease_duration);
        if !wanted || self.raw.raft.state != StateRole::Leader {
            return;
        }
        let half_left = self
            .lease_until
            .is_some_and(|u| u > now + self.lease_duration / 2);
        let renewing = self.read_batches.values().any(|(_, w)| w.is_empty());
        if !half_left && !renewing {
            self.request_read_index(Vec::new());
        }
    }

    /// Proposes the removal of keys whose deadline passed. Every replica then removes them at
    /// the same index; reads hide them already (each replica by its own clock).
    fn propose_expiry(&mut self, now: Instant) {
        self.periodic
            .expiring
            .retain(|_, at| now.duration_since(*at) < EXPIRE_RETRY);
        let Ok(sm) = self.shared.state_machine() else {
            return;
        };
        let due = match sm.due_keys(crate::replica::now_ms(), EXPIRE_BATCH_MAX) {
            Ok(d) => d,
            Err(e) => {
                log::warn!(
                    "node {}: cannot scan for expired keys: {e}",
                    self.shared.node_id
                );
                return;
            }
        };
        let fresh: Vec<(Vec<u8>, u64)> = due
            .into_iter()
            .filter(|k| !self.periodic.expiring.contains_key(k))
            .collect();
        if fresh.is_empty() {
            return;
        }
        let keys: Vec<(&[u8], u64)> = fresh.iter().map(|(k, at)| (k.as_slice(), *at)).collect();
        let data = Command {
            client_id: 0,
            seq: 0,
            watermark: 0,
            op: Op::Expire(keys),
        }
        .encode();
        if self.raw.propose(Vec::new(), data).is_ok() {
            for k in fresh {
                self.periodic.expiring.insert(k, now);
            }
        }
    }

    fn publish_stats(&mut self, now: Instant) {
        let p = &mut self.periodic;
        let elapsed = p.stats_at.map_or(STATS_EVERY, |t| now.duration_since(t));
        if elapsed < STATS_EVERY {
            return;
        }
        let s = &self.shared;
        let proposals = s.proposals.load(Ordering::Relaxed);
        let rate = (proposals - p.proposals_at_stats) as f64 / elapsed.as_secs_f64();
        s.proposal_rate.store(rate.to_bits(), Ordering::Relaxed);
        p.proposals_at_stats = proposals;
        p.stats_at = Some(now);
        s.log_bytes
            .store(self.raw.store().disk_bytes(), Ordering::Relaxed);
        let mut progress = Vec::new();
        if self.raw.raft.state == StateRole::Leader {
            for (&id, pr) in self.raw.raft.prs().iter() {
                if id == s.node_id {
                    continue;
                }
                let state = match pr.state {
                    ProgressState::Probe => "probe",
                    ProgressState::Replicate => "replicate",
                    ProgressState::Snapshot => "snapshot",
                };
                progress.push(PeerProgress {
                    id,
                    match_index: pr.matched,
                    next_index: pr.next_idx,
                    state,
                });
            }
            progress.sort_by_key(|p| p.id);
        }
        *s.progress.lock().unwrap_or_else(|p| p.into_inner()) = progress;
    }
}
