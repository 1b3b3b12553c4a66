//! Facts about the machine and the code measured, recorded with every report.

use std::ffi::CString;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::json::{obj, Json};

pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub kernel: String,
    pub mem_total_kb: Option<u64>,
    pub fs: String,
    pub date: String,
    pub commit: Option<String>,
    /// Tracked files differ from the commit: the binary may include uncommitted work.
    pub dirty: Option<bool>,
}

impl Machine {
    /// Collects the facts; `data_dir` is where the replicas keep their files.
    pub fn collect(data_dir: &Path) -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let repo = env!("CARGO_MANIFEST_DIR");
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu: field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into()),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or("unknown".into(), |s| format!("Linux {}", s.trim())),
            mem_total_kb: field(&meminfo, "MemTotal")
                .and_then(|v| v.split_whitespace().next()?.parse().ok()),
            fs: fs_type(data_dir),
            date: utc_now(),
            commit: git(repo, &["rev-parse", "HEAD"]),
            dirty: git(repo, &["status", "--porcelain", "--untracked-files=no"])
                .map(|s| !s.is_empty()),
        }
    }

    pub fn json(&self) -> Json {
        obj([
            ("nproc", self.nproc.into()),
            ("cpu", self.cpu.as_str().into()),
            ("kernel", self.kernel.as_str().into()),
            ("mem_total_kb", self.mem_total_kb.into()),
            ("data_fs", self.fs.as_str().into()),
            ("date", self.date.as_str().into()),
            ("kvr_commit", self.commit.clone().into()),
            ("kvr_tree_dirty", self.dirty.into()),
        ])
    }
}

fn field(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

fn git(repo: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The file system type under `dir`: fsync on tmpfs would make every figure meaningless.
fn fs_type(dir: &Path) -> String {
    let Ok(c) = CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return "unknown".into();
    };
    // SAFETY: statfs fills a zeroed struct from a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "unknown".into();
    }
    // f_type's integer type differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64;
    match magic {
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0x2FC1_2FC1 => "zfs".into(),
        0x6969 => "nfs".into(),
        other => format!("0x{other:x}"),
    }
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    }
}
