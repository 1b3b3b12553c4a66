//! Test harness: replicas hosted by real OS processes (the `kvr` CLI, or any host that speaks
//! the same flags and REPL, such as the C example), driven over their stdin/stdout.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// Reply timeout for one REPL command (well above request_timeout_ms).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Options that make elections fast enough for tests yet robust on a loaded 2-core machine.
pub const FAST_RAFT: &[(&str, &str)] = &[
    ("tick_ms", "30"),
    ("election_ticks", "10"),
    ("heartbeat_ticks", "2"),
    ("request_timeout_ms", "10000"),
];

/// Ports that were free a moment ago.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Path of the `kvr` CLI built by cargo for integration tests.
pub fn kvr_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kvr"))
}

/// One replica process.
pub struct Node {
    pub id: u64,
    pub dir: PathBuf,
    program: Vec<String>,
    args: Vec<String>,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: Option<Receiver<String>>,
    log: PathBuf,
}

impl Node {
    /// A node that will run `program` (argv prefix) with the standard flags.
    pub fn new(
        program: Vec<String>,
        id: u64,
        dir: &Path,
        peers: &str,
        extra: &[(&str, &str)],
    ) -> Node {
        let mut args = vec![
            "--node-id".to_string(),
            id.to_string(),
            "--dir".to_string(),
            dir.display().to_string(),
        ];
        if !peers.is_empty() {
            args.push("--peers".into());
            args.push(peers.into());
        }
        for (k, v) in extra {
            args.push("--option".into());
            args.push(format!("{k}={v}"));
        }
        let log = dir.with_extension("log");
        Node {
            id,
            dir: dir.to_path_buf(),
            program,
            args,
            child: None,
            stdin: None,
            lines: None,
            log,
        }
    }

    /// Starts the process.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node {} already running", self.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(&self.program[0])
            .args(&self.program[1..])
            .args(&self.args)
            .env(
                "KVR_LOG",
                std::env::var("KVR_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", self.program));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.stdin = child.stdin.take();
        self.child = Some(child);
        self.lines = Some(rx);
    }

    /// True while the process runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends one REPL line and returns the reply line.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(line);
        self.recv(line, REPLY_TIMEOUT)
    }

    /// Sends one REPL line without waiting for the reply (read it later with `recv`).
    pub fn send(&mut self, line: &str) {
        let stdin = self
            .stdin
            .as_mut()
            .unwrap_or_else(|| panic!("node {} is not running", self.id));
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the reply to a line sent earlier.
    pub fn recv(&mut self, what: &str, timeout: Duration) -> String {
        match self.lines.as_ref().unwrap().recv_timeout(timeout) {
            Ok(l) => l,
            Err(RecvTimeoutError::Timeout) => panic!(
                "node {}: no reply to {what:?}; log:\n{}",
                self.id,
                self.tail_log()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                panic!(
                    "node {}: exited while running {what:?}; log:\n{}",
                    self.id,
                    self.tail_log()
                )
            }
        }
    }

    /// The last lines of the node's stderr.
    pub fn tail_log(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn put(&mut self, k: &str, v: &str) -> String {
        self.cmd(&format!("put {k} {v}"))
    }

    pub fn get(&mut self, k: &str) -> String {
        self.cmd(&format!("get {k}"))
    }

    pub fn sget(&mut self, k: &str) -> String {
        self.cmd(&format!("sget {k}"))
    }

    /// Parsed `status` line.
    pub fn status(&mut self) -> HashMap<String, String> {
        let line = self.cmd("status");
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub fn status_u64(&mut self, key: &str) -> u64 {
        let s = self.status();
        s.get(key)
            .unwrap_or_else(|| panic!("status has no {key}: {s:?}"))
            .parse()
            .unwrap()
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.stdin = None;
        self.lines = None;
    }

    /// `quit` and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "quit");
        }
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match c.try_wait() {
                    Ok(Some(st)) => {
                        assert!(
                            st.success(),
                            "node {} exited with {st}; log:\n{}",
                            self.id,
                            self.tail_log()
                        );
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = c.kill();
                        panic!(
                            "node {} did not exit after quit; log:\n{}",
                            self.id,
                            self.tail_log()
                        );
                    }
                }
            }
        }
        self.lines = None;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A cluster of processes on 127.0.0.1.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub peers: String,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` replicas, each hosted by `program_for(id)`.
    pub fn start_with(
        n: usize,
        extra: &[(&str, &str)],
        program_for: impl Fn(u64) -> Vec<String>,
    ) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let ports = free_ports(n);
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect();
        let peers = peers.join(",");
        let mut nodes = Vec::new();
        for i in 0..n {
            let id = i as u64 + 1;
            let dir = tmp.path().join(format!("n{id}"));
            let mut node = Node::new(program_for(id), id, &dir, &peers, extra);
            node.start();
            nodes.push(node);
        }
        Cluster {
            nodes,
            peers,
            _tmp: tmp,
        }
    }

    /// Adds a process hosting a new, empty replica that joins with `--join` (it is not yet a
    /// member: add it with `add`/`learner` on any replica). Returns its id and address.
    pub fn spawn_joiner(&mut self, extra: &[(&str, &str)]) -> (u64, String) {
        let id = self.nodes.len() as u64 + 1;
        let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
        let dir = self._tmp.path().join(format!("n{id}"));
        let mut opts: Vec<(&str, &str)> = extra.to_vec();
        opts.push(("join", "true"));
        opts.push(("listen", &addr));
        let mut node = Node::new(vec![kvr_bin().display().to_string()], id, &dir, "", &opts);
        node.start();
        self.nodes.push(node);
        (id, addr)
    }

    /// Directory holding the replicas' directories.
    pub fn root(&self) -> &Path {
        self._tmp.path()
    }

    /// Starts `n` replicas hosted by the `kvr` CLI.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, FAST_RAFT, |_| vec![kvr_bin().display().to_string()])
    }

    pub fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Waits until every running node agrees on one leader (also running); returns its id.
    pub fn wait_leader(&mut self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut leaders = Vec::new();
            for n in self.nodes.iter_mut().filter(|n| n.running()) {
                leaders.push(n.status_u64("leader"));
            }
            let l = leaders[0];
            if l != 0 && leaders.iter().all(|&x| x == l) && self.nodes[(l - 1) as usize].running() {
                return l;
            }
            assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until node `id` has applied at least `index`.
    pub fn wait_applied(&mut self, id: u64, index: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.node(id).status_u64("applied") < index {
            assert!(Instant::now() < deadline, "node {id} did not apply {index}");
            thread::sleep(Duration::from_millis(50));
        }
    }
}
