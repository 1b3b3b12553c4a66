//! The benchmark driver still runs: `kvr-bench --smoke` (kvr and the references only, a
//! second per window) must finish and write a report with real numbers. The full comparison
//! with the peers is run by hand (see README), not here.

use std::path::Path;
use std::process::Command;

#[allow(dead_code)]
#[path = "../src/bin/kvr-bench/json.rs"]
mod json;

use json::Json;

fn array<'a>(v: Option<&'a Json>, what: &str) -> &'a [Json] {
    match v {
        Some(Json::Arr(items)) => items,
        other => panic!("{what} is not an array: {other:?}"),
    }
}

fn positive(v: &Json, key: &str, what: &str) -> f64 {
    let n = v
        .num(key)
        .unwrap_or_else(|| panic!("{what} has no {key}: {v:?}"));
    assert!(n > 0.0, "{what}: {key} = {n}");
    n
}

fn check_kvr_run(report: &Json, api: &str, reads: bool) {
    let run = report
        .get("kvr")
        .and_then(|k| k.get(api))
        .unwrap_or_else(|| panic!("no kvr.{api}"));
    let results = array(run.get("results"), "results");
    let measured: Vec<f64> = results
        .iter()
        .filter_map(|r| r.num("concurrency"))
        .collect();
    assert_eq!(measured, vec![1.0, 8.0], "{api}: concurrencies");
    for r in results {
        let what = format!("kvr {api} at {:?}", r.num("concurrency"));
        positive(r, "writes_per_s", &what);
        positive(r, "p50_us", &what);
        assert!(r.num("p99_us") >= r.num("p50_us"), "{what}: p99 below p50");
        if reads {
            positive(r, "reads_per_s", &what);
            positive(r, "lease_reads_per_s", &what);
            positive(r, "stale_reads_per_s", &what);
            // Replica 1's own counters: where its raft and apply threads spent the writes.
            let p = r
                .get("replica1_writes_profile")
                .unwrap_or_else(|| panic!("{what}: no replica1_writes_profile"));
            for key in [
                "log_appends_per_s",
                "log_append_avg_us",
                "apply_commits_per_s",
                "apply_commit_avg_us",
            ] {
                positive(p, key, &what);
            }
            let busy = p.num("raft_thread_in_appends").unwrap();
            assert!(
                busy > 0.0 && busy <= 1.05,
                "{what}: raft thread busy {busy}"
            );
        }
    }
    for key in ["start", "end"] {
        let rss = array(run.get("replica_rss_kb").and_then(|m| m.get(key)), "rss");
        assert_eq!(rss.len(), 3, "{api}: RSS of 3 replicas");
        assert!(
            rss.iter().all(|m| matches!(m, Json::Num(n) if *n > 0.0)),
            "{api}: RSS {rss:?}"
        );
    }
}

#[test]
fn smoke_run_writes_a_plausible_report() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_kvr-bench"))
        .arg("--smoke")
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("run kvr-bench");
    assert!(
        run.status.success(),
        "kvr-bench --smoke failed ({}):\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let text = std::fs::read_to_string(out.path().join("report.json")).expect("report.json");
    let report = json::parse(&text).expect("report.json parses");
    check_kvr_run(&report, "rust", true);
    check_kvr_run(&report, "c_abi", false);
    positive(report.get("fdatasync").unwrap(), "p50_us", "fdatasync");
    for r in array(
        report.get("raw_lmdb").and_then(|l| l.get("results")),
        "raw_lmdb",
    ) {
        positive(r, "writes_per_s", "raw LMDB");
    }
    let ratios = report.get("ratios").unwrap();
    positive(ratios, "single_writer_p50_over_fdatasync_p50", "ratios");
    assert!(Path::new(&out.path().join("report.txt")).exists());
}
