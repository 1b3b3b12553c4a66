#!/usr/bin/env bash
# Runs every test of kvr: lints; Rust unit and integration tests (clusters of real processes,
# fault schedules, crash and disk-fault tests, the C example, the benchmark's smoke run); the C
# ABI abuse suite under valgrind; short fuzzing runs; the Python and Go bindings. Installs what
# it needs (Debian packages, Python packages, cargo-fuzz). Exits non-zero on any failure.
#
#   tests/run-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt || true
# The fuzz targets build with cargo-fuzz, which needs a nightly toolchain.
cargo +nightly --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
cargo --version; rustc --version
command -v go >/dev/null && go version
command -v python3 >/dev/null && python3 --version

step "system packages"
# Disk-fault tests inject errors with libfiu; the C ABI abuse suite runs under valgrind.
missing=()
command -v fiu-run >/dev/null || missing+=(fiu-utils)
command -v valgrind >/dev/null || missing+=(valgrind)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    else
        echo "missing ${missing[*]} (install them, or run as root so this script can)" >&2
        exit 1
    fi
fi

step "rust: format and lints"
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings

step "rust: build (library, CLI, C header)"
cargo build --all-targets

step "rust: tests"
cargo test -- --test-threads="${KVR_TEST_THREADS:-2}"

step "C ABI abuse suite under valgrind"
tests/abuse/run.sh

step "fuzzing (short runs)"
tests/fuzz/run.sh "${KVR_FUZZ_SECONDS:-5}"

if [ -d bindings/python ]; then
    step "python binding"
    VENV=$ROOT/target/venv
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip pytest
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./bindings/python
    KVR_LIBRARY=$ROOT/target/debug/libkvr.so "$VENV/bin/python" -m pytest -q bindings/python/tests
fi

if [ -d bindings/go ]; then
    step "go binding"
    export CGO_CFLAGS="-I$ROOT/include"
    export CGO_LDFLAGS="-L$ROOT/target/debug -Wl,-rpath,$ROOT/target/debug -lkvr"
    (cd bindings/go && go vet ./... && go test -count=1 ./...)
    if [ -d examples/go ]; then (cd examples/go && go vet ./...); fi
fi

step "all tests passed"
