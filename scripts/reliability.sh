#!/bin/sh
# The long runs of issue 15's reliability tests, with the numbers
# docs/RELIABILITY.md reports: the fault-injection test (1,000 operations,
# 50 kills), the restart blackout (7 runs per mode) and the soak (10,000
# connect/disconnect and 10,000 DHCP lease cycles). As root (they make
# namespaces and TAPs). The default suite runs short versions of each.
#
# Sizes: TAPYARD_CRASH_OPS, TAPYARD_CRASH_KILLS, TAPYARD_CRASH_SEED,
# TAPYARD_BLACKOUT_RUNS, TAPYARD_SOAK_CYCLES.
set -eu
cd "$(dirname "$0")/.."
export TAPYARD_CRASH_OPS="${TAPYARD_CRASH_OPS:-1000}"
export TAPYARD_CRASH_KILLS="${TAPYARD_CRASH_KILLS:-50}"
export TAPYARD_BLACKOUT_RUNS="${TAPYARD_BLACKOUT_RUNS:-7}"
export TAPYARD_SOAK_CYCLES="${TAPYARD_SOAK_CYCLES:-10000}"
cargo test -p tapyard-switch --test crash -- --nocapture
cargo test -p tapyard-switch --test blackout -- --include-ignored --nocapture
cargo test -p tapyard-switch --test soak -- --nocapture
