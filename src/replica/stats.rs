//! `stats`: a documented JSON view of a replica for monitoring.

use std::sync::atomic::Ordering;

use super::Replica;
use crate::json::Json;

/// Progress of one peer, as seen by the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProgress {
    /// Peer id.
    pub id: u64,
    /// Highest index known to be on the peer's disk.
    pub match_index: u64,
    /// Next index to send.
    pub next_index: u64,
    /// `probe`, `replicate` or `snapshot`.
    pub state: &'static str,
}

impl Replica {
    /// Statistics as JSON. Fields: `node_id`, `role`, `leader_id`, `term`, `commit_index`,
    /// `applied_index`, `first_index`, `last_index`, `log_entries`, `log_bytes`, `data_bytes`,
    /// `snapshot_index`, `snapshots_taken`, `snapshots_installed`, `snapshots_sent`,
    /// `proposals_total`, `proposals_per_s`, `apply_batches`, `apply_batch_avg`,
    /// `apply_batch_max`, `entries_applied`, `duplicates`, `log_writes` (log appends, one
    /// fdatasync each), `log_write_us` and `apply_commit_us` (microseconds the raft thread spent
    /// in log appends and the apply thread in committing batches, since open),
    /// `lease_reads_local` (lease reads answered on the caller's thread from the leader's
    /// published lease), `read_rounds` (ReadIndex rounds started for linearizable reads; one
    /// serves every read that joined it), `votes_held` (campaigns of others ignored because this replica
    /// restarted less than an election timeout before), `peers` (on
    /// the leader: `id`,
    /// `match_index`, `next_index`, `lag` = last index − match, `state`), and `transport`
    /// (`sent`, `received`, `dropped`, `refused`, `snapshot_bytes_sent`, `snapshots_received`).
    pub fn stats_json(&self) -> String {
        let st = self.status();
        let s = &self.shared;
        let batches = s.apply_batches.load(Ordering::Relaxed);
        let mut j = Json::new();
        j.begin_object()
            .kv_u64("node_id", st.node_id)
            .kv_str("role", st.role.name())
            .kv_u64("leader_id", st.leader_id)
            .kv_u64("term", st.term)
            .kv_u64("commit_index", st.commit_index)
            .kv_u64("applied_index", st.applied_index)
            .kv_u64("first_index", st.first_index)
            .kv_u64("last_index", st.last_index)
            .kv_u64(
                "log_entries",
                (st.last_index + 1).saturating_sub(st.first_index),
            )
            .kv_u64("log_bytes", s.log_bytes.load(Ordering::Relaxed))
            .kv_u64(
                "data_bytes",
                s.state_machine().map(|sm| sm.disk_bytes()).unwrap_or(0),
            )
            .kv_u64("snapshot_index", st.snapshot_index)
            .kv_u64("snapshots_taken", st.snapshots_taken)
            .kv_u64("snapshots_installed", st.snapshots_installed)
            .kv_u64("snapshots_sent", st.snapshots_sent)
            .kv_u64("proposals_total", s.proposals.load(Ordering::Relaxed))
            .key("proposals_per_s")
            .f64(f64::from_bits(s.proposal_rate.load(Ordering::Relaxed)))
            .kv_u64("apply_batches", batches)
            .key("apply_batch_avg")
            .f64(if batches == 0 {
                0.0
            } else {
                st.entries_applied as f64 / batches as f64
            })
            .kv_u64("apply_batch_max", s.apply_batch_max.load(Ordering::Relaxed))
            .kv_u64("entries_applied", st.entries_applied)
            .kv_u64("duplicates", st.duplicates)
            .kv_u64("log_writes", s.log_writes.load(Ordering::Relaxed))
            .kv_u64("log_write_us", s.log_write_us.load(Ordering::Relaxed))
            .kv_u64("apply_commit_us", s.apply_commit_us.load(Ordering::Relaxed))
            .kv_u64(
                "lease_reads_local",
                s.lease_reads_local.load(Ordering::Relaxed),
            )
            .kv_u64("read_rounds", s.read_rounds.last_started())
            .kv_u64("votes_held", s.votes_held.load(Ordering::Relaxed))
            .key("peers")
            .begin_array();
        for p in s.progress.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            j.begin_object()
                .kv_u64("id", p.id)
                .kv_u64("match_index", p.match_index)
                .kv_u64("next_index", p.next_index)
                .kv_u64("lag", st.last_index.saturating_sub(p.match_index))
                .kv_str("state", p.state)
                .end_object();
        }
        let t = &s.transport;
        j.end_array()
            .key("transport")
            .begin_object()
            .kv_u64("sent", t.sent.load(Ordering::Relaxed))
            .kv_u64("received", t.received.load(Ordering::Relaxed))
            .kv_u64("dropped", t.dropped.load(Ordering::Relaxed))
            .kv_u64("refused", t.refused.load(Ordering::Relaxed))
            .kv_u64(
                "snapshot_bytes_sent",
                t.snapshot_bytes_sent.load(Ordering::Relaxed),
            )
            .kv_u64(
                "snapshots_received",
                t.snapshots_received.load(Ordering::Relaxed),
            )
            .end_object()
            .end_object();
        j.finish()
    }
}
