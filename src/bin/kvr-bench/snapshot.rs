//! `--snapshot-gib N`: streams an N GiB state to a replica that joins a loaded cluster, and
//! reports the transfer rate, the peak memory of the sender and the receiver, and the write
//! throughput of the cluster during the transfer against before it.
//!
//! Every replica is a `kvr` process driven over its REPL: 3 founding members loaded through
//! `fill`, then a 4th started with `--join` and added with `add`. While the snapshot streams,
//! a follower keeps writing; a sampler reads the memory of the leader (the sender) and of the
//! joiner (the receiver) from /proc every few milliseconds.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::child;
use crate::json::{obj, Json};
use crate::procfs;

/// Bytes of each loaded value: a GiB is 131072 keys.
const VALUE_BYTES: u64 = 8192;
/// Keys per `fill` command while loading (progress is printed between them).
const LOAD_CHUNK_KEYS: u64 = 16_384;
/// Writes per `fill` while measuring throughput (128-byte values, 64 writers).
const PROBE_WRITES: u64 = 4000;
/// How often memory is sampled during the transfer.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// Longest wait for one REPL reply (loading a chunk included).
const REPLY_TIMEOUT: Duration = Duration::from_secs(1800);

/// One `kvr` process and its REPL.
struct Repl {
    proc: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Repl {
    fn start(kvr: &Path, dir: &Path, args: &[String]) -> Result<Repl, String> {
        let log = std::fs::File::create(dir.with_extension("log")).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(kvr);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .env(
                "KVR_LOG",
                std::env::var("KVR_LOG").unwrap_or_else(|_| "warn".into()),
            );
        let mut proc = child::die_with_parent(&mut cmd)
            .spawn()
            .map_err(|e| format!("start kvr: {e}"))?;
        let stdin = proc.stdin.take().ok_or("no stdin")?;
        let stdout = proc.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Repl { proc, stdin, lines })
    }

    fn send(&mut self, line: &str) -> Result<(), String> {
        writeln!(self.stdin, "{line}")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| format!("{line}: {e}"))
    }

    fn recv(&mut self, what: &str) -> Result<String, String> {
        self.lines
            .recv_timeout(REPLY_TIMEOUT)
            .map_err(|_| format!("no reply to {what}"))
    }

    fn cmd(&mut self, line: &str) -> Result<String, String> {
        self.send(line)?;
        self.recv(line)
    }

    fn status(&mut self, key: &str) -> Result<u64, String> {
        let s = self.cmd("status")?;
        s.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("status has no {key}: {s}"))
    }
}

impl Drop for Repl {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

/// Peak memory seen by the sampler, KiB.
#[derive(Default, Clone, Copy)]
struct Peak {
    rss: u64,
    anon: u64,
}

/// Snapshots and snapshot bytes a replica has sent so far, from its stats.
fn snapshots_sent(node: &mut Repl) -> Result<(f64, f64), String> {
    let stats = crate::json::parse(&node.cmd("stats")?)?;
    let count = stats.num("snapshots_sent").unwrap_or(0.0);
    let bytes = stats
        .get("transport")
        .and_then(|t| t.num("snapshot_bytes_sent"))
        .unwrap_or(0.0);
    Ok((count, bytes))
}

/// Runs the snapshot benchmark with `gib` GiB of state; returns its report.
pub fn run(kvr: &Path, dir: &Path, gib: f64) -> Result<Json, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect::<Result<_, _>>()?;
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut nodes = start_founders(kvr, dir, &addrs)?;
    let leader = wait_leader(&mut nodes)?;
    let follower = if leader == 0 { 1 } else { 0 };
    let keys = (gib * f64::from(1u32 << 30) / VALUE_BYTES as f64).ceil() as u64;
    load(&mut nodes[leader], keys)?;
    let before = probe(&mut nodes[follower], "before")?;

    let mut args = vec![
        "--node-id".into(),
        "4".into(),
        "--join".into(),
        "--listen".into(),
        addrs[3].clone(),
    ];
    args.extend(["--dir".into(), dir.join("n4").display().to_string()]);
    args.extend(COMMON_FLAGS.map(String::from));
    let mut joiner = Repl::start(kvr, &dir.join("n4"), &args)?;
    let done = Arc::new(AtomicBool::new(false));
    let peaks = Arc::new(Mutex::new((Peak::default(), Peak::default())));
    let sampler = spawn_sampler(
        nodes[leader].proc.id(),
        joiner.proc.id(),
        done.clone(),
        peaks.clone(),
    );

    // The leader may have sent snapshots before (to a follower that fell behind the load):
    // only what it sends from here on is the transfer.
    let sent_before = snapshots_sent(&mut nodes[leader])?;
    let started = Instant::now();
    let reply = nodes[leader].cmd(&format!("add 4 {}", addrs[3]))?;
    if reply != "OK" {
        return Err(format!("add 4: {reply}"));
    }
    let (during, transfer) = write_until_installed(&mut nodes[follower], &mut joiner, started)?;
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let after = probe(&mut nodes[follower], "after")?;
    let sent_after = snapshots_sent(&mut nodes[leader])?;
    let (count, bytes) = (sent_after.0 - sent_before.0, sent_after.1 - sent_before.1);
    let check = joiner.cmd(&format!("get big-{}", keys - 1))?;
    if check.len() != VALUE_BYTES as usize {
        return Err(format!(
            "the joiner does not serve the loaded data: {}",
            &check[..check.len().min(80)]
        ));
    }
    let (sender, receiver) = *peaks.lock().map_err(|_| "sampler poisoned")?;
    let secs = transfer.as_secs_f64();
    let mib = |kb: u64| Json::Num(kb as f64 / 1024.0);
    Ok(obj([
        ("state_gib", Json::Num(gib)),
        ("keys", Json::Num(keys as f64)),
        ("snapshots_sent", Json::Num(count)),
        ("snapshot_bytes", Json::Num(bytes)),
        ("transfer_s", Json::Num(secs)),
        ("mb_per_s", Json::Num(bytes / 1e6 / secs)),
        ("sender_peak_rss_mib", mib(sender.rss)),
        ("sender_peak_anon_mib", mib(sender.anon)),
        ("receiver_peak_rss_mib", mib(receiver.rss)),
        ("receiver_peak_anon_mib", mib(receiver.anon)),
        ("writes_per_s_before", Json::Num(before)),
        ("writes_per_s_during", Json::Num(during)),
        ("writes_per_s_after", Json::Num(after)),
    ]))
}

