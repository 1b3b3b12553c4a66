//! Disk faults: libfiu's POSIX preload (`fiu-run`, `fiu-ctrl` from Debian's fiu-utils) to
//! make fsync/fdatasync/pwrite fail in one replica process at a chosen moment, and a small
//! tmpfs for a real ENOSPC.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// errno values injected through libfiu's `failinfo`.
pub const EIO: i32 = 5;
pub const ENOSPC: i32 = 28;

/// Failure points of libfiu's POSIX preload that LMDB's commits go through.
pub const SYNC_POINTS: &[&str] = &["posix/io/sync/fdatasync", "posix/io/sync/fsync"];
pub const WRITE_POINTS: &[&str] = &["posix/io/rw/pwrite", "posix/io/rw/pwritev"];

/// Panics with the install line when libfiu's tools are missing.
pub fn require_fiu() {
    assert!(
        which("fiu-run") && which("fiu-ctrl"),
        "disk-fault tests need libfiu's tools: apt-get install -y fiu-utils"
    );
}

fn which(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// argv prefix that runs the kvr CLI under libfiu's POSIX preload, controllable through
/// named pipes `<ctl>-<pid>.in/out`.
pub fn fiu_program(ctl: &Path) -> Vec<String> {
    vec![
        "fiu-run".into(),
        "-x".into(),
        "-f".into(),
        ctl.display().to_string(),
        crate::common::kvr_bin().display().to_string(),
    ]
}

/// Enables (`Some(errno)`) or disables (`None`) failure points in a running process.
pub fn fiu_ctrl(ctl: &Path, pid: u32, points: &[&str], errno: Option<i32>) {
    if let Err(e) = try_fiu_ctrl(ctl, pid, points, errno) {
        panic!("{e}");
    }
}

/// Longest `fiu-ctrl` may take: a stopped (SIGSTOP) process cannot answer on its control
/// pipes, and one that dies meanwhile never will, which would block the caller for good.
const FIU_CTRL_TIMEOUT: Duration = Duration::from_secs(5);

/// Like [`fiu_ctrl`], but an error when `fiu-ctrl` fails or gets no answer in time.
pub fn try_fiu_ctrl(
    ctl: &Path,
    pid: u32,
    points: &[&str],
    errno: Option<i32>,
) -> Result<(), String> {
    let mut cmd = Command::new("fiu-ctrl");
    cmd.arg("-f").arg(ctl);
    for p in points {
        cmd.arg("-c");
        cmd.arg(match errno {
            Some(e) => format!("enable name={p},failinfo={e}"),
            None => format!("disable name={p}"),
        });
    }
    // Its own process group, so that a timeout ends the script and the `cat` it waits on.
    let mut child = cmd
        .arg(pid.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("running fiu-ctrl: {e}"))?;
    let deadline = Instant::now() + FIU_CTRL_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                // SAFETY: kill(2) on the process group of a child we spawned and not reaped.
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
                let _ = child.wait();
                return Err(format!(
                    "fiu-ctrl got no answer from pid {pid} in {FIU_CTRL_TIMEOUT:?}"
                ));
            }
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("fiu-ctrl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "fiu-ctrl failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A tmpfs mounted for the life of the value (needs root or CAP_SYS_ADMIN).
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mb` MiB at `path`; `None` when mounting is not permitted here.
    pub fn mount(path: &Path, mb: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs {
            path: path.to_path_buf(),
        })
    }

    /// Grows the file system: the disk is no longer full.
    pub fn resize(&self, mb: u64) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={mb}m")])
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot resize the tmpfs at {}", self.path.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
