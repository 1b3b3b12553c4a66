#!/bin/sh
# Installs etcd 3.4 (Debian's etcd-server) when missing and builds the two
# peer launchers into OUT_DIR. Safe to run repeatedly.
#
# usage: tests/bench/peers/install.sh OUT_DIR
set -eu

out=${1:?usage: $0 OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)

if [ ! -x /usr/bin/etcd ]; then
    sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q
    $sudo apt-get install -y -q --no-install-recommends etcd-server
    # The package enables a default etcd service; on a systemd host it would
    # compete with the benchmark for CPU and disk.
    if [ -d /run/systemd/system ]; then
        $sudo systemctl disable --now etcd >/dev/null 2>&1 || true
    fi
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
for peer in etcd dragonboat; do
    echo "building $out/$peer-bench" >&2
    (cd "$here/$peer" && go build -trimpath -buildvcs=false -o "$out/$peer-bench" .)
done
