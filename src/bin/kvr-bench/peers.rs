//! The comparison peers (etcd 3.4, dragonboat v4), each a Go launcher from
//! `tests/bench/peers` that starts its own 3-member cluster, runs the same closed-loop load and
//! prints one JSON line. A peer that fails is recorded and the run goes on.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::child;
use crate::json::{self, Json};
use crate::load::Stats;
use crate::signal;
use crate::sweep::report_progress;

/// Peers the bench knows how to run.
pub const KNOWN: &[&str] = &["etcd", "dragonboat"];
/// The peers' sources and installer, relative to the kvr repository.
const PEERS_SRC: &str = "tests/bench/peers";
/// Longest an install (apt-get, go module downloads and builds) may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(1800);
/// Time a peer run may take beyond its two phases (cluster start-up, election, shutdown).
const RUN_OVERHEAD: Duration = Duration::from_secs(180);
/// Grace between SIGTERM and SIGKILL: the launchers stop their members on SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(20);

/// The same load as kvr's, for one peer run.
pub struct Load {
    pub duration_s: f64,
    pub warmup_s: f64,
    pub key_bytes: usize,
    pub value_bytes: usize,
    pub keyspace: usize,
}

/// One peer's result at one concurrency.
pub struct PeerPoint {
    pub concurrency: usize,
    pub result: Result<(Stats, Option<Stats>), String>,
}

pub struct PeerRun {
    pub system: String,
    pub points: Vec<PeerPoint>,
}

/// Installs the peers into `bin_dir`, then runs each of `systems` at each concurrency.
pub fn run_all(
    systems: &[String],
    conc: &[usize],
    load: &Load,
    bin_dir: &Path,
    dir: &Path,
) -> Vec<PeerRun> {
    if systems.is_empty() {
        return Vec::new();
    }
    let installed = fs::create_dir_all(dir)
        .map_err(|e| format!("create {}: {e}", dir.display()))
        .and_then(|()| install(bin_dir, &dir.join("install.log")));
    let mut runs = Vec::new();
    for system in systems {
        let mut points = Vec::new();
        for &c in conc {
            let result = match &installed {
                Ok(()) if signal::stopped() => Err("interrupted".to_string()),
                Ok(()) => run_one(system, c, load, bin_dir, dir),
                Err(e) => Err(e.clone()),
            };
            match &result {
                Ok((w, r)) => {
                    report_progress(&format!("{system} writes"), c, w);
                    if let Some(r) = r {
                        report_progress(&format!("{system} linearizable reads"), c, r);
                    }
                }
                Err(e) => eprintln!("kvr-bench: {system} c={c} failed: {e}"),
            }
            points.push(PeerPoint {
                concurrency: c,
                result,
            });
        }
        runs.push(PeerRun {
            system: system.clone(),
            points,
        });
    }
    runs
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(PEERS_SRC)
}

fn install(bin_dir: &Path, log: &Path) -> Result<(), String> {
    let script = src_dir().join("install.sh");
    if !script.exists() {
        return Err(format!(
            "{} not found (run from a kvr checkout)",
            script.display()
        ));
    }
    eprintln!(
        "kvr-bench: installing peers into {} (log: {})",
        bin_dir.display(),
        log.display()
    );
    let out = File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| format!("dup log: {e}"))?;
    let mut cmd = Command::new("sh");
    cmd.arg(&script)
        .arg(bin_dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let mut proc = child::die_with_parent(&mut cmd)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    match child::wait_timeout(&mut proc, INSTALL_TIMEOUT)? {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(format!("install.sh failed ({s}):\n{}", child::tail(log))),
        None => {
            child::terminate(&mut proc, TERM_GRACE);
            Err("install.sh interrupted or timed out".into())
        }
    }
}

