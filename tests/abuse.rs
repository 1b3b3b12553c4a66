//! The C ABI abuse program (`tests/abuse/abuse.c`) compiles warning-free against the committed
//! header, covers every function the header exports, and passes every check against the built
//! library: NULL pointers, zero lengths, oversized keys and values, bad options, a closed
//! handle, double close and a close racing calls in other threads each give a named code.
//! `tests/abuse/run.sh` runs the same program under valgrind.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The directory holding the built `libkvr.so`: the profile directory after `cargo build`,
/// else `deps/`, where `cargo test` alone leaves it.
fn lib_dir() -> PathBuf {
    let profile = PathBuf::from(env!("CARGO_BIN_EXE_kvr"))
        .parent()
        .expect("the binary sits in the target directory")
        .to_path_buf();
    let dirs = [profile.clone(), profile.join("deps")];
    dirs.iter()
        .find(|d| d.join("libkvr.so").exists())
        .unwrap_or_else(|| panic!("libkvr.so not built in {}", profile.display()))
        .clone()
}

/// Compiles the program with `-Wall -Wextra -Werror -pedantic` into `out_dir`.
fn build_abuse(out_dir: &Path) -> PathBuf {
    let libdir = lib_dir();
    let bin = out_dir.join("abuse");
    let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-pthread",
            "-O1",
            "-g",
        ])
        .arg(format!("-I{}", root().join("include").display()))
        .arg(root().join("tests/abuse/abuse.c"))
        .arg(format!("-L{}", libdir.display()))
        .arg("-lkvr")
        .arg(format!("-Wl,-rpath,{}", libdir.display()))
        .arg("-o")
        .arg(&bin)
        .output()
        .expect("running the C compiler");
    assert!(
        out.status.success(),
        "tests/abuse/abuse.c failed to compile:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

#[test]
fn every_abi_function_answers_abuse_with_a_named_code() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = build_abuse(tmp.path());
    let out = Command::new(&bin)
        .env("TMPDIR", tmp.path())
        .output()
        .expect("running the abuse program");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "abuse program failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    let passed = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(passed >= 250, "only {passed} checks passed:\n{stdout}");
    assert!(
        stdout.trim_end().ends_with(" checks, 0 failed"),
        "no summary line:\n{stdout}"
    );
}

/// The names of the functions `include/kvr.h` declares.
fn exported_functions() -> Vec<String> {
    let header = std::fs::read_to_string(root().join("include/kvr.h")).unwrap();
    let mut names: Vec<String> = header
        .lines()
        .filter(|l| !l.starts_with([' ', '*', '/', '#']))
        .filter_map(|l| {
            let open = l.find('(')?;
            let name = l[..open].rsplit([' ', '*']).next()?;
            name.starts_with("kvr_").then(|| name.to_string())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn the_abuse_program_calls_every_exported_function() {
    let names = exported_functions();
    assert!(
        names.len() >= 20 && names.iter().any(|n| n == "kvr_close"),
        "header parse found {names:?}"
    );
    let program = std::fs::read_to_string(root().join("tests/abuse/abuse.c")).unwrap();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !program.contains(&format!("{n}(")))
        .collect();
    assert!(
        missing.is_empty(),
        "tests/abuse/abuse.c never calls {missing:?}: add its NULL, oversized and closed-handle cases"
    );
}
