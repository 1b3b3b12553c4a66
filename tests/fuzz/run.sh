#!/usr/bin/env bash
# Runs every fuzz target of kvr for SECONDS each (default 5) and exits non-zero if any of them
# crashes, times out or leaks. Needs a nightly toolchain (cargo-fuzz builds with
# -Zsanitizer=address); installs cargo-fuzz when it is missing.
#
#   tests/fuzz/run.sh [SECONDS]
#
# The committed seeds (tests/fuzz/seeds/<target>) are read, never written: what the fuzzer
# learns goes to a scratch corpus deleted at the end. A crashing input is kept under
# tests/fuzz/artifacts/<target>/; replay it with
#   cargo +nightly fuzz run --fuzz-dir tests/fuzz <target> <file>
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_TARGET=${1:-5}
FUZZ_DIR=tests/fuzz

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "tests/fuzz/run.sh: a nightly Rust toolchain is required (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/kvr-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Targets that need scratch files (snapshot staging environments) put them here.
export TMPDIR=$work

echo "==> building fuzz targets"
cargo +nightly fuzz build --fuzz-dir "$FUZZ_DIR"

failed=()
for target in $(cargo +nightly fuzz list --fuzz-dir "$FUZZ_DIR"); do
    echo "==> fuzzing $target for ${SECONDS_PER_TARGET}s"
    corpus=("$work/corpus/$target")
    mkdir -p "${corpus[0]}"
    [ -d "$FUZZ_DIR/seeds/$target" ] && corpus+=("$FUZZ_DIR/seeds/$target")
    if ! cargo +nightly fuzz run --fuzz-dir "$FUZZ_DIR" "$target" "${corpus[@]}" -- \
        -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 >"$work/$target.log" 2>&1; then
        # The cause (a panic message or a sanitizer report), then where the input was kept.
        grep -m 1 -A 2 -E 'panicked at|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)' \
            "$work/$target.log" || true
        sed -n '/^Failing input:/,/^Reproduce with:/p; /^Reproduce with:/{n;n;p;}' "$work/$target.log"
        failed+=("$target")
        continue
    fi
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$work/$target.log" || true
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "tests/fuzz/run.sh: FAILED: ${failed[*]} (inputs under $FUZZ_DIR/artifacts/)" >&2
    exit 1
fi
echo "==> every fuzz target ran ${SECONDS_PER_TARGET}s without a crash"
