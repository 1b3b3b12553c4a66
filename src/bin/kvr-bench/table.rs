//! The report as text tables, for the terminal and `report.txt`.

use std::fmt::Write as _;

use crate::load::{Op, Stats};
use crate::report::{Report, TARGET_CONCURRENCY};
use crate::store::Api;

/// Thread groups shown per replica in the CPU table.
const CPU_GROUPS_SHOWN: usize = 4;
/// Longest error text quoted in a footnote.
const ERROR_CHARS_SHOWN: usize = 160;

pub fn render(r: &Report) -> String {
    let mut out = String::new();
    header(r, &mut out);
    writes(r, &mut out);
    reads(r, &mut out);
    ratios(r, &mut out);
    memory(r, &mut out);
    cpu(r, &mut out);
    profile(r, &mut out);
    soak(r, &mut out);
    targets(r, &mut out);
    out
}

fn header(r: &Report, out: &mut String) {
    let m = &r.machine;
    let o = &r.opts;
    let commit = m
        .commit
        .as_deref()
        .map_or("unknown".to_string(), |c| c.chars().take(12).collect());
    let dirty = if m.dirty == Some(true) {
        " + uncommitted changes"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "kvr-bench {} | {} x {} | {} | data on {} | kvr {commit}{dirty}",
        m.date, m.nproc, m.cpu, m.kernel, m.fs
    );
    let _ = writeln!(
        out,
        "3 replicas on 127.0.0.1, fsync on | keys {} B, values {} B, keyspace {} | {} s measured after {} s warm-up{}",
        o.key_bytes,
        o.value_bytes,
        o.keyspace,
        o.duration_s,
        o.warmup_s,
        if o.smoke { " | SMOKE RUN" } else { "" }
    );
    match &r.fdatasync {
        Ok(f) => {
            let _ = writeln!(
                out,
                "fdatasync (4 KiB pwrite + fdatasync, {} iterations): p50 {} us, p99 {} us, mean {} us",
                f.iterations, f.p50_us, f.p99_us, f.mean_us
            );
        }
        Err(e) => {
            let _ = writeln!(out, "fdatasync: failed: {e}");
        }
    }
}

fn num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

fn stats_row(name: &str, c: usize, s: Option<&Stats>) -> Vec<String> {
    let mut row = vec![format!("c={c}"), name.to_string()];
    match s {
        Some(s) => row.extend([
            num(s.per_s),
            num(s.p50_us),
            num(s.p99_us),
            num(s.p999_us),
            s.errors.to_string(),
        ]),
        None => row.extend(["-"; 5].map(String::from)),
    }
    row
}

fn writes(r: &Report, out: &mut String) {
    let mut rows = Vec::new();
    for &c in &r.opts.concurrency {
        let kvr = |api| r.kvr_point(api, c).map(|p| &p.writes.stats);
        rows.push(stats_row("kvr (Rust API)", c, kvr(Api::Rust)));
        rows.push(stats_row("kvr (C ABI)", c, kvr(Api::C)));
        for p in &r.opts.peers {
            rows.push(stats_row(p, c, r.peer(p, c).map(|(w, _)| w)));
        }
        rows.push(stats_row("raw LMDB (no replication)", c, r.lmdb(c)));
    }
    out.push_str("\nWrites\n");
    out.push_str(&grid(
        &[
            "", "system", "writes/s", "p50 us", "p99 us", "p99.9 us", "errors",
        ],
        &rows,
    ));
    failures(r, out);
}

fn failures(r: &Report, out: &mut String) {
    let mut quote = |what: String, e: &str| {
        let e: String = e
            .replace('\n', " | ")
            .chars()
            .take(ERROR_CHARS_SHOWN)
            .collect();
        let _ = writeln!(out, "  ! {what}: {e}");
    };
    for run in &r.peers {
        for p in &run.points {
            if let Err(e) = &p.result {
                quote(format!("{} c={}", run.system, p.concurrency), e);
            }
        }
    }
    if let Err(e) = &r.raw_lmdb {
        quote("raw LMDB".into(), e);
    }
}

