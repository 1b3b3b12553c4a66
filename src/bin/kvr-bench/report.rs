//! The report: every figure of the run, the ratios between systems and the targets, as JSON.

use crate::args::Options;
use crate::fsync_ref::FsyncStats;
use crate::json::{obj, Json};
use crate::load::{Op, Stats};
use crate::machine::Machine;
use crate::peers::PeerRun;
use crate::procfs::{CpuUse, Mem};
use crate::soak::{self, Soak};
use crate::store::Api;
use crate::sweep::{Phase, Point, Profile, Run};

/// Version of the report's layout.
const FORMAT_VERSION: u64 = 1;
/// The concurrency the targets are stated at.
pub const TARGET_CONCURRENCY: usize = 64;

pub struct Report {
    pub opts: Options,
    pub machine: Machine,
    pub elapsed_s: f64,
    pub fdatasync: Result<FsyncStats, String>,
    pub kvr: Vec<Run>,
    pub raw_lmdb: Result<Vec<(usize, Stats)>, String>,
    pub peers: Vec<PeerRun>,
    pub soak: Option<Result<Soak, String>>,
}

/// Writes/s of kvr (Rust API) over each other system's, at one concurrency.
pub struct RatioRow {
    pub concurrency: usize,
    pub etcd: Option<f64>,
    pub dragonboat: Option<f64>,
    pub raw_lmdb: Option<f64>,
    /// C ABI writes/s over Rust API writes/s: the cost of the ABI.
    pub c_abi: Option<f64>,
}

/// One of the goals and where this run stands.
pub struct Target {
    pub name: &'static str,
    pub value: Option<f64>,
    pub goal: f64,
    pub at_least: bool,
}

impl Target {
    pub fn met(&self) -> Option<bool> {
        let v = self.value?;
        Some(if self.at_least {
            v >= self.goal
        } else {
            v <= self.goal
        })
    }

    pub fn goal_text(&self) -> String {
        format!("{} {}", if self.at_least { ">=" } else { "<=" }, self.goal)
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (b > 0.0).then(|| round3(a / b))
}

impl Report {
    pub fn kvr_point(&self, api: Api, c: usize) -> Option<&Point> {
        let run = self.kvr.iter().find(|r| r.api == api)?;
        run.points.iter().find(|p| p.concurrency == c)
    }

    fn kvr_writes(&self, c: usize) -> Option<f64> {
        Some(self.kvr_point(Api::Rust, c)?.writes.stats.per_s)
    }

    /// A peer's (writes, reads) at `c`, when that run succeeded.
    pub fn peer(&self, system: &str, c: usize) -> Option<&(Stats, Option<Stats>)> {
        let run = self.peers.iter().find(|r| r.system == system)?;
        let point = run.points.iter().find(|p| p.concurrency == c)?;
        point.result.as_ref().ok()
    }

    pub fn lmdb(&self, c: usize) -> Option<&Stats> {
        let points = self.raw_lmdb.as_ref().ok()?;
        points.iter().find(|(pc, _)| *pc == c).map(|(_, s)| s)
    }

    pub fn ratios(&self) -> Vec<RatioRow> {
        let peer = |s: &str, c| self.peer(s, c).map(|(w, _)| w.per_s);
        self.opts
            .concurrency
            .iter()
            .map(|&c| RatioRow {
                concurrency: c,
                etcd: ratio(self.kvr_writes(c), peer("etcd", c)),
                dragonboat: ratio(self.kvr_writes(c), peer("dragonboat", c)),
                raw_lmdb: ratio(self.kvr_writes(c), self.lmdb(c).map(|s| s.per_s)),
                c_abi: ratio(
                    self.kvr_point(Api::C, c).map(|p| p.writes.stats.per_s),
                    self.kvr_writes(c),
                ),
            })
            .collect()
    }

    /// kvr's single-writer p50 over the fdatasync p50.
    pub fn p50_over_fsync(&self) -> Option<f64> {
        let p50 = self.kvr_point(Api::Rust, 1)?.writes.stats.p50_us;
        ratio(Some(p50), self.fdatasync.as_ref().ok().map(|f| f.p50_us))
    }

