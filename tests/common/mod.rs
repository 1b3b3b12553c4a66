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
        Cluster::start_each(n, |_| extra.to_vec(), program_for)
    }

    /// Starts `n` replicas, replica `id` hosted by `program_for(id)` with options `extra_for(id)`.
    pub fn start_each<'a>(
        n: usize,
        extra_for: impl Fn(u64) -> Vec<(&'a str, &'a str)>,
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
            let mut node = Node::new(program_for(id), id, &dir, &peers, &extra_for(id));
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

impl Node {
    /// OS process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends a signal (`"STOP"`, `"CONT"`, ...) to the process.
    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let ok = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill -{sig} {pid} failed");
        }
    }
}

/// Waits until `f` holds, polling; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The values of the JSON string fields named `field` in `json`, in order (enough for the
/// flat objects the REPL prints; escapes are kept as written).
pub fn json_strings(json: &str, field: &str) -> Vec<String> {
    let pat = format!("\"{field}\":\"");
    let mut out = Vec::new();
    let mut rest = json;
    while let Some(i) = rest.find(&pat) {
        rest = &rest[i + pat.len()..];
        let mut end = 0;
        let b = rest.as_bytes();
        while end < b.len() && !(b[end] == b'"' && (end == 0 || b[end - 1] != b'\\')) {
            end += 1;
        }
        out.push(rest[..end].to_string());
        rest = &rest[end..];
    }
    out
}

/// The values of the JSON number fields named `field` in `json`, in order.
pub fn json_numbers(json: &str, field: &str) -> Vec<u64> {
    let pat = format!("\"{field}\":");
    json.match_indices(&pat)
        .filter_map(|(i, _)| {
            let digits: String = json[i + pat.len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            digits.parse().ok()
        })
        .collect()
}

/// Makes sure `libkvr.so` matches the sources: `cargo test` builds the Rust library the tests
/// link, but not the shared library that C, Python and Go hosts load.
pub fn fresh_cdylib() {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--lib", "--quiet"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build --lib");
        assert!(status.success(), "cargo build --lib failed");
    });
}

/// Compiles the C example host (`-Wall -Wextra -Werror`) into `out_dir`; returns its path.
pub fn build_c_host(out_dir: &Path) -> PathBuf {
    fresh_cdylib();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let libdir = kvr_bin().parent().unwrap().to_path_buf();
    let bin = out_dir.join("kvr_host");
    let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-O1",
            "-g",
        ])
        .arg(format!("-I{}", root.join("include").display()))
        .arg(root.join("examples/c/kvr_host.c"))
        .arg(format!("-L{}", libdir.display()))
        .arg("-lkvr")
        .arg(format!("-Wl,-rpath,{}", libdir.display()))
        .arg("-o")
        .arg(&bin)
        .output()
        .expect("running the C compiler");
    assert!(
        out.status.success(),
        "C host failed to compile:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// A TCP forwarder from a local port to `target` that can be paused: while paused it holds
/// every byte in both directions (the connections stay open), like a link that stalls.
pub struct PausableProxy {
    pub addr: String,
    paused: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl PausableProxy {
    /// Starts forwarding from a free local port to `target`.
    pub fn start(target: String) -> PausableProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let paused = Arc::new(AtomicBool::new(false));
        let p = paused.clone();
        thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { return };
                let Ok(outbound) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                    (outbound, inbound),
                ] {
                    let p = p.clone();
                    thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        loop {
                            while p.load(Ordering::Relaxed) {
                                thread::sleep(Duration::from_millis(5));
                            }
                            match std::io::Read::read(&mut from, &mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    while p.load(Ordering::Relaxed) {
                                        thread::sleep(Duration::from_millis(5));
                                    }
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        PausableProxy { addr, paused }
    }

    /// Holds all traffic (true) or lets it flow (false).
    pub fn pause(&self, on: bool) {
        self.paused.store(on, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Cluster {
    /// Starts `n` replicas hosted by `program`, where every link *to* node `victim` goes
    /// through a pausable proxy. Returns the cluster and the proxies.
    pub fn start_with_proxied_victim(
        n: usize,
        extra: &[(&str, &str)],
        program: String,
        victim: u64,
    ) -> (Cluster, Vec<PausableProxy>) {
        let tmp = tempfile::tempdir().unwrap();
        let ports = free_ports(n);
        let real: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut proxies = Vec::new();
        let mut nodes = Vec::new();
        for i in 0..n {
            let id = i as u64 + 1;
            let mut view = Vec::new();
            for (j, addr) in real.iter().enumerate() {
                let peer = j as u64 + 1;
                if peer == victim && id != victim {
                    let p = PausableProxy::start(addr.clone());
                    view.push(format!("{peer}={}", p.addr));
                    proxies.push(p);
                } else {
                    view.push(format!("{peer}={addr}"));
                }
            }
            let dir = tmp.path().join(format!("n{id}"));
            let mut node = Node::new(vec![program.clone()], id, &dir, &view.join(","), extra);
            node.start();
            nodes.push(node);
        }
        (
            Cluster {
                nodes,
                peers: real.join(","),
                _tmp: tmp,
            },
            proxies,
        )
    }
}
