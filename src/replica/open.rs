//! Opening a replica directory: lock it, open both environments, initialize a new replica
//! (founding member, joiner, or founding member seeded from a backup) or reconcile an
//! existing one.

use std::fs;

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
    let mut log = LogStore::open(&cfg.dir.join("wal"))?;
    let data_dir = storage::current_data_dir(&cfg.dir)?;
    let fresh = log.identity()?.is_none() && log.is_empty();
    let seeded = fresh && cfg.restore_from.is_some();
    if let (true, Some(backup)) = (seeded, &cfg.restore_from) {
        seed_from_backup(backup, &data_dir)?;
    }
    let sm = match StateMachine::open(&data_dir, cfg.map_size_mb).and_then(|sm| {
        if seeded {
            check_seeded(cfg, sm)
        } else {
            Ok(sm)
        }
    }) {
        Ok(sm) => sm,
        Err(e) => {
            if seeded {
                // Leave the directory as it was, so that a corrected restore_from can be retried.
                let _ = fs::remove_dir_all(&data_dir);
            }
            return Err(e);
        }
    };
    let identity = match log.identity()? {
        Some(id) => {
            check_identity(cfg, &id)?;
            id
        }
        None if fresh => initialize(cfg, &mut log, &sm)?,
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

/// A state machine seeded from a backup must be one a replica wrote: every replica that was
/// ever opened has an applied index, so an LMDB file without one is not a kvr backup.
fn check_seeded(cfg: &Config, sm: StateMachine) -> Result<StateMachine> {
    if sm.applied()?.0 == 0 {
        let backup = cfg
            .restore_from
            .as_deref()
            .unwrap_or(std::path::Path::new(""));
        return Err(Error::Corrupt(format!(
            "{} is not a kvr backup: it holds no applied index",
            backup.display()
        )));
    }
    Ok(sm)
}

/// Copies a backup file into the (not yet created) state-machine directory.
fn seed_from_backup(backup: &std::path::Path, data_dir: &std::path::Path) -> Result<()> {
    if data_dir.join("data.mdb").exists() {
        return Err(Error::invalid(format!(
            "{} already holds a state machine",
            data_dir.display()
        )));
    }
    let len = fs::metadata(backup)
        .map_err(|e| Error::Io(format!("cannot read backup {}: {e}", backup.display())))?
        .len();
    if len == 0 {
        return Err(Error::Corrupt(format!(
            "{} is not a kvr backup: it is empty",
            backup.display()
        )));
    }
    fs::create_dir_all(data_dir)?;
    let tmp = data_dir.join("data.mdb.restore");
    fs::copy(backup, &tmp)
        .map_err(|e| Error::Io(format!("cannot copy backup {}: {e}", backup.display())))?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, data_dir.join("data.mdb"))?;
    Ok(())
}

/// Initializes a new replica. A founding member writes the initial membership into the state
/// machine first (idempotently), then the log's identity and starting point in one txn; a
/// joiner only gets an identity and waits for a snapshot from the cluster. A founding member
/// seeded from a backup starts at the backup's applied index with the configured membership.
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
    let (applied, applied_term) = sm.applied()?;
    let restored = cfg.restore_from.is_some();
    if applied == 0 || restored {
        let mut txn = sm.begin()?;
        txn.set_conf_state(&cs)?;
        txn.reset_members()?;
        for (id, addr) in &cfg.peers {
            txn.set_member(*id, addr)?;
        }
        if cfg.peers.is_empty() {
            txn.set_member(cfg.node_id, cfg.listen_addr().unwrap_or(""))?;
        }
        if applied == 0 {
            txn.set_applied(INIT_INDEX, INIT_TERM);
        }
        txn.commit()?;
    }
    let (index, term) = if restored && applied > 0 {
        (applied, applied_term)
    } else {
        (INIT_INDEX, INIT_TERM)
    };
    log.initialize(id, Some((cs, index, term)))?;
    log::info!(
        "node {}: new cluster member at index {index}{}, {} voters",
        cfg.node_id,
        if restored {
            " (restored from a backup)"
        } else {
            ""
        },
        cfg.peers.len().max(1)
    );
    Ok(id)
}