fn run_one(
    system: &str,
    c: usize,
    load: &Load,
    bin_dir: &Path,
    dir: &Path,
) -> Result<(Stats, Option<Stats>), String> {
    let run_dir = dir.join(format!("{system}-c{c}"));
    let (out_path, log_path) = (run_dir.with_extension("out"), run_dir.with_extension("log"));
    fs::create_dir_all(&run_dir).map_err(|e| format!("create {}: {e}", run_dir.display()))?;
    let out = File::create(&out_path).map_err(|e| format!("create {}: {e}", out_path.display()))?;
    let log = File::create(&log_path).map_err(|e| format!("create {}: {e}", log_path.display()))?;
    let bin = bin_dir.join(format!("{system}-bench"));
    let mut cmd = Command::new(&bin);
    cmd.arg("--dir").arg(&run_dir);
    for (flag, value) in [
        ("--concurrency", c.to_string()),
        ("--duration-s", load.duration_s.to_string()),
        ("--warmup-s", load.warmup_s.to_string()),
        ("--key-bytes", load.key_bytes.to_string()),
        ("--value-bytes", load.value_bytes.to_string()),
        ("--keyspace", load.keyspace.to_string()),
    ] {
        cmd.arg(flag).arg(value);
    }
    cmd.arg("--reads")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(log);
    let mut proc = child::die_with_parent(&mut cmd)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let phases = Duration::from_secs_f64(2.0 * (load.duration_s + load.warmup_s));
    match child::wait_timeout(&mut proc, phases + RUN_OVERHEAD)? {
        Some(s) if s.success() => parse_result(&fs::read_to_string(&out_path).unwrap_or_default()),
        Some(s) => Err(format!(
            "{} exited {s}; log ends:\n{}",
            bin.display(),
            child::tail(&log_path)
        )),
        None => {
            child::terminate(&mut proc, TERM_GRACE);
            signal::check()?;
            Err(format!("{} timed out", bin.display()))
        }
    }
}

/// Reads the launcher's JSON line: writes, and reads when present.
fn parse_result(stdout: &str) -> Result<(Stats, Option<Stats>), String> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or("no JSON line on stdout")?;
    let v = json::parse(line)?;
    let need = |k: &str| v.num(k).ok_or(format!("result has no {k}: {line}"));
    let writes = Stats {
        ops: need("ops")? as u64,
        errors: need("errors")? as u64,
        per_s: need("writes_per_s")?,
        p50_us: need("p50_us")?,
        p99_us: need("p99_us")?,
        p999_us: need("p999_us")?,
        first_error: None,
    };
    let reads = read_stats(&v);
    Ok((writes, reads))
}

fn read_stats(v: &Json) -> Option<Stats> {
    Some(Stats {
        ops: v.num("read_ops")? as u64,
        errors: v.num("read_errors")? as u64,
        per_s: v.num("reads_per_s")?,
        p50_us: v.num("read_p50_us")?,
        p99_us: v.num("read_p99_us")?,
        p999_us: v.num("read_p999_us")?,
        first_error: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_line() {
        let out = "noise\n{\"system\":\"etcd\",\"concurrency\":64,\"ops\":38869,\"duration_s\":5,\"writes_per_s\":7773.8,\"p50_us\":7479.4,\"p99_us\":22018,\"p999_us\":29095.3,\"errors\":0,\"read_ops\":44905,\"reads_per_s\":8981,\"read_p50_us\":5773.7,\"read_p99_us\":27575.6,\"read_p999_us\":42339.8,\"read_errors\":0}\n";
        let (w, r) = parse_result(out).unwrap();
        assert_eq!(w.per_s, 7773.8);
        assert_eq!(w.p999_us, 29095.3);
        let r = r.unwrap();
        assert_eq!(r.per_s, 8981.0);
        assert_eq!(r.ops, 44905);
        let (_, none) = parse_result(
            "{\"ops\":1,\"errors\":0,\"writes_per_s\":1,\"p50_us\":1,\"p99_us\":1,\"p999_us\":1}",
        )
        .unwrap();
        assert!(none.is_none());
        assert!(parse_result("").is_err());
    }
}
