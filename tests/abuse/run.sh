#!/usr/bin/env bash
# Builds the C ABI abuse program (tests/abuse/abuse.c) against target/debug/libkvr.so and runs
# it under valgrind, which must report no invalid access and no definite leak. Installs
# valgrind with apt when it is missing and this runs as root; without valgrind, runs it plain.
#
#   tests/abuse/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

cargo build --lib
out=$TARGET/abuse
mkdir -p "$out"
"${CC:-cc}" -std=c11 -Wall -Wextra -Werror -pedantic -pthread -O1 -g -I "$ROOT/include" \
    tests/abuse/abuse.c -L "$TARGET/debug" -lkvr -Wl,-rpath,"$TARGET/debug" -o "$out/abuse"

if ! command -v valgrind >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing valgrind"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind
fi
if command -v valgrind >/dev/null; then
    # Closed handles keep a small shell on purpose (listed, so "still reachable"): only
    # definite leaks count as errors.
    exec valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
        "$out/abuse"
fi
echo "tests/abuse/run.sh: valgrind is not available; running without it"
exec "$out/abuse"
