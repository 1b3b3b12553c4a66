//! The record of every client operation of a run, written as JSON lines for the porcupine
//! checker (tests/linearizability), and the set workload's bookkeeping.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

/// How a write ended, as far as its client can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Definitely not applied (`ERR -2`).
    Failed,
    /// May or may not have been applied (any other error, timeout, killed process).
    Unknown,
}

#[derive(Debug, Clone)]
pub enum OpKind {
    Put(String),
    Delete,
    /// A read that returned; `None` is NOT_FOUND.
    Get(Option<String>),
}

#[derive(Debug, Clone)]
pub struct Op {
    /// Client id; a client that saw an unknown outcome continues under a fresh id, since
    /// its earlier call may still be in flight as far as the system is concerned.
    pub client: u64,
    pub key: String,
    pub kind: OpKind,
    pub call_ns: u64,
    /// `None` for an unknown outcome.
    pub ret_ns: Option<u64>,
}

/// Operations of a run, shared by its clients.
pub struct History {
    start: Instant,
    ops: Mutex<Vec<Op>>,
    /// Set workload: (element, outcome) of every add.
    adds: Mutex<Vec<(String, Outcome)>>,
}

impl History {
    pub fn new() -> History {
        History {
            start: Instant::now(),
            ops: Mutex::default(),
            adds: Mutex::default(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn record(&self, op: Op) {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }

    pub fn record_add(&self, element: String, outcome: Outcome) {
        self.adds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((element, outcome));
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn adds(&self) -> Vec<(String, Outcome)> {
        self.adds.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The register history as JSON lines (format documented in tests/linearizability).
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for op in self.ops() {
            let ret = op.ret_ns.map_or(-1i128, i128::from);
            let (name, extra) = match &op.kind {
                OpKind::Put(v) => ("put", format!(",\"value\":{}", json_str(v))),
                OpKind::Delete => ("delete", String::new()),
                OpKind::Get(Some(v)) => {
                    ("get", format!(",\"found\":true,\"value\":{}", json_str(v)))
                }
                OpKind::Get(None) => ("get", ",\"found\":false".to_string()),
            };
            let _ = writeln!(
                out,
                "{{\"client\":{},\"op\":\"{name}\",\"key\":{}{extra},\"call\":{},\"ret\":{ret}}}",
                op.client,
                json_str(&op.key),
                op.call_ns
            );
        }
        out
    }
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
