//! The committed C header matches what build.rs generates from src/ffi.rs.
//! After changing the ABI: `KVR_UPDATE_HEADER=1 cargo build` and commit include/kvr.h.

#[test]
fn committed_header_is_current() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/kvr.h"));
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/kvr.h"))
        .expect("include/kvr.h is committed");
    assert!(
        generated == committed,
        "include/kvr.h is out of date: run `KVR_UPDATE_HEADER=1 cargo build` and commit it"
    );
}

#[test]
fn header_compiles_as_c_and_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("t.c");
    std::fs::write(&src, "#include \"kvr.h\"\nint main(void) { return kvr_version() == KVR_VERSION_NUMBER ? 0 : 1; }\n")
        .unwrap();
    let include = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
    for (compiler, extra) in [
        ("cc", vec!["-std=c99", "-pedantic"]),
        ("c++", vec!["-x", "c++", "-std=c++11"]),
    ] {
        let out = std::process::Command::new(compiler)
            .args(&extra)
            .args([
                "-Wall",
                "-Wextra",
                "-Werror",
                "-fsyntax-only",
                "-I",
                include,
            ])
            .arg(&src)
            .output()
            .expect("a C and C++ compiler");
        assert!(
            out.status.success(),
            "{compiler}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
