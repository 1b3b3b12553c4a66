//! Memory and per-thread CPU time of processes, read from /proc.

use std::collections::HashMap;
use std::fs;
use std::time::Instant;

/// Thread groups listed per process in a CPU breakdown.
const THREAD_GROUPS_SHOWN: usize = 8;

/// Resident memory of one process, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Mem {
    /// VmRSS: everything resident, including LMDB's file-backed map pages.
    pub rss_kb: u64,
    /// RssAnon: heap and stacks only.
    pub anon_kb: u64,
}

/// Resident memory of `pid`, or `None` when it is gone.
pub fn mem(pid: u32) -> Option<Mem> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
    };
    Some(Mem {
        rss_kb: field("VmRSS:")?,
        anon_kb: field("RssAnon:").unwrap_or(0),
    })
}

/// The `/sys` statistics file of the block device holding `path`, when there is one.
pub fn disk_stat_file(path: &std::path::Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(path).ok()?.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let file = std::path::PathBuf::from(format!("/sys/dev/block/{major}:{minor}/stat"));
    file.exists().then_some(file)
}

/// Bytes written so far by the device whose statistics file is `stat`.
pub fn disk_bytes_written(stat: &std::path::Path) -> Option<u64> {
    let text = fs::read_to_string(stat).ok()?;
    let f: Vec<u64> = text
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    Some(f.get(6)? * 512)
}

/// CPU ticks of every thread of one process at one moment.
pub struct CpuSnapshot {
    at: Instant,
    threads: HashMap<u32, (String, u64)>,
}

/// Reads utime + stime of every thread of `pid`.
pub fn cpu_snapshot(pid: u32) -> CpuSnapshot {
    let mut threads = HashMap::new();
    let dir = format!("/proc/{pid}/task");
    for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some(t) = fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
        {
            threads.insert(tid, t);
        }
    }
    CpuSnapshot {
        at: Instant::now(),
        threads,
    }
}

/// `(comm, utime + stime)` from a /proc stat line; comm may hold spaces and parentheses.
fn parse_stat(s: &str) -> Option<(String, u64)> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_string();
    // Fields after "(comm)" start at field 3 (state); utime and stime are fields 14 and 15.
    let rest: Vec<&str> = s.get(close + 1..)?.split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// Threads named alike (`kvr-peer-1-2`, `kvr-peer-1-3`) count as one group (`kvr-peer`).
fn group_name(comm: &str) -> String {
    let g = comm.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
    if g.is_empty() {
        comm.to_string()
    } else {
        g.to_string()
    }
}

/// CPU used by one process between two snapshots, in cores (CPU seconds per second).
#[derive(Debug, Clone, PartialEq)]
pub struct CpuUse {
    pub cores: f64,
    /// The busiest thread groups, busiest first.
    pub groups: Vec<(String, f64)>,
}

/// CPU used between `before` and `after`; threads that started in between count from zero.
pub fn cpu_use(before: &CpuSnapshot, after: &CpuSnapshot) -> CpuUse {
    let secs = after.at.duration_since(before.at).as_secs_f64().max(1e-3);
    let tick = clock_ticks_per_s();
    let mut by_group: HashMap<String, u64> = HashMap::new();
    for (tid, (comm, ticks)) in &after.threads {
        let was = before.threads.get(tid).map_or(0, |(_, t)| *t);
        *by_group.entry(group_name(comm)).or_default() += ticks.saturating_sub(was);
    }
    let cores = |t: u64| t as f64 / tick / secs;
    let total = by_group.values().sum::<u64>();
    let mut groups: Vec<(String, f64)> = by_group
        .into_iter()
        .filter(|(_, t)| *t > 0)
        .map(|(g, t)| (g, cores(t)))
        .collect();
    groups.sort_by(|a, b| b.1.total_cmp(&a.1));
    groups.truncate(THREAD_GROUPS_SHOWN);
    CpuUse {
        cores: cores(total),
        groups,
    }
}

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let line = "42 (kvr peer) 1) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15";
        assert_eq!(parse_stat(line), Some(("kvr peer) 1".to_string(), 23)));
        assert_eq!(group_name("kvr-peer-1-2"), "kvr-peer");
        assert_eq!(group_name("kvr-raft-1"), "kvr-raft");
        assert_eq!(group_name("42"), "42");
    }

    #[test]
    fn reads_this_process() {
        let m = mem(std::process::id()).expect("own /proc entry");
        assert!(m.rss_kb > 0);
        assert!(!cpu_snapshot(std::process::id()).threads.is_empty());
    }
}
