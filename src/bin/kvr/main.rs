//! `kvr`: host one replica in this process with a line-oriented REPL.
//!
//! ```text
//! kvr                                   # single-node replica on ./kvr-data
//! kvr --node-id 1 --listen 127.0.0.1:7001 \
//!     --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 --dir data/1
//! ```
//! REPL commands: `put KEY VALUE`, `get KEY`, `sget KEY` (stale local read), `delete KEY`,
//! `status`, `help`, `quit`. Replies are one line each: `OK`, the value, `NOT_FOUND`, or
//! `ERR <code>: <message>`.

use std::io::{self, BufRead, IsTerminal, Write};
use std::process::ExitCode;

mod data_cmds;

use kvr::{Config, Error, ReadConsistency, Replica};

const USAGE: &str = "\
usage: kvr [--node-id N] [--dir DIR] [--listen HOST:PORT] [--peers ID=HOST:PORT,...]
           [--cluster-id N] [--join] [--option KEY=VALUE]...

With no arguments: a single-node replica on ./kvr-data.
Every option key of kvr_options_set is accepted as --option KEY=VALUE, or as --KEY VALUE
(with dashes or underscores). Logging: KVR_LOG=error|warn|info|debug|trace (default info).";

fn main() -> ExitCode {
    init_logger();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match parse_args(&args) {
        Ok(Some(c)) => c,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("kvr: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let replica = match Replica::open(cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kvr: cannot open replica: {e}");
            return ExitCode::FAILURE;
        }
    };
    let status = repl(&replica);
    if let Err(e) = replica.close() {
        eprintln!("kvr: close: {e}");
        return ExitCode::FAILURE;
    }
    status
}

fn parse_args(args: &[String]) -> Result<Option<Config>, Error> {
    let mut cfg = Config::new(1, "kvr-data");
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        if arg == "--join" {
            cfg.set("join", "true")?;
            i += 1;
            continue;
        }
        let Some(flag) = arg.strip_prefix("--") else {
            return Err(Error::invalid(format!("unexpected argument {arg:?}")));
        };
        let value = args
            .get(i + 1)
            .ok_or_else(|| Error::invalid(format!("{arg} needs a value")))?;
        if flag == "option" {
            let (k, v) = value
                .split_once('=')
                .ok_or_else(|| Error::invalid(format!("--option {value:?} is not KEY=VALUE")))?;
            cfg.set(k, v)?;
        } else {
            cfg.set(&flag.replace('-', "_"), value)?;
        }
        i += 2;
    }
    Ok(Some(cfg))
}

fn repl(r: &Replica) -> ExitCode {
    let stdin = io::stdin();
    let interactive = stdin.is_terminal();
    let mut out = io::stdout().lock();
    let mut line = String::new();
    loop {
        if interactive {
            let _ = write!(out, "> ");
            let _ = out.flush();
        }
        line.clear();
        match stdin.lock().read_line(&mut line) {
            Ok(0) => return ExitCode::SUCCESS,
            Ok(_) => {}
            Err(e) => {
                eprintln!("kvr: reading stdin: {e}");
                return ExitCode::FAILURE;
            }
        }
        let reply = match execute(r, line.trim()) {
            Some(reply) => reply,
            None => return ExitCode::SUCCESS,
        };
        if !reply.is_empty() {
            let _ = writeln!(out, "{reply}");
            let _ = out.flush();
        }
    }
}