fn reads(r: &Report, out: &mut String) {
    let mut rows = Vec::new();
    for &c in &r.opts.concurrency {
        let p = r.kvr_point(Api::Rust, c);
        rows.push(stats_row(
            "kvr linearizable",
            c,
            p.and_then(|p| Some(&p.reads.as_ref()?.stats)),
        ));
        rows.push(stats_row(
            "kvr lease",
            c,
            p.and_then(|p| Some(&p.lease.as_ref()?.stats)),
        ));
        rows.push(stats_row(
            "kvr stale (local)",
            c,
            p.and_then(|p| Some(&p.stale.as_ref()?.stats)),
        ));
        for peer in &r.opts.peers {
            let s = r.peer(peer, c).and_then(|(_, rd)| rd.as_ref());
            rows.push(stats_row(&format!("{peer} linearizable"), c, s));
        }
    }
    out.push_str("\nReads\n");
    out.push_str(&grid(
        &[
            "", "system", "reads/s", "p50 us", "p99 us", "p99.9 us", "errors",
        ],
        &rows,
    ));
    let per_round: Vec<String> = r
        .opts
        .concurrency
        .iter()
        .filter_map(|&c| {
            let n = r
                .kvr_point(Api::Rust, c)?
                .reads
                .as_ref()?
                .reads_per_round()?;
            Some(format!("c={c} {n:.1}"))
        })
        .collect();
    if !per_round.is_empty() {
        let _ = writeln!(
            out,
            "kvr linearizable reads per ReadIndex round: {}",
            per_round.join(", ")
        );
    }
}

fn ratios(r: &Report, out: &mut String) {
    let rows: Vec<Vec<String>> = r
        .ratios()
        .iter()
        .map(|x| {
            vec![
                format!("c={}", x.concurrency),
                opt(x.etcd),
                opt(x.dragonboat),
                opt(x.raw_lmdb),
                opt(x.c_abi),
            ]
        })
        .collect();
    out.push_str("\nRatios of writes/s\n");
    out.push_str(&grid(
        &[
            "",
            "kvr/etcd",
            "kvr/dragonboat",
            "kvr/raw LMDB",
            "C ABI/Rust",
        ],
        &rows,
    ));
    let _ = writeln!(
        out,
        "single-writer p50 / fdatasync p50: {}",
        opt(r.p50_over_fsync())
    );
    let _ = writeln!(
        out,
        "reads/s / writes/s at {TARGET_CONCURRENCY}: linearizable {}, lease {}, stale {}",
        opt(r.reads_over_writes(Op::Get)),
        opt(r.reads_over_writes(Op::LeaseGet)),
        opt(r.reads_over_writes(Op::StaleGet))
    );
}