    /// Reads/s over writes/s at the target concurrency.
    pub fn reads_over_writes(&self, op: Op) -> Option<f64> {
        let p = self.kvr_point(Api::Rust, TARGET_CONCURRENCY)?;
        ratio(
            p.reads_of(op).map(|r| r.stats.per_s),
            Some(p.writes.stats.per_s),
        )
    }

    fn soak_deviation(&self) -> Option<f64> {
        let s = self.soak.as_ref()?.as_ref().ok()?;
        (0..3)
            .filter_map(|i| s.rss(i).map(|r| r.deviation))
            .reduce(f64::max)
            .map(round3)
    }

    pub fn targets(&self) -> Vec<Target> {
        let at = self
            .ratios()
            .into_iter()
            .find(|r| r.concurrency == TARGET_CONCURRENCY);
        let t = |name, value, goal, at_least| Target {
            name,
            value,
            goal,
            at_least,
        };
        vec![
            t(
                "kvr/etcd writes/s at 64",
                at.as_ref().and_then(|r| r.etcd),
                30.0,
                true,
            ),
            t(
                "kvr/dragonboat writes/s at 64",
                at.as_ref().and_then(|r| r.dragonboat),
                1.2,
                true,
            ),
            t(
                "kvr/raw LMDB writes/s at 64",
                at.as_ref().and_then(|r| r.raw_lmdb),
                0.3,
                true,
            ),
            t(
                "single-writer p50 / fdatasync p50",
                self.p50_over_fsync(),
                3.0,
                false,
            ),
            t(
                "linearizable reads/s / writes/s at 64",
                self.reads_over_writes(Op::Get),
                5.0,
                true,
            ),
            t(
                "soak RSS deviation (max of replicas)",
                self.soak_deviation(),
                soak::RSS_FLAT_TOLERANCE,
                false,
            ),
        ]
    }

    pub fn json(&self) -> Json {
        obj([
            ("kvr_bench_format", FORMAT_VERSION.into()),
            ("machine", self.machine.json()),
            ("params", self.params_json()),
            ("elapsed_s", (self.elapsed_s.round()).into()),
            ("fdatasync", self.fsync_json()),
            (
                "kvr",
                Json::Obj(
                    self.kvr
                        .iter()
                        .map(|r| (r.api.name().to_string(), run_json(r)))
                        .collect(),
                ),
            ),
            ("raw_lmdb", self.lmdb_json()),
            (
                "peers",
                Json::Obj(
                    self.peers
                        .iter()
                        .map(|p| (p.system.clone(), peer_json(p)))
                        .collect(),
                ),
            ),
            ("ratios", self.ratios_json()),
            (
                "targets",
                Json::Arr(self.targets().iter().map(target_json).collect()),
            ),
            ("soak", self.soak.as_ref().map_or(Json::Null, soak_json)),
        ])
    }

    fn params_json(&self) -> Json {
        let o = &self.opts;
        obj([
            ("replicas", 3u64.into()),
            ("fsync", true.into()),
            ("concurrency", o.concurrency.clone().into()),
            ("duration_s", o.duration_s.into()),
            ("warmup_s", o.warmup_s.into()),
            ("key_bytes", o.key_bytes.into()),
            ("value_bytes", o.value_bytes.into()),
            ("keyspace", o.keyspace.into()),
            ("smoke", o.smoke.into()),
            ("peers", o.peers.clone().into()),
            ("soak_s", o.soak_s.into()),
        ])
    }

    fn fsync_json(&self) -> Json {
        match &self.fdatasync {
            Ok(f) => obj([
                ("write_bytes", 4096u64.into()),
                ("iterations", f.iterations.into()),
                ("p50_us", f.p50_us.into()),
                ("p99_us", f.p99_us.into()),
                ("mean_us", f.mean_us.into()),
            ]),
            Err(e) => error_json(e),
        }
    }

    fn lmdb_json(&self) -> Json {
        match &self.raw_lmdb {
            Ok(points) => obj([(
                "results",
                Json::Arr(
                    points
                        .iter()
                        .map(|(c, s)| stats_point(*c, s, None))
                        .collect(),
                ),
            )]),
            Err(e) => error_json(e),
        }
    }

