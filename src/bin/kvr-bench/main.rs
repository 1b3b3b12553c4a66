//! `kvr-bench`: kvr against etcd and dragonboat in one run, on one machine.
//!
//! ```text
//! cargo build --release && target/release/kvr-bench --out target/bench
//! ```
//!
//! In order: the fdatasync floor of the data directory; a 3-replica kvr cluster (replica 1 in
//! this process behind the Rust API, 2 and 3 as `kvr` processes) swept over the concurrencies
//! with writes, linearizable, lease and stale reads; a second, fresh cluster whose replica 1 is
//! opened through the C ABI (`kvr_open`) and driven with `kvr_put`, so both APIs start from the
//! same empty state; the raw LMDB ceiling; each peer (installed first); the optional soak.
//! Then a table on stdout and `report.json` / `report.txt` in the output directory.
//!
//! Every process the bench starts dies with it: children get SIGKILL from the kernel if the
//! bench dies, and SIGINT/SIGTERM unwind through the guards that stop them.

mod args;
mod child;
mod cluster;
mod fsync_ref;
mod hist;
mod json;
mod lmdb_ref;
mod load;
mod machine;
mod peers;
mod procfs;
mod report;
mod signal;
mod snapshot;
mod soak;
mod store;
mod sweep;
mod table;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use args::Options;
use load::{Window, Workload};
use report::Report;
use store::Api;
use sweep::Plan;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let opts = match args::parse(&argv) {
        Ok(Some(o)) => o,
        Ok(None) => {
            // A reader that closed the pipe early (`| head`) is no error.
            let _ = writeln!(std::io::stdout(), "{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("kvr-bench: {e}\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    signal::install();
    match run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvr-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: Options) -> Result<(), String> {
    let started = Instant::now();
    let data = prepare_data_dir(&opts.out)?;
    let kvr_bin = kvr_binary(&opts)?;
    if let Some(gib) = opts.snapshot_gib {
        let report = snapshot::run(&kvr_bin, &data.join("snapshot"), gib)?;
        let text = report.pretty();
        println!("{text}");
        let path = opts.out.join("snapshot.json");
        return fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()));
    }
    let work = Workload::new(opts.key_bytes, opts.value_bytes, opts.keyspace);
    let plan = Plan {
        concurrency: &opts.concurrency,
        work: &work,
        win: Window {
            warmup: Duration::from_secs_f64(opts.warmup_s),
            duration: Duration::from_secs_f64(opts.duration_s),
        },
        kvr_bin: &kvr_bin,
    };
    let machine = machine::Machine::collect(&data);
    eprintln!(
        "kvr-bench: data in {}, kvr replicas from {}",
        data.display(),
        kvr_bin.display()
    );

    let fdatasync = fsync_ref::measure(&data.join("fdatasync"), opts.fsync_iterations);
    let mut kvr = Vec::new();
    for api in [Api::Rust, Api::C] {
        kvr.push(sweep::run(
            api,
            &plan,
            &data.join(format!("kvr-{}", api.name())),
        )?);
    }
    let raw_lmdb = lmdb_ref::sweep(&plan, &data.join("raw-lmdb"));
    signal::check()?;
    let peers = peers::run_all(
        &opts.peers,
        &opts.concurrency,
        &peer_load(&opts),
        &opts.out.join("peers-bin"),
        &data.join("peers"),
    );
    signal::check()?;
    let soak = opts
        .soak_s
        .map(|s| soak::run(&plan, s, &data.join("kvr-soak")));
    signal::check()?;

    let report = Report {
        machine,
        elapsed_s: started.elapsed().as_secs_f64(),
        fdatasync,
        kvr,
        raw_lmdb,
        peers,
        soak,
        opts,
    };
    write_report(&report)
}

/// `OUT/data`, emptied: replica directories, peer data and every log of this run.
fn prepare_data_dir(out: &Path) -> Result<PathBuf, String> {
    let data = out.join("data");
    if data.exists() {
        fs::remove_dir_all(&data).map_err(|e| format!("wipe {}: {e}", data.display()))?;
    }
    fs::create_dir_all(&data).map_err(|e| format!("create {}: {e}", data.display()))?;
    // Absolute, so that child processes and peers agree whatever their working directory.
    data.canonicalize()
        .map_err(|e| format!("{}: {e}", data.display()))
}

/// `--kvr-bin`, or the `kvr` CLI built next to this binary.
fn kvr_binary(opts: &Options) -> Result<PathBuf, String> {
    let path = match &opts.kvr_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot locate this binary: {e}"))?
            .with_file_name("kvr"),
    };
    if !path.is_file() {
        return Err(format!(
            "{} not found: build it (cargo build --release) or pass --kvr-bin",
            path.display()
        ));
    }
    Ok(path)
}

fn peer_load(o: &Options) -> peers::Load {
    peers::Load {
        duration_s: o.duration_s,
        warmup_s: o.warmup_s,
        key_bytes: o.key_bytes,
        value_bytes: o.value_bytes,
        keyspace: o.keyspace,
    }
}

fn write_report(report: &Report) -> Result<(), String> {
    let text = table::render(report);
    print!("{text}");
    let out = &report.opts.out;
    let write = |name: &str, body: &str| {
        let path = out.join(name);
        fs::write(&path, body).map_err(|e| format!("write {}: {e}", path.display()))
    };
    write("report.txt", &text)?;
    write("report.json", &report.json().pretty())?;
    eprintln!("kvr-bench: wrote {}", out.join("report.json").display());
    Ok(())
}