/// Runs one REPL command; `None` means quit.
fn execute(r: &Replica, line: &str) -> Option<String> {
    let (cmd, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim_start();
    let reply = match cmd {
        "" => String::new(),
        "quit" | "exit" => return None,
        "help" => "commands: put KEY VALUE | putttl KEY TTL_MS VALUE | get KEY | lget KEY | \
                   sget KEY | delete KEY | append KEY VALUE | cas KEY EXPECTED NEW | \
                   casnew KEY NEW | batch put K V del K ... | scan START END LIMIT | \
                   prefix PREFIX LIMIT | watch PREFIX FROM COUNT TIMEOUT_MS | status | stats | \
                   digest | members | add ID ADDR | learner ID ADDR | remove ID | transfer ID | \
                   backup PATH | fill PREFIX N [BYTES] [THREADS] | quit"
            .into(),
        "put" => match rest.split_once(char::is_whitespace) {
            Some((k, v)) => done(r.put(k.as_bytes(), v.trim_start().as_bytes())),
            None if !rest.is_empty() => done(r.put(rest.as_bytes(), b"")),
            None => "ERR usage: put KEY VALUE".into(),
        },
        "get" | "sget" => {
            let c = if cmd == "get" {
                ReadConsistency::Linearizable
            } else {
                ReadConsistency::Stale
            };
            match r.get_with(rest.as_bytes(), c) {
                Ok(Some(v)) => String::from_utf8_lossy(&v).into_owned(),
                Ok(None) => "NOT_FOUND".into(),
                Err(e) => err(e),
            }
        }
        "delete" | "del" => done(r.delete(rest.as_bytes())),
        "add" | "learner" => match parse_id_addr(rest) {
            Some((id, addr)) if cmd == "add" => done(r.add_node(id, addr)),
            Some((id, addr)) => done(r.add_learner(id, addr)),
            None => format!("ERR usage: {cmd} ID HOST:PORT"),
        },
        "remove" | "transfer" => match rest.parse::<u64>() {
            Ok(id) if cmd == "remove" => done(r.remove_node(id)),
            Ok(id) => done(r.transfer_leader(id)),
            Err(_) => format!("ERR usage: {cmd} ID"),
        },
        "fill" => fill(r, rest),
        "digest" => match r.digest() {
            Ok((applied, keys, digest)) => {
                format!("applied={applied} keys={keys} digest={digest:016x}")
            }
            Err(e) => err(e),
        },
        "members" => match r.members() {
            Ok(m) => kvr::replica::members_json(&m),
            Err(e) => err(e),
        },
        "status" => status_line(&r.status()),
        other => match data_cmds::execute(r, other, rest) {
            Some(reply) => reply,
            None => format!("ERR unknown command {other:?} (try help)"),
        },
    };
    Some(reply)
}

/// `fill PREFIX COUNT [VALUE_BYTES] [THREADS]`: writes keys `PREFIX-0..COUNT` from several
/// threads, to load a replica with test data.
fn fill(r: &Replica, args: &str) -> String {
    let a: Vec<&str> = args.split_whitespace().collect();
    let parsed = (|| -> Option<(&str, usize, usize, usize)> {
        let prefix = *a.first()?;
        let count = a.get(1)?.parse().ok()?;
        let bytes = a.get(2).map_or(Some(16), |v| v.parse().ok())?;
        let threads: usize = a.get(3).map_or(Some(16), |v| v.parse().ok())?;
        Some((prefix, count, bytes, threads.clamp(1, 256)))
    })();
    let Some((prefix, count, bytes, threads)) = parsed else {
        return "ERR usage: fill PREFIX COUNT [VALUE_BYTES] [THREADS]".into();
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return;
                }
                let mut v = format!("v{i}").into_bytes();
                v.resize(bytes.max(v.len()), b'.');
                if let Err(e) = r.put(format!("{prefix}-{i}").as_bytes(), &v) {
                    *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    next.store(count, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
            });
        }
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => err(e),
        None => format!("OK {count}"),
    }
}

/// The `status` reply: `key=value` pairs on one line.
fn status_line(s: &kvr::Status) -> String {
    format!(
        "node={} leader={} term={} role={} commit={} applied={} first={} last={} \
         applied_at_open={} entries_applied={} duplicates={} snapshot_index={} \
         snapshots_taken={} snapshots_installed={} snapshots_sent={} removed={}",
        s.node_id,
        s.leader_id,
        s.term,
        s.role.name(),
        s.commit_index,
        s.applied_index,
        s.first_index,
        s.last_index,
        s.applied_index_at_open,
        s.entries_applied,
        s.duplicates,
        s.snapshot_index,
        s.snapshots_taken,
        s.snapshots_installed,
        s.snapshots_sent,
        s.removed
    )
}

fn parse_id_addr(s: &str) -> Option<(u64, &str)> {
    let (id, addr) = s.split_once(char::is_whitespace)?;
    Some((id.parse().ok()?, addr.trim()))
}

fn done(r: kvr::Result<()>) -> String {
    match r {
        Ok(()) => "OK".into(),
        Err(e) => err(e),
    }
}

fn err(e: Error) -> String {
    format!("ERR {}: {e}", e.code())
}

struct StderrLogger {
    level: log::LevelFilter,
}

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            eprintln!(
                "{}.{:03} {:5} {}: {}",
                t.as_secs(),
                t.subsec_millis(),
                record.level(),
                record.target(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

fn init_logger() {
    let level = match std::env::var("KVR_LOG").as_deref() {
        Ok("error") => log::LevelFilter::Error,
        Ok("warn") => log::LevelFilter::Warn,
        Ok("debug") => log::LevelFilter::Debug,
        Ok("trace") => log::LevelFilter::Trace,
        Ok("off") => log::LevelFilter::Off,
        _ => log::LevelFilter::Info,
    };
    let logger = Box::leak(Box::new(StderrLogger { level }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