    fn ratios_json(&self) -> Json {
        let rows = self.ratios().into_iter().map(|r| {
            obj([
                ("concurrency", r.concurrency.into()),
                ("kvr_over_etcd", r.etcd.into()),
                ("kvr_over_dragonboat", r.dragonboat.into()),
                ("kvr_over_raw_lmdb", r.raw_lmdb.into()),
                ("c_abi_over_rust", r.c_abi.into()),
            ])
        });
        obj([
            ("writes_per_s", Json::Arr(rows.collect())),
            (
                "single_writer_p50_over_fdatasync_p50",
                self.p50_over_fsync().into(),
            ),
            (
                "linearizable_reads_over_writes_at_64",
                self.reads_over_writes(Op::Get).into(),
            ),
            (
                "lease_reads_over_writes_at_64",
                self.reads_over_writes(Op::LeaseGet).into(),
            ),
            (
                "stale_reads_over_writes_at_64",
                self.reads_over_writes(Op::StaleGet).into(),
            ),
        ])
    }
}

fn error_json(e: &str) -> Json {
    obj([("error", e.into())])
}

/// Appends one measurement with the peers' key names (`writes_per_s`, `p50_us`, ... for writes,
/// `reads_per_s`, `read_p50_us`, ... for reads).
fn put_stats(f: &mut Vec<(String, Json)>, prefix: &str, rate: &str, s: &Stats) {
    let mut add = |k: &str, v: Json| f.push((k.to_string(), v));
    add(rate, s.per_s.into());
    add(&format!("{prefix}p50_us"), s.p50_us.into());
    add(&format!("{prefix}p99_us"), s.p99_us.into());
    add(&format!("{prefix}p999_us"), s.p999_us.into());
    add(&format!("{prefix}ops"), s.ops.into());
    add(&format!("{prefix}errors"), s.errors.into());
    if let Some(e) = &s.first_error {
        add(&format!("{prefix}first_error"), e.as_str().into());
    }
}

fn stats_point(c: usize, writes: &Stats, reads: Option<&Stats>) -> Json {
    let mut f = vec![("concurrency".to_string(), c.into())];
    put_stats(&mut f, "", "writes_per_s", writes);
    if let Some(r) = reads {
        put_stats(&mut f, "read_", "reads_per_s", r);
    }
    Json::Obj(f)
}

fn mem_json(mem: &[Mem], pick: fn(&Mem) -> u64) -> Json {
    mem.iter().map(pick).collect::<Vec<u64>>().into()
}

fn run_json(r: &Run) -> Json {
    let points = r.points.iter().map(point_json).collect();
    obj([
        ("api", r.api.name().into()),
        ("leader", r.leader.into()),
        ("replica_1_is_this_process", true.into()),
        (
            "replica_rss_kb",
            obj([
                ("start", mem_json(&r.mem_start, |m| m.rss_kb)),
                ("end", mem_json(&r.mem_end, |m| m.rss_kb)),
            ]),
        ),
        (
            "replica_anon_kb",
            obj([
                ("start", mem_json(&r.mem_start, |m| m.anon_kb)),
                ("end", mem_json(&r.mem_end, |m| m.anon_kb)),
            ]),
        ),
        ("results", Json::Arr(points)),
    ])
}

fn point_json(p: &Point) -> Json {
    let Json::Obj(mut f) = stats_point(
        p.concurrency,
        &p.writes.stats,
        p.reads.as_ref().map(|r| &r.stats),
    ) else {
        unreachable!("stats_point builds an object")
    };
    if let Some(n) = p.reads.as_ref().and_then(|r| r.reads_per_round()) {
        f.push(("read_reads_per_round".to_string(), n.into()));
    }
    if let Some(s) = &p.lease {
        put_stats(&mut f, "lease_", "lease_reads_per_s", &s.stats);
    }
    if let Some(s) = &p.stale {
        put_stats(&mut f, "stale_", "stale_reads_per_s", &s.stats);
    }
    let phases = [
        ("writes", Some(&p.writes)),
        ("reads", p.reads.as_ref()),
        ("lease_reads", p.lease.as_ref()),
        ("stale_reads", p.stale.as_ref()),
    ];
    let cpu = phases
        .into_iter()
        .filter_map(|(name, ph)| Some((name.to_string(), cpu_json(ph?))))
        .collect();
    f.push(("cpu_cores".to_string(), Json::Obj(cpu)));
    if let Some(p) = &p.writes.profile {
        f.push(("replica1_writes_profile".to_string(), profile_json(p)));
    }
    Json::Obj(f)
}

fn profile_json(p: &Profile) -> Json {
    obj([
        ("seconds", round3(p.seconds).into()),
        ("log_appends_per_s", round2(p.log_writes / p.seconds).into()),
        ("log_append_avg_us", round2(p.log_write_avg_us()).into()),
        ("raft_thread_in_appends", round3(p.log_busy()).into()),
        (
            "apply_commits_per_s",
            round2(p.apply_batches / p.seconds).into(),
        ),
        ("entries_per_commit", round2(p.entries_per_batch()).into()),
        ("apply_commit_avg_us", round2(p.commit_avg_us()).into()),
        ("apply_thread_in_commits", round3(p.apply_busy()).into()),
        ("disk_write_mb_per_s", round2(p.disk_mb_per_s()).into()),
        (
            "disk_write_bytes_per_client_write",
            round2(p.disk_bytes_per_write()).into(),
        ),
    ])
}

fn cpu_json(ph: &Phase) -> Json {
    let replicas = ph.cpu.iter().enumerate().map(|(i, u): (usize, &CpuUse)| {
        let threads = u
            .groups
            .iter()
            .map(|(g, c)| (g.clone(), round2(*c).into()))
            .collect();
        obj([
            ("replica", (i + 1).into()),
            ("total", round2(u.cores).into()),
            ("threads", Json::Obj(threads)),
        ])
    });
    Json::Arr(replicas.collect())
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn peer_json(p: &PeerRun) -> Json {
    let points = p.points.iter().map(|pt| match &pt.result {
        Ok((w, r)) => stats_point(pt.concurrency, w, r.as_ref()),
        Err(e) => obj([
            ("concurrency", pt.concurrency.into()),
            ("error", e.as_str().into()),
        ]),
    });
    obj([("results", Json::Arr(points.collect()))])
}

fn target_json(t: &Target) -> Json {
    obj([
        ("name", t.name.into()),
        ("value", t.value.into()),
        ("goal", t.goal_text().into()),
        ("met", t.met().into()),
    ])
}

fn soak_json(s: &Result<Soak, String>) -> Json {
    let s = match s {
        Ok(s) => s,
        Err(e) => return error_json(e),
    };
    let replicas: Vec<Json> = (0..3)
        .filter_map(|i| {
            let r = s.rss(i)?;
            Some(obj([
                ("replica", (i + 1).into()),
                ("rss_kb_start", r.start.into()),
                ("rss_kb_end", r.end.into()),
                ("rss_kb_min", r.min.into()),
                ("rss_kb_max", r.max.into()),
                ("anon_kb_start", r.anon_start.into()),
                ("anon_kb_end", r.anon_end.into()),
                ("deviation", round3(r.deviation).into()),
                ("flat", r.flat.into()),
            ]))
        })
        .collect();
    let flat = replicas
        .iter()
        .all(|r| r.get("flat") == Some(&Json::Bool(true)));
    // Anon apart from RSS tells heap growth from LMDB map pages coming and going.
    let samples = s.samples.iter().map(|(t, m)| {
        obj([
            ("t_s", round2(*t).into()),
            ("rss_kb", mem_json(m, |m| m.rss_kb)),
            ("anon_kb", mem_json(m, |m| m.anon_kb)),
        ])
    });
    obj([
        ("concurrency", soak::CONCURRENCY.into()),
        ("seconds", s.seconds.into()),
        ("warmup_s", s.warmup_s.into()),
        ("leader", s.leader.into()),
        ("writes", stats_point(soak::CONCURRENCY, &s.writes, None)),
        ("tolerance", soak::RSS_FLAT_TOLERANCE.into()),
        ("flat", flat.into()),
        ("replicas", Json::Arr(replicas)),
        ("samples", Json::Arr(samples.collect())),
    ])
}
