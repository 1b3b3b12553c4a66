//! One cluster, three languages: node 1 is hosted by the C example, node 2 by the Python
//! example (through the ctypes binding), node 3 by the Go example (through the cgo binding),
//! each in its own process. They only share the C ABI and the wire protocol.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{build_c_host, Cluster, FAST_RAFT};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Directory holding the `libkvr.so` built alongside this test.
fn libdir() -> PathBuf {
    common::fresh_cdylib();
    let dir = common::kvr_bin().parent().unwrap().to_path_buf();
    assert!(
        dir.join("libkvr.so").exists(),
        "libkvr.so not built in {}",
        dir.display()
    );
    dir
}

fn check_output(what: &str, out: std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the Go example into `out_dir`, pointing cgo at the header and this library.
fn build_go_host(out_dir: &Path) -> PathBuf {
    let libdir = libdir();
    if Command::new("go").arg("version").output().is_err() {
        panic!(
            "the mixed-language test needs the Go toolchain: `go` is not on PATH \
             (install Go 1.21 or newer)"
        );
    }
    let bin = out_dir.join("kvr-host-go");
    let out = Command::new("go")
        .args(["build", "-buildvcs=false", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(root().join("examples/go"))
        .env("CGO_ENABLED", "1")
        .env(
            "CGO_CFLAGS",
            format!("-I{}", root().join("include").display()),
        )
        .env(
            "CGO_LDFLAGS",
            format!("-L{0} -Wl,-rpath,{0} -lkvr", libdir.display()),
        )
        .output()
        .expect("running go build");
    check_output("building the Go example", out);
    bin
}

/// The Python example, importing the binding from the source tree and this library.
fn python_host_argv() -> Vec<String> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args([
            "-c",
            "import ctypes, sys; assert sys.version_info >= (3, 9)",
        ])
        .output();
    assert!(
        matches!(&probe, Ok(o) if o.status.success()),
        "the mixed-language test needs Python 3.9 or newer as `{python}` (or set PYTHON)"
    );
    vec![
        "env".into(),
        format!("KVR_LIBRARY={}", libdir().join("libkvr.so").display()),
        format!(
            "PYTHONPATH={}",
            root().join("bindings/python/src").display()
        ),
        python,
        root()
            .join("examples/python/kvr_host.py")
            .display()
            .to_string(),
    ]
}

const LANGUAGES: [&str; 3] = ["C", "Python", "Go"];

fn lang(id: u64) -> &'static str {
    LANGUAGES[(id - 1) as usize]
}

#[test]
fn c_python_and_go_hosts_form_one_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let c_host = build_c_host(tmp.path()).display().to_string();
    let go_host = build_go_host(tmp.path()).display().to_string();
    let py_host = python_host_argv();
    let mut c = Cluster::start_with(3, FAST_RAFT, |id| match id {
        1 => vec![c_host.clone()],
        2 => py_host.clone(),
        _ => vec![go_host.clone()],
    });
    c.wait_leader();

    // A write through each language is read, linearizably, through the other two.
    for writer in 1..=3 {
        let reply = c.node(writer).put(
            &format!("from-{}", lang(writer)),
            &format!("written by the {} host", lang(writer)),
        );
        assert_eq!(reply, "OK", "put through the {} host", lang(writer));
    }
    for reader in 1..=3 {
        for writer in (1..=3).filter(|&w| w != reader) {
            assert_eq!(
                c.node(reader).get(&format!("from-{}", lang(writer))),
                format!("written by the {} host", lang(writer)),
                "the {} host reading the {} host's write",
                lang(reader),
                lang(writer)
            );
        }
        assert_eq!(c.node(reader).get("never-written"), "NOT_FOUND");
    }

    // The same mistake gives the same code and text through every binding.
    let long_key = "k".repeat(600);
    let replies: Vec<String> = (1..=3).map(|id| c.node(id).put(&long_key, "v")).collect();
    assert!(replies[0].starts_with("ERR -2: "), "{replies:?}");
    assert!(replies.iter().all(|r| r == &replies[0]), "{replies:?}");

    // kill -9 the Go host; C and Python keep a quorum; the restarted Go host catches up.
    c.node(3).kill9();
    assert_eq!(c.node(1).put("while-go-down", "from C"), "OK");
    assert_eq!(c.node(2).put("while-go-down-2", "from Python"), "OK");
    assert_eq!(c.node(2).cmd("delete from-C"), "OK");
    c.node(3).start();
    assert_eq!(c.node(3).get("while-go-down"), "from C");
    assert_eq!(c.node(3).get("while-go-down-2"), "from Python");
    assert_eq!(c.node(3).get("from-C"), "NOT_FOUND");
    let s = c.node(3).status();
    assert!(
        s["applied_at_open"].parse::<u64>().unwrap() > 5,
        "the Go host did not recover its directory: {s:?}"
    );

    // The restarted Go host writes again, and the others see it.
    assert_eq!(c.node(3).put("after-restart", "from Go again"), "OK");
    assert_eq!(c.node(1).get("after-restart"), "from Go again");
    assert_eq!(c.node(2).get("after-restart"), "from Go again");
    for id in 1..=3 {
        c.node(id).stop();
    }
}
