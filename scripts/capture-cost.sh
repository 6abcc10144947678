#!/usr/bin/env bash
# Measures what the flight recorder costs switching throughput (docs/capture.md):
# iperf3 TCP between two namespaces on one network, through daemons started
# with --flight-recorder 256 (the default) and --flight-recorder 0 (off),
# alternating in one run so both see the same machine. Prints one line per
# run and the medians. Root; needs iperf3, jq and bc.
#
#   scripts/capture-cost.sh [RUNS] [SECONDS] [OFFLOAD on|off]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5} secs=${2:-5} offload=${3:-on}
bin=${TAPYARD:-target/release/tapyard}
[ -x "$bin" ] || { echo "build it first: cargo build --release -p tapyard-switch --bin tapyard" >&2; exit 2; }
tag=tycc$$
dir=$(mktemp -d)
sock=$dir/ty.sock
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  ip netns del "${tag}a" 2>/dev/null || true
  ip netns del "${tag}b" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
ip netns add "${tag}a"
ip netns add "${tag}b"
ty() { "$bin" --socket "$sock" "$@"; }

# One iperf3 run through a daemon with flight recorder depth $1: Gbit/s.
one() {
  "$bin" --socket "$sock" daemon --uplink none --state-dir "$dir/state" --flight-recorder "$1" 2>"$dir/daemon.log" &
  pid=$!
  for _ in $(seq 100); do ty network ls >/dev/null 2>&1 && break; sleep 0.05; done
  ty network create n --subnet 10.94.0.0/24 >/dev/null
  ty connect n "${tag}a" --ip 10.94.0.2/24 --offload "$offload" >/dev/null
  ty connect n "${tag}b" --ip 10.94.0.3/24 --offload "$offload" >/dev/null
  ip netns exec "${tag}b" iperf3 -s -1 >/dev/null 2>&1 &
  local srv=$!
  for _ in $(seq 100); do ip netns exec "${tag}b" ss -ltn | grep -q ':5201 ' && break; sleep 0.05; done
  ip netns exec "${tag}a" iperf3 -c 10.94.0.3 -t "$secs" -J | jq '.end.sum_received.bits_per_second / 1e9'
  wait "$srv" 2>/dev/null || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
  pid=
  rm -rf "$dir/state"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
on=() off=()
for r in $(seq "$runs"); do
  a=$(one 256); b=$(one 0)
  on+=("$a"); off+=("$b")
  printf 'run %d: recorder on %.2f Gbit/s, off %.2f Gbit/s, on/off %.3f\n' "$r" "$a" "$b" "$(echo "$a / $b" | bc -l)"
done
mon=$(printf '%s\n' "${on[@]}" | median)
moff=$(printf '%s\n' "${off[@]}" | median)
ratios=$(for i in "${!on[@]}"; do printf '%.3f\n' "$(echo "${on[$i]} / ${off[$i]}" | bc -l)"; done | sort -g)
printf 'offload %s, %d runs of %d s: median on %.2f Gbit/s, off %.2f Gbit/s, on/off %.3f (per-run ratios %s .. %s)\n' \
  "$offload" "$runs" "$secs" "$mon" "$moff" "$(echo "$mon / $moff" | bc -l)" "$(echo "$ratios" | head -1)" "$(echo "$ratios" | tail -1)"
