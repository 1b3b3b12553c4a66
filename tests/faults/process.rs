//! One replica hosted by a `kvr` CLI process, driven through its REPL, that the nemesis may
//! kill, restart, pause and resume at any moment while a client waits for a reply.
//!
//! The REPL answers one line per command, in order. A client holds the process's [`Io`]
//! only for the duration of one call; killing the process ends its stdout, so a waiting
//! client learns at once that its call's outcome is unknown.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Longest a client waits for a reply before it declares the REPL lost. Well above
/// `request_timeout_ms` plus the longest pause the nemesis imposes.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// What became of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Line(String),
    /// The process was not running: the command was not sent.
    Down,
    /// The process exited (killed) before answering.
    Gone,
    /// No answer within the timeout; the process was killed so that a late answer cannot be
    /// taken for the reply to a later command.
    Lost,
}

/// The pipes of one running process.
pub struct Io {
    stdin: Mutex<ChildStdin>,
    lines: Mutex<Receiver<String>>,
    pub pid: u32,
}

impl Io {
    fn call(&self, line: &str, timeout: Duration) -> Reply {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut stdin = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
            if writeln!(stdin, "{line}")
                .and_then(|_| stdin.flush())
                .is_err()
            {
                return Reply::Gone;
            }
        }
        match lines.recv_timeout(timeout) {
            Ok(l) => Reply::Line(l),
            Err(RecvTimeoutError::Disconnected) => Reply::Gone,
            Err(RecvTimeoutError::Timeout) => Reply::Lost,
        }
    }
}

#[derive(Default)]
struct State {
    child: Option<Child>,
    io: Option<Arc<Io>>,
    paused: bool,
}

/// A replica process that can be restarted with the same arguments and directory.
pub struct Proc {
    pub id: u64,
    pub dir: PathBuf,
    pub log: PathBuf,
    /// argv prefix (the kvr binary, or a wrapper such as `fiu-run -x <kvr>`).
    program: Mutex<Vec<String>>,
    args: Vec<String>,
    state: Mutex<State>,
    /// Removed from the cluster: its process is stopped for good.
    retired: std::sync::atomic::AtomicBool,
    /// Admin calls waiting for the REPL; clients let them go first.
    admin_waiting: std::sync::atomic::AtomicU32,
    /// libfiu's control pipe prefix, when the process runs under `fiu-run`.
    fiu_ctl: Mutex<Option<PathBuf>>,
}

impl Proc {
    pub fn new(id: u64, dir: &Path, peers: &str, opts: &[(String, String)]) -> Proc {
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
        for (k, v) in opts {
            args.push("--option".into());
            args.push(format!("{k}={v}"));
        }
        Proc {
            id,
            dir: dir.to_path_buf(),
            log: dir.with_extension("log"),
            program: Mutex::new(vec![crate::common::kvr_bin().display().to_string()]),
            args,
            state: Mutex::new(State::default()),
            retired: Default::default(),
            admin_waiting: Default::default(),
            fiu_ctl: Mutex::default(),
        }
    }

    /// Replaces the argv prefix used from the next start on.
    pub fn set_program(&self, program: Vec<String>) {
        *self.program.lock().unwrap_or_else(|p| p.into_inner()) = program;
    }

    /// Runs the process under libfiu (from the next start on), controlled through `ctl`.
    pub fn set_fiu(&self, ctl: &Path) {
        self.set_program(super::disk::fiu_program(ctl));
        *self.fiu_ctl.lock().unwrap_or_else(|p| p.into_inner()) = Some(ctl.to_path_buf());
    }

    /// libfiu's control prefix, if the process runs under `fiu-run`.
    pub fn fiu_ctl(&self) -> Option<PathBuf> {
        self.fiu_ctl
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the process unless it is running already.
    pub fn start(&self) {
        let mut st = self.state();
        if st.child.is_some() || self.retired() {
            return;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening a node log");
        let program = self
            .program
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut child = Command::new(&program[0])
            .args(&program[1..])
            .args(&self.args)
            .env(
                "KVR_LOG",
                std::env::var("KVR_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        st.io = Some(Arc::new(Io {
            stdin: Mutex::new(child.stdin.take().expect("piped stdin")),
            lines: Mutex::new(rx),
            pid: child.id(),
        }));
        st.child = Some(child);
        st.paused = false;
    }

    /// Stops the process for good (the replica left the cluster).
    pub fn retire(&self) {
        self.retired
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.kill9();
    }

    pub fn retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn running(&self) -> bool {
        self.state().child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.state().io.as_ref().map(|io| io.pid)
    }

    /// kill -9 (resuming first is unnecessary: SIGKILL ends a stopped process too).
    pub fn kill9(&self) {
        let mut st = self.state();
        if let Some(mut c) = st.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        st.io = None;
        st.paused = false;
    }

    /// SIGSTOP or SIGCONT.
    pub fn pause(&self, paused: bool) {
        let mut st = self.state();
        if let Some(io) = &st.io {
            let sig = if paused { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: kill(2) on the pid of a child we own and have not reaped.
            unsafe { libc::kill(io.pid as libc::pid_t, sig) };
            st.paused = paused;
        }
    }

    /// How the process ended, or "running".
    pub fn exit_status(&self) -> String {
        let mut st = self.state();
        match st.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => status.to_string(),
            Some(Ok(None)) => "running".into(),
            Some(Err(e)) => format!("unknown ({e})"),
            None => "not started".into(),
        }
    }

    pub fn paused(&self) -> bool {
        self.state().paused
    }

    /// Like [`Proc::call`], ahead of clients: the REPL's lock is not fair, and a client that
    /// issues its next call at once could otherwise keep an admin call (a status query of
    /// the nemesis) waiting for several client calls, each up to a request timeout.
    pub fn admin_call(&self, line: &str, timeout: Duration) -> Reply {
        use std::sync::atomic::Ordering::SeqCst;
        self.admin_waiting.fetch_add(1, SeqCst);
        let r = self.call(line, timeout);
        self.admin_waiting.fetch_sub(1, SeqCst);
        r
    }

    /// Waits while admin calls are queued (clients call this before each call).
    pub fn yield_to_admin(&self) {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        while self.admin_waiting.load(std::sync::atomic::Ordering::SeqCst) > 0
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Sends one command and waits for its reply. A lost REPL (no reply in time) is killed
    /// and restarted, so the next command starts in step again.
    pub fn call(&self, line: &str, timeout: Duration) -> Reply {
        let Some(io) = self.state().io.clone() else {
            return Reply::Down;
        };
        let r = io.call(line, timeout);
        if r == Reply::Lost {
            let same = self
                .state()
                .io
                .as_ref()
                .is_some_and(|cur| Arc::ptr_eq(cur, &io));
            if same {
                eprintln!(
                    "node {}: no reply to {line:?} in {timeout:?}; restarting it",
                    self.id
                );
                self.kill9();
                self.start();
            }
        }
        r
    }

    /// A command that must succeed with a line (admin use: status, digest), retried while the
    /// process is down or busy restarting, up to `within`.
    pub fn must(&self, line: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            match self.admin_call(line, REPLY_TIMEOUT) {
                Reply::Line(l) => return l,
                other => assert!(
                    Instant::now() < deadline,
                    "node {}: {line:?} failed: {other:?}; log:\n{}",
                    self.id,
                    self.tail_log()
                ),
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Parsed `status`.
    pub fn status(&self) -> std::collections::HashMap<String, String> {
        parse_kv(&self.must("status", Duration::from_secs(60)))
    }

    pub fn tail_log(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `a=1 b=2` → map.
pub fn parse_kv(line: &str) -> std::collections::HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