/// Flags of every replica: frequent snapshot points, so the log is compacted past what the
/// joiner would need and it must catch up by snapshot.
const COMMON_FLAGS: [&str; 4] = ["--snapshot-entries", "2000", "--compaction-margin", "200"];

/// Starts the three founding replicas.
fn start_founders(kvr: &Path, dir: &Path, addrs: &[String]) -> Result<Vec<Repl>, String> {
    let peers = (0..3)
        .map(|i| format!("{}={}", i + 1, addrs[i]))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for i in 0..3 {
        let node_dir = dir.join(format!("n{}", i + 1));
        let mut args = vec![
            "--node-id".into(),
            (i + 1).to_string(),
            "--peers".into(),
            peers.clone(),
        ];
        args.extend(["--dir".into(), node_dir.display().to_string()]);
        args.extend(COMMON_FLAGS.map(String::from));
        nodes.push(Repl::start(kvr, &node_dir, &args)?);
    }
    Ok(nodes)
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Index (0-based) of the node everyone agrees leads.
fn wait_leader(nodes: &mut [Repl]) -> Result<usize, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let leaders: Vec<u64> = nodes
            .iter_mut()
            .map(|n| n.status("leader"))
            .collect::<Result<_, _>>()?;
        if leaders[0] != 0 && leaders.iter().all(|&l| l == leaders[0]) {
            return Ok((leaders[0] - 1) as usize);
        }
        thread::sleep(Duration::from_millis(100));
    }
    Err("no leader elected".into())
}

/// Writes `keys` values of [`VALUE_BYTES`] through the leader.
fn load(leader: &mut Repl, keys: u64) -> Result<(), String> {
    let started = Instant::now();
    let mut done = 0;
    while done < keys {
        let n = LOAD_CHUNK_KEYS.min(keys - done);
        // `fill` numbers keys from 0 under its prefix: one prefix per chunk.
        let reply = leader.cmd(&format!("fill load{done} {n} {VALUE_BYTES} 64"))?;
        if reply != format!("OK {n}") {
            return Err(format!("loading: {reply}"));
        }
        done += n;
        eprintln!(
            "kvr-bench: snapshot: loaded {:.2} GiB ({done} keys) in {:.0} s",
            (done * VALUE_BYTES) as f64 / f64::from(1u32 << 30),
            started.elapsed().as_secs_f64()
        );
    }
    let reply = leader.cmd(&format!(
        "put big-{} {}",
        keys - 1,
        "x".repeat(VALUE_BYTES as usize)
    ))?;
    if reply != "OK" {
        return Err(format!("loading: {reply}"));
    }
    Ok(())
}

/// Writes/s of one `fill` of small values through `node`.
fn probe(node: &mut Repl, tag: &str) -> Result<f64, String> {
    let started = Instant::now();
    let reply = node.cmd(&format!("fill probe-{tag} {PROBE_WRITES} 128 64"))?;
    if reply != format!("OK {PROBE_WRITES}") {
        return Err(format!("probe {tag}: {reply}"));
    }
    Ok(PROBE_WRITES as f64 / started.elapsed().as_secs_f64())
}

/// Keeps writing through `writer` until the joiner has installed its snapshot; returns the
/// write rate meanwhile and when the install was seen.
fn write_until_installed(
    writer: &mut Repl,
    joiner: &mut Repl,
    started: Instant,
) -> Result<(f64, Duration), String> {
    let mut writes = 0u64;
    let writing_since = Instant::now();
    let mut round = 0;
    loop {
        writer.send(&format!("fill during{round} 500 128 64"))?;
        let installed = joiner.status("snapshots_installed")? >= 1;
        let reply = writer.recv("fill during")?;
        if reply != "OK 500" {
            return Err(format!("writes during the transfer: {reply}"));
        }
        writes += 500;
        round += 1;
        if installed {
            let rate = writes as f64 / writing_since.elapsed().as_secs_f64();
            return Ok((rate, started.elapsed()));
        }
    }
}

fn spawn_sampler(
    sender: u32,
    receiver: u32,
    done: Arc<AtomicBool>,
    peaks: Arc<Mutex<(Peak, Peak)>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        while !done.load(Ordering::Relaxed) {
            let s = procfs::mem(sender);
            let r = procfs::mem(receiver);
            if let Ok(mut p) = peaks.lock() {
                let (ps, pr) = &mut *p;
                for (peak, mem) in [(ps, s), (pr, r)] {
                    if let Some(m) = mem {
                        peak.rss = peak.rss.max(m.rss_kb);
                        peak.anon = peak.anon.max(m.anon_kb);
                    }
                }
            }
            thread::sleep(SAMPLE_EVERY);
        }
    })
}
