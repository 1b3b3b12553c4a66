//! What the raft thread does on each tick besides ticking raft: compact the log, renew the
//! read lease ahead of time, propose expiry of keys whose TTL passed (leader only), and publish
//! figures for `stats`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use raft::{Progress, ProgressState, StateRole};

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
        self.maybe_compact(now)?;
        self.renew_lease(now);
        if self.raw.raft.state == StateRole::Leader {
            self.propose_expiry(now);
        }
        self.publish_stats(now);
        Ok(())
    }

    /// Drops log entries below the last durable snapshot point, keeping a margin for
    /// followers that are a little behind, the entries a follower receiving a snapshot will
    /// need once it has installed it, and those a live follower still catching up needs.
    fn maybe_compact(&mut self, now: Instant) -> Result<()> {
        let snap = self.shared.snapshot_index.load(Ordering::Acquire);
        let mut target = snap
            .saturating_sub(self.compaction_margin)
            .min(self.raw.raft.raft_log.applied);
        if self.raw.raft.state == StateRole::Leader {
            let alive = self.read_expiry * 2;
            let truncated = self.raw.store().truncated_index();
            let me = self.raw.raft.id;
            let peers = self.raw.raft.prs().iter().filter(|(id, _)| **id != me);
            let hold = compaction_hold(
                peers.map(|(id, p)| {
                    let live = self
                        .heard
                        .get(id)
                        .is_some_and(|t| now.saturating_duration_since(*t) < alive);
                    (p, live)
                }),
                target,
                truncated,
                self.compaction_hold_max,
            );
            if let Some(hold) = hold {
                target = target.min(hold);
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
            .max(self.shared.lease.last_used())
            .is_some_and(|t| now.saturating_duration_since(t) < self.lease_duration);
        if !wanted || self.raw.raft.state != StateRole::Leader || !self.reads_may_start() {
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

/// The highest index a leader may compact its log through without taking from a follower
/// what it is about to ask for, or `None` when no follower holds compaction back.
///
/// Without this, writes that go on while a snapshot is in transfer get the log compacted past
/// the snapshot (or, once it is installed, past the point the follower resumes from), and the
/// follower needs another one, and so on. A follower being sent a snapshot holds the log at
/// the snapshot's index. A live follower (`live`: heard from lately) holds it at the last
/// index it has, unless that is already gone (it needs a snapshot anyway) or more than
/// `hold_max` entries below `target` (a follower that slow gets a snapshot rather than an
/// ever longer log). A silent one holds nothing back.
fn compaction_hold<'a>(
    peers: impl Iterator<Item = (&'a Progress, bool)>,
    target: u64,
    truncated: u64,
    hold_max: u64,
) -> Option<u64> {
    let floor = target.saturating_sub(hold_max).max(truncated);
    peers
        .filter_map(|(p, live)| match p.state {
            ProgressState::Snapshot => Some(p.pending_snapshot),
            // Right after a snapshot was sent, raft probes from the snapshot's index while
            // `matched` is still the old one: keep what it will ask for.
            ProgressState::Probe if live => [p.matched, p.next_idx.saturating_sub(1)]
                .into_iter()
                .find(|&i| i >= floor),
            ProgressState::Replicate if live => Some(p.matched).filter(|&i| i >= floor),
            _ => None,
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(state: ProgressState, matched: u64, next_idx: u64) -> Progress {
        let mut p = Progress::new(next_idx, 256);
        match state {
            ProgressState::Probe => p.become_probe(),
            ProgressState::Replicate => p.become_replicate(),
            ProgressState::Snapshot => p.become_snapshot(next_idx - 1),
        }
        p.matched = matched;
        p.next_idx = next_idx;
        assert_eq!(p.state, state);
        p
    }

    /// The hold one follower puts on compacting through 2000, given the log starts at
    /// `truncated`.
    fn hold_by(p: &Progress, live: bool, truncated: u64, hold_max: u64) -> Option<u64> {
        compaction_hold([(p, live)].into_iter(), 2000, truncated, hold_max)
    }

    #[test]
    fn a_follower_receiving_a_snapshot_holds_the_log_at_its_index_live_or_not() {
        let p = progress(ProgressState::Snapshot, 0, 901);
        for live in [true, false] {
            assert_eq!(hold_by(&p, live, 500, 100), Some(900));
        }
    }

    #[test]
    fn a_live_follower_probed_after_a_snapshot_keeps_what_it_will_ask_for() {
        // Raft probes from the snapshot's index (next 901) while `matched` is still 0. Raft's
        // own `recent_active` may be off here (it is cleared at each quorum check); what
        // counts is that the follower was heard from lately.
        let mut p = progress(ProgressState::Probe, 0, 901);
        p.recent_active = false;
        assert_eq!(hold_by(&p, true, 500, 5000), Some(900));
        // Silent for two election timeouts: it holds nothing back.
        assert_eq!(hold_by(&p, false, 500, 5000), None);
    }

    #[test]
    fn a_live_follower_catching_up_after_a_snapshot_keeps_its_entries() {
        let p = progress(ProgressState::Replicate, 900, 1200);
        assert_eq!(hold_by(&p, true, 500, 5000), Some(900));
        assert_eq!(hold_by(&p, false, 500, 5000), None);
    }

    #[test]
    fn a_follower_too_far_behind_or_past_the_log_start_holds_nothing() {
        // More than `hold_max` behind the target: it gets a snapshot instead.
        let p = progress(ProgressState::Replicate, 900, 1200);
        assert_eq!(hold_by(&p, true, 500, 1000), None);
        // Needs entries already gone.
        assert_eq!(hold_by(&p, true, 950, 5000), None);
        let q = progress(ProgressState::Probe, 0, 400);
        assert_eq!(hold_by(&q, true, 500, 5000), None);
    }

    #[test]
    fn the_slowest_follower_that_counts_sets_the_hold() {
        let a = progress(ProgressState::Replicate, 1500, 1501);
        let b = progress(ProgressState::Snapshot, 0, 1201);
        let c = progress(ProgressState::Replicate, 600, 601);
        let peers = [(&a, true), (&b, false), (&c, false)];
        assert_eq!(
            compaction_hold(peers.into_iter(), 2000, 500, 5000),
            Some(1200)
        );
    }
}
