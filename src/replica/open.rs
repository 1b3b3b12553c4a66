//! Opening a replica directory: lock it, open both environments, initialize a new replica
//! (founding member or joiner) or reconcile an existing one.

use raft::eraftpb::ConfState;

use super::random_u64;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::storage::log_store::{Identity, LogStore, INIT_INDEX, INIT_TERM};
use crate::storage::state_machine::StateMachine;
use crate::storage::{self, DirLock};

/// Everything found (or created) on disk, ready for the threads to start.
pub(super) struct OnDisk {
    pub lock: DirLock,
    pub log: LogStore,
    pub sm: StateMachine,
    pub identity: Identity,
    pub applied: u64,
}

/// Opens the replica directory of `cfg`.
pub(super) fn open_dir(cfg: &Config) -> Result<OnDisk> {
    let lock = DirLock::acquire(&cfg.dir)?;
    storage::remove_stale_dirs(&cfg.dir)?;
    let mut log = LogStore::open(&cfg.dir.join("log"), cfg.map_size_mb)?;
    let sm = StateMachine::open(&storage::current_data_dir(&cfg.dir)?, cfg.map_size_mb)?;
    let identity = match log.identity()? {
        Some(id) => {
            check_identity(cfg, &id)?;
            id
        }
        None if log.is_empty() => initialize(cfg, &mut log, &sm)?,
        None => {
            return Err(Error::Corrupt(format!(
                "{} has a log but no identity",
                cfg.dir.display()
            )))
        }
    };
    let (applied, applied_term) = sm.applied()?;
    if !log.is_empty() || applied > 0 {
        log.reconcile(applied, applied_term)?;
    }
    log.set_conf_state(sm.conf_state()?);
    // Whatever survived on disk becomes a durable snapshot point.
    sm.sync()?;
    Ok(OnDisk {
        lock,
        log,
        sm,
        identity,
        applied,
    })
}

fn check_identity(cfg: &Config, id: &Identity) -> Result<()> {
    if id.node_id != cfg.node_id || id.cluster_id != cfg.cluster_id {
        return Err(Error::invalid(format!(
            "{} holds node {} of cluster {}, but node_id {} of cluster {} was requested",
            cfg.dir.display(),
            id.node_id,
            id.cluster_id,
            cfg.node_id,
            cfg.cluster_id
        )));
    }
    Ok(())
}

/// Initializes a new replica. A founding member writes the initial membership into the state
/// machine first (idempotently), then the log's identity and starting point in one txn; a
/// joiner only gets an identity and waits for a snapshot from the cluster.
fn initialize(cfg: &Config, log: &mut LogStore, sm: &StateMachine) -> Result<Identity> {
    let id = Identity {
        cluster_id: cfg.cluster_id,
        node_id: cfg.node_id,
        incarnation: random_u64()?,
    };
    if cfg.join {
        log.initialize(id, None)?;
        log::info!(
            "node {}: new replica, waiting to be added to the cluster",
            cfg.node_id
        );
        return Ok(id);
    }
    let voters: Vec<u64> = if cfg.peers.is_empty() {
        vec![cfg.node_id]
    } else {
        cfg.peers.keys().copied().collect()
    };
    let cs = ConfState {
        voters,
        ..ConfState::default()
    };
    if sm.applied()? == (0, 0) {
        let mut txn = sm.begin()?;
        txn.set_conf_state(&cs)?;
        for (id, addr) in &cfg.peers {
            txn.set_member(*id, addr)?;
        }
        if cfg.peers.is_empty() {
            txn.set_member(cfg.node_id, cfg.listen_addr().unwrap_or(""))?;
        }
        txn.set_applied(INIT_INDEX, INIT_TERM);
        txn.commit()?;
    }
    log.initialize(id, Some(cs))?;
    log::info!(
        "node {}: new cluster member, bootstrapped with {} voters",
        cfg.node_id,
        cfg.peers.len().max(1)
    );
    Ok(id)
}