fn mib(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

fn memory(r: &Report, out: &mut String) {
    let mut rows = Vec::new();
    for run in &r.kvr {
        for (i, (a, b)) in run.mem_start.iter().zip(&run.mem_end).enumerate() {
            let who = if i == 0 {
                "1 (this process)".to_string()
            } else {
                (i + 1).to_string()
            };
            rows.push(vec![
                run.api.name().to_string(),
                who,
                mib(a.rss_kb),
                mib(b.rss_kb),
                mib(a.anon_kb),
                mib(b.anon_kb),
            ]);
        }
    }
    out.push_str("\nReplica memory (MiB; RSS includes LMDB map pages, anon is heap and stacks)\n");
    out.push_str(&grid(
        &[
            "run",
            "replica",
            "RSS start",
            "RSS end",
            "anon start",
            "anon end",
        ],
        &rows,
    ));
    let leaders: Vec<String> = r
        .kvr
        .iter()
        .map(|run| format!("{} run: replica {}", run.api.name(), run.leader))
        .collect();
    let _ = writeln!(out, "leader: {}", leaders.join(", "));
}

fn cpu(r: &Report, out: &mut String) {
    let mut rows = Vec::new();
    for &c in &r.opts.concurrency {
        let Some(p) = r.kvr_point(Api::Rust, c) else {
            continue;
        };
        for (i, u) in p.writes.cpu.iter().enumerate() {
            let top: Vec<String> = u
                .groups
                .iter()
                .take(CPU_GROUPS_SHOWN)
                .map(|(g, x)| format!("{g} {x:.2}"))
                .collect();
            rows.push(vec![
                format!("c={c}"),
                (i + 1).to_string(),
                format!("{:.2}", u.cores),
                top.join(", "),
            ]);
        }
    }
    out.push_str("\nCPU during kvr writes (Rust API run; cores = CPU seconds per second)\n");
    out.push_str(&grid(&["", "replica", "cores", "busiest threads"], &rows));
}

/// Where the leader's raft and apply threads spend the write windows (its own counters).
fn profile(r: &Report, out: &mut String) {
    let Some(run) = r.kvr.iter().find(|run| run.api == Api::Rust) else {
        return;
    };
    if run.leader != 1 {
        return;
    }
    let mut rows = Vec::new();
    for &c in &r.opts.concurrency {
        let Some(p) = r.kvr_point(Api::Rust, c).and_then(|p| p.writes.profile) else {
            continue;
        };
        rows.push(vec![
            format!("c={c}"),
            format!("{:.0}", p.log_writes / p.seconds),
            format!("{:.0}", p.log_write_avg_us()),
            format!("{:.0}%", p.log_busy() * 100.0),
            format!("{:.0}", p.apply_batches / p.seconds),
            format!("{:.1}", p.entries_per_batch()),
            format!("{:.0}", p.commit_avg_us()),
            format!("{:.0}%", p.apply_busy() * 100.0),
            format!("{:.0}", p.disk_mb_per_s()),
            format!("{:.1}", p.disk_bytes_per_write() / 1024.0),
        ]);
    }
    out.push_str(
        "\nLeader's time during kvr writes (Rust API run; a log append is one write + fdatasync, \
         an apply commit one LMDB txn + fdatasync; disk: all three replicas' writes to the \
         one device, per client write)\n",
    );
    out.push_str(&grid(
        &[
            "",
            "log appends/s",
            "append us",
            "raft thread in appends",
            "apply commits/s",
            "entries/commit",
            "commit us",
            "apply thread in commits",
            "disk MB/s",
            "disk KiB/write",
        ],
        &rows,
    ));
}

fn soak(r: &Report, out: &mut String) {
    let Some(s) = &r.soak else { return };
    let s = match s {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(out, "\nSoak: failed: {e}");
            return;
        }
    };
    let _ = writeln!(
        out,
        "\nSoak: {} writers for {} s after {:.0} s warm-up: {}/s p50 {} us p99 {} us, {} samples",
        crate::soak::CONCURRENCY,
        s.seconds,
        s.warmup_s,
        num(s.writes.per_s),
        num(s.writes.p50_us),
        num(s.writes.p99_us),
        s.samples.len()
    );
    let rows: Vec<Vec<String>> = (0..3)
        .filter_map(|i| {
            let m = s.rss(i)?;
            let flat = if m.flat { "yes" } else { "NO" };
            Some(vec![
                (i + 1).to_string(),
                mib(m.start),
                mib(m.end),
                mib(m.min),
                mib(m.max),
                format!("{:.1}%", m.deviation * 100.0),
                flat.into(),
                mib(m.anon_start),
                mib(m.anon_end),
            ])
        })
        .collect();
    out.push_str(&grid(
        &[
            "replica",
            "RSS start",
            "end",
            "min",
            "max",
            "deviation",
            "flat",
            "anon start",
            "anon end",
        ],
        &rows,
    ));
}

fn targets(r: &Report, out: &mut String) {
    let rows: Vec<Vec<String>> = r
        .targets()
        .iter()
        .map(|t| {
            let met = match t.met() {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "not measured",
            };
            vec![
                t.name.to_string(),
                opt(t.value),
                t.goal_text(),
                met.to_string(),
            ]
        })
        .collect();
    out.push_str("\nTargets\n");
    out.push_str(&grid(&["", "value", "goal", "met"], &rows));
}

/// Columns padded to their widest cell: text left-aligned, everything else right-aligned.
fn grid(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let numeric = |col: usize| {
        rows.iter()
            .all(|r| r[col].parse::<f64>().is_ok() || r[col] == "-" || r[col].ends_with('%'))
    };
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| match numeric(i) {
                true => format!("{cell:>w$}", w = width[i]),
                false => format!("{cell:<w$}", w = width[i]),
            })
            .collect();
        let _ = writeln!(out, "  {}", cells.join("  ").trim_end());
    }
    out
}
