//! The ceiling: raw LMDB in this one process, no replication. Closed-loop clients hand their
//! puts to one writer thread that commits everything pending in one durable write txn (LMDB's
//! default sync), the same group commit kvr does per Raft `Ready`.

use std::fs;
use std::path::Path;
use std::thread::{self, JoinHandle};

use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions, WithoutTls};

use crate::load::{self, Op, Stats};
use crate::store::Store;
use crate::sweep::{report_progress, Plan};

/// LMDB map size; the file grows as needed up to it.
const MAP_BYTES: usize = 16 << 30;
/// Requests queued for the writer before clients block.
const QUEUE_LEN: usize = 8192;
/// Most puts committed in one write txn.
const BATCH_MAX: usize = 4096;

/// Runs the reference at every concurrency of `plan`, in a fresh environment in `dir`.
pub fn sweep(plan: &Plan<'_>, dir: &Path) -> Result<Vec<(usize, Stats)>, String> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(|e| format!("wipe {}: {e}", dir.display()))?;
    }
    let store = Store::Lmdb(GroupCommit::open(dir)?);
    let mut out = Vec::new();
    for &c in plan.concurrency {
        let stats = load::run(&store, Op::Put, c, plan.work, plan.win, &mut load::NoWatch)?;
        report_progress("raw LMDB writes", c, &stats);
        out.push((c, stats));
    }
    store.close()?;
    Ok(out)
}

struct Put {
    key: Vec<u8>,
    value: Vec<u8>,
    reply: flume::Sender<Result<(), String>>,
}

/// An LMDB environment with a group-commit writer thread.
pub struct GroupCommit {
    env: Env<WithoutTls>,
    db: Database<Bytes, Bytes>,
    tx: Option<flume::Sender<Put>>,
    writer: Option<JoinHandle<()>>,
}

impl GroupCommit {
    /// Creates a fresh environment in `dir` (which must not be open elsewhere).
    pub fn open(dir: &Path) -> Result<GroupCommit, String> {
        fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let mut opts = EnvOpenOptions::new().read_txn_without_tls();
        opts.map_size(MAP_BYTES).max_dbs(1);
        // SAFETY: the directory is fresh and private to this run, opened once in this process.
        let env = unsafe { opts.open(dir) }.map_err(|e| format!("LMDB open: {e}"))?;
        let mut wtxn = env.write_txn().map_err(|e| e.to_string())?;
        let db = env
            .create_database(&mut wtxn, None)
            .map_err(|e| e.to_string())?;
        wtxn.commit().map_err(|e| e.to_string())?;
        let (tx, rx) = flume::bounded(QUEUE_LEN);
        let (wenv, wdb) = (env.clone(), db);
        let writer = thread::Builder::new()
            .name("lmdb-writer".into())
            .spawn(move || write_loop(&wenv, wdb, &rx))
            .map_err(|e| format!("cannot spawn the LMDB writer: {e}"))?;
        Ok(GroupCommit {
            env,
            db,
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    /// Returns once the put is committed and synced.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<(), String> {
        // The same kind of reply channel as kvr's callers wait on.
        let (reply, rx) = flume::bounded(1);
        let tx = self.tx.as_ref().ok_or("closed")?;
        tx.send(Put {
            key: key.to_vec(),
            value: value.to_vec(),
            reply,
        })
        .map_err(|_| "LMDB writer stopped")?;
        rx.recv().map_err(|_| "LMDB writer stopped".to_string())?
    }

    pub fn get(&self, key: &[u8]) -> Result<(), String> {
        let rtxn = self.env.read_txn().map_err(|e| e.to_string())?;
        self.db.get(&rtxn, key).map_err(|e| e.to_string())?;
        Ok(())
    }

    pub fn close(mut self) -> Result<(), String> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), String> {
        self.tx = None;
        match self.writer.take().map(JoinHandle::join) {
            Some(Err(_)) => Err("LMDB writer panicked".into()),
            _ => Ok(()),
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn write_loop(env: &Env<WithoutTls>, db: Database<Bytes, Bytes>, rx: &flume::Receiver<Put>) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let result = commit(env, db, &batch);
        for p in batch.drain(..) {
            let _ = p.reply.send(result.clone());
        }
    }
}

fn commit(env: &Env<WithoutTls>, db: Database<Bytes, Bytes>, batch: &[Put]) -> Result<(), String> {
    let mut wtxn = env.write_txn().map_err(|e| e.to_string())?;
    for p in batch {
        db.put(&mut wtxn, &p.key, &p.value)
            .map_err(|e| e.to_string())?;
    }
    wtxn.commit().map_err(|e| e.to_string())
}
