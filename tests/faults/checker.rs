//! Runs the porcupine checker (the Go module in tests/linearizability) on a history file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Builds the checker once per test process; panics with the reason when it cannot.
pub fn checker_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/linearizability");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kvr-lincheck");
        let built = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(&src)
            .output()
            .unwrap_or_else(|e| {
                panic!("the linearizability checker needs Go (https://go.dev/dl/): `go`: {e}")
            });
        assert!(
            built.status.success(),
            "go build in {} failed:\n{}",
            src.display(),
            String::from_utf8_lossy(&built.stderr)
        );
        out
    })
}

/// The checker's verdict on one history.
pub struct Verdict {
    pub linearizable: bool,
    /// The checker's summary line (and the visualization's path on a violation).
    pub summary: String,
}

/// Checks `history` (JSON lines); a visualization goes into `out_dir` on a violation.
/// Panics when the checker cannot decide (bad input, or the search timed out).
pub fn check(history: &Path, out_dir: &Path) -> Verdict {
    let out = Command::new(checker_bin())
        .arg("-history")
        .arg(history)
        .arg("-out")
        .arg(out_dir)
        .arg("-timeout")
        .arg("300s")
        .output()
        .expect("running the linearizability checker");
    let summary = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    match out.status.code() {
        Some(0) => Verdict {
            linearizable: true,
            summary,
        },
        Some(1) => Verdict {
            linearizable: false,
            summary,
        },
        _ => panic!(
            "the linearizability checker could not decide on {}: {summary}",
            history.display()
        ),
    }
}
