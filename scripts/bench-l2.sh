#!/usr/bin/env bash
# bench-l2.sh — the quick system benchmark: tapyard switched and routed against
# the Linux kernel bridge (veth), in one run. A release build, then
# `tapyard bench` (docs/PERFORMANCE.md) with the settings this script always
# had: TCP one stream and 64-byte UDP frames ($DUR s each), $PINGS pings 10 ms
# apart, medians of $RUNS runs. More `tapyard bench` flags may follow, e.g.
# --json, --report DIR, or --against bridge,vde,ovs for the full comparison.
#
# usage: scripts/bench-l2.sh [FLAGS]    env: RUNS=3 DUR=5 PINGS=200 TY_WORKERS=(daemon default)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench-l2.sh: run as root" >&2; exit 1; }
cargo build --release --quiet -p tapyard-switch
exec "${CARGO_TARGET_DIR:-target}/release/tapyard" bench --against bridge --paths switched,routed \
  --tests tcp1,udp,ping --runs "${RUNS:-3}" --duration "${DUR:-5}" --pings "${PINGS:-200}" --ping-interval 0.01 \
  ${TY_WORKERS:+--workers "$TY_WORKERS"} "$@"
