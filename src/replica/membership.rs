//! Membership changes through the Rust API: add, add as learner, remove, transfer leadership,
//! list. Each change is a Raft conf change carrying the new member's address, so addresses are
//! part of the replicated state (and of snapshots).

use std::time::{Duration, Instant};

use raft::eraftpb::{ConfChange, ConfChangeType};

use super::Replica;
use crate::command::ConfContext;
use crate::error::{Error, Result};
use crate::node::RaftMsg;

/// The role of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberRole {
    /// Votes and counts towards the quorum.
    Voter,
    /// Receives the log but does not vote.
    Learner,
}

impl MemberRole {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            MemberRole::Voter => "voter",
            MemberRole::Learner => "learner",
        }
    }
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Node id.
    pub id: u64,
    /// Address it listens on (empty if never recorded).
    pub addr: String,
    /// Voter or learner.
    pub role: MemberRole,
}

impl Replica {
    /// Adds node `id`, listening on `addr`, as a voter (or promotes a learner). Returns once the
    /// change is committed and applied on this replica. The new replica is opened with
    /// `join=true` and an empty directory; it catches up by snapshot.
    pub fn add_node(&self, id: u64, addr: &str) -> Result<()> {
        check_addition(self, id, addr)?;
        self.change_membership(ConfChangeType::AddNode, id, addr)
    }

    /// Adds node `id`, listening on `addr`, as a learner (non-voting).
    pub fn add_learner(&self, id: u64, addr: &str) -> Result<()> {
        check_addition(self, id, addr)?;
        self.change_membership(ConfChangeType::AddLearnerNode, id, addr)
    }

    /// Removes node `id` from the cluster. Its id can never be used again. Removing the current
    /// leader hands leadership to another voter first.
    pub fn remove_node(&self, id: u64) -> Result<()> {
        self.check_open()?;
        let members = self.members()?;
        if !members.iter().any(|m| m.id == id) {
            return Err(Error::invalid(format!("node {id} is not a member")));
        }
        if self.status().leader_id == id {
            let next = members
                .iter()
                .find(|m| m.id != id && m.role == MemberRole::Voter)
                .map(|m| m.id);
            match next {
                Some(next) => self.transfer_leader(next)?,
                None => return Err(Error::invalid(format!("node {id} is the only voter"))),
            }
        }
        self.change_membership(ConfChangeType::RemoveNode, id, "")
    }

    /// Asks the cluster to make `id` the leader; returns once a linearizable read on this
    /// replica confirms that `id` leads (a leader this replica merely remembers is not enough).
    pub fn transfer_leader(&self, id: u64) -> Result<()> {
        self.check_open()?;
        let deadline = Instant::now() + self.timeout();
        let mut next_ask = Instant::now();
        loop {
            self.check_open()?;
            if self.status().leader_id == id {
                // Hear from the current leader before believing it: the view may be stale.
                self.read_barrier()?;
                if self.status().leader_id == id {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(self.explain(Error::Timeout));
            }
            if Instant::now() >= next_ask {
                self.send_to_raft(RaftMsg::TransferLeader { to: id }, deadline)?;
                next_ask = Instant::now() + self.retry_interval();
            }
            std::thread::sleep(Duration::from_millis(self.cfg.tick_ms.clamp(1, 20)));
        }
    }

    /// The current members, read linearizably.
    pub fn members(&self) -> Result<Vec<MemberInfo>> {
        self.check_open()?;
        self.read_barrier()?;
        let sm = self.shared.state_machine()?;
        let cs = sm.conf_state()?;
        let addrs = sm.members()?;
        let addr_of = |id: u64| {
            addrs
                .iter()
                .find(|m| m.id == id)
                .map(|m| m.addr.clone())
                .unwrap_or_default()
        };
        let mut out: Vec<MemberInfo> = cs
            .voters
            .iter()
            .map(|&id| MemberInfo {
                id,
                addr: addr_of(id),
                role: MemberRole::Voter,
            })
            .chain(cs.learners.iter().map(|&id| MemberInfo {
                id,
                addr: addr_of(id),
                role: MemberRole::Learner,
            }))
            .collect();
        out.sort_by_key(|m| m.id);
        Ok(out)
    }

    fn change_membership(&self, change_type: ConfChangeType, id: u64, addr: &str) -> Result<()> {
        self.check_open()?;
        let deadline = Instant::now() + self.timeout();
        let (seq, _) = self.next_seq();
        let context = ConfContext {
            client_id: self.shared.client_id,
            seq,
            addr: addr.to_string(),
        }
        .encode();
        let mut cc = ConfChange::default();
        cc.set_change_type(change_type);
        cc.node_id = id;
        cc.context = context.into();
        let result = self.request_until(seq, deadline, || RaftMsg::ConfChange {
            seq,
            cc: cc.clone(),
        });
        self.settle_seq(seq);
        result
    }
}

fn check_addition(r: &Replica, id: u64, addr: &str) -> Result<()> {
    if id == 0 {
        return Err(Error::invalid("node id must be >= 1"));
    }
    crate::config::check_addr("addr", addr)?;
    if r.shared.state_machine()?.is_removed(id)? {
        return Err(Error::invalid(format!(
            "node id {id} was removed from this cluster and cannot be reused"
        )));
    }
    Ok(())
}

/// The documented JSON listing of members:
/// `[{"id":1,"addr":"127.0.0.1:7001","role":"voter"},...]`, sorted by id.
pub fn members_json(members: &[MemberInfo]) -> String {
    let mut j = crate::json::Json::new();
    j.begin_array();
    for m in members {
        j.begin_object()
            .kv_u64("id", m.id)
            .kv_str("addr", &m.addr)
            .kv_str("role", m.role.name())
            .end_object();
    }
    j.end_array();
    j.finish()
}
