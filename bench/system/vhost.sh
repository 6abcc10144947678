#!/usr/bin/env bash
# bench/system/vhost.sh: the vhost-user benchmark behind `tapyard bench --vhost`.
#
# DPDK testpmd plays the VMs (virtio-user frontends, `--no-huge`), tapyard the
# switch; everything is measured in one run, so ratios mean something on a
# noisy machine. Figures (medians of --runs runs of --duration seconds):
#
#   ceiling_mpps     DPDK's own loop, no switch: testpmd txonly (virtio-user) into
#                    testpmd rxonly (vhost PMD), 64-byte frames: the ceiling
#   vhost_mpps       testpmd txonly -> tapyard vhost-user port -> tapyard vhost-user
#                    port -> testpmd rxonly: frames per second the receiver got
#   vhost_in_mpps    the same run: frames per second tapyard took from the sender
#   tap_mpps         testpmd txonly -> tapyard vhost-user port -> TAP port -> a
#                    container's kernel (frames its interface counted)
#   loop_mpps        one testpmd, two virtio-user ports, mac forwarding in a loop
#                    through two tapyard vhost-user ports: frames tapyard forwards
#                    per second when only two threads poll (testpmd's and tapyard's)
#   tcp_vm_ct_gbps   iperf3 TCP, 1 stream, from a kernel stack behind a DPDK
#   tcp_ct_vm_gbps   virtio-user port (testpmd io: net_tap <-> net_virtio_user, the
#                    "VM") to a container on a TAP port, and back (-R)
#   tcp_ct_ct_gbps   the same between two containers on TAP ports, for reference
#
# Lcores: the ceiling's receiver polls core 1 and its sender core 0; the tapyard
# runs keep that layout, the daemon runs one worker (pinned to core 0, beside the
# sender: on 2 cores three pollers must share, see docs/PERFORMANCE.md).
#
# usage: vhost.sh [--duration S] [--runs N] [--json] [--report DIR] [--keep]
# env: TAPYARD (the tapyard binary), TESTPMD_LIB (scripts/testpmd.sh; default: beside this file)
# Needs root (or uid 0 in a user namespace), dpdk-testpmd with its virtio-user,
# vhost and tap PMDs (scripts/setup.sh installs them), iperf3, jq.
# Everything it makes is named tyv<PID>... and removed on exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '[bench vhost %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf 'tapyard bench --vhost: %s\n' "$*" >&2; exit 1; }

DUR=5
RUNS=3
JSON=0
REPORT=""
KEEP=0
while (($#)); do
  case $1 in
  --duration) DUR=$2; shift 2 ;;
  --runs) RUNS=$2; shift 2 ;;
  --json) JSON=1; shift ;;
  --report) REPORT=$2; shift 2 ;;
  --keep) KEEP=1; shift ;;
  *) die "unknown argument '$1'" ;;
  esac
done
[[ $DUR =~ ^[0-9]+$ && $DUR -ge 2 ]] || die "--duration must be at least 2 seconds"
[[ $RUNS =~ ^[0-9]+$ && $RUNS -ge 1 ]] || die "--runs must be at least 1"
TAPYARD=${TAPYARD:-$(command -v tapyard || true)}
[[ -x $TAPYARD ]] || die "no tapyard binary (set TAPYARD)"
for t in ip iperf3 jq; do command -v $t > /dev/null || die "missing $t; install with scripts/setup.sh"; done

# shellcheck source=scripts/testpmd.sh
. "${TESTPMD_LIB:-$HERE/testpmd.sh}"
testpmd_available || die "dpdk-testpmd with the virtio-user and vhost PMDs is missing; apt-get install $TESTPMD_APT_PACKAGES"

P=tyv$$
W=$(testpmd_dir)
LOGS=$W/logs
mkdir -p "$LOGS"
: > "$W/runs.tsv"
DAEMON_PID=""
SERVER_PIDS=""
on_exit() {
  local rc=$?
  testpmd_cleanup || true
  if [[ -n $DAEMON_PID ]]; then kill "$DAEMON_PID" 2> /dev/null || true; wait "$DAEMON_PID" 2> /dev/null || true; fi
  for ns in "${P}ct" "${P}c2" "${P}vm"; do ip netns del "$ns" 2> /dev/null || true; done
  for pid in $SERVER_PIDS; do kill "$pid" 2> /dev/null || true; done
  if ((KEEP)); then log "kept $W"; else rm -rf "$W"; fi
  exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# The library is written for `set -u`, not `set -e`: call it in a tested
# context, where errexit does not apply inside it.
pmd_start() { testpmd_start "$@" || die "testpmd $1 did not start; see $W (--keep keeps it)"; }
pmd_stop() { testpmd_stop "$1" || true; }
rec() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$W/runs.tsv"; } # key run value
median() { sort -g | awk '{v[NR]=$1} END{ if (!NR) exit; print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2 }'; }
mpps() { awk -v p="$1" 'BEGIN{printf "%.3f", p / 1e6}'; }

ty() { "$TAPYARD" --socket "$W/ty.sock" "$@"; }
daemon_up() { # fresh daemon, one worker
  daemon_down
  rm -rf "$W/state"
  "$TAPYARD" --socket "$W/ty.sock" daemon --uplink none --workers 1 --state-dir "$W/state" >> "$LOGS/daemon.log" 2>&1 &
  DAEMON_PID=$!
  local i
  for ((i = 0; i < 100; i++)); do ty network ls > /dev/null 2>&1 && return 0; sleep 0.05; done
  die "tapyard daemon did not start; see $LOGS/daemon.log"
}
daemon_down() {
  if [[ -n $DAEMON_PID ]]; then kill "$DAEMON_PID" 2> /dev/null || true; wait "$DAEMON_PID" 2> /dev/null || true; fi
  DAEMON_PID=""
}
port_rx() { ty port ls --json | jq --arg s "$1" '.[] | select(.vhost.socket == $s) | .counters.rx_packets'; }
kernel_rx() { ip -n "$1" -j -s link show eth0 | jq '.[0].stats64.rx.packets'; }
MAC_A=02:00:00:00:0a:01
MAC_B=02:00:00:00:0a:02

# ------------------------------------------------------------------ measurements
run_ceiling() { # run
  local be=$W/ceil-be.$1.log fe=$W/ceil-fe.$1.log
  pmd_start ceilbe vhost rxonly "$W/ceil.sock" 0,1 "$be"
  pmd_start ceilfe virtio txonly "$W/ceil.sock" 1,0 "$fe" "mac=$MAC_A" --txpkts=64 "--eth-peer=0,$MAC_B"
  sleep "$DUR"
  pmd_stop ceilbe; pmd_stop ceilfe
  rec ceiling_mpps "$1" "$(mpps "$(testpmd_rx_pps "$be")")"
}

run_vhost() { # run
  local rx=$W/vh-rx.$1.log tx=$W/vh-tx.$1.log a0 a1
  daemon_up
  ty network create bn --ipam none > /dev/null
  ty connect bn --vhost-user "$W/a.sock" --mac $MAC_A > /dev/null
  ty connect bn --vhost-user "$W/b.sock" --mac $MAC_B > /dev/null
  pmd_start vhrx virtio rxonly "$W/b.sock" 0,1 "$rx" "mac=$MAC_B"
  pmd_start vhtx virtio txonly "$W/a.sock" 1,0 "$tx" "mac=$MAC_A" --txpkts=64 "--eth-peer=0,$MAC_B"
  sleep 2 # as testpmd_rx_pps drops its first two samples
  a0=$(port_rx "$W/a.sock")
  sleep $((DUR - 2))
  a1=$(port_rx "$W/a.sock")
  pmd_stop vhrx; pmd_stop vhtx
  ty port ls --json > "$LOGS/vhost-ports.$1.json"
  rec vhost_mpps "$1" "$(mpps "$(testpmd_rx_pps "$rx")")"
  rec vhost_in_mpps "$1" "$(awk -v a="$a0" -v b="$a1" -v d=$((DUR - 2)) 'BEGIN{printf "%.3f", (b - a) / d / 1e6}')"
  daemon_down
}

run_tap() { # run
  local tx=$W/tap-tx.$1.log ctmac k0 k1
  daemon_up
  ip netns add "${P}ct"
  ty network create tn --ipam none > /dev/null
  ty connect tn "${P}ct" > /dev/null
  ctmac=$(ty port ls --json | jq -r --arg n "${P}ct" '.[] | select(.netns == $n) | .mac')
  ty connect tn --vhost-user "$W/a.sock" --mac $MAC_A > /dev/null
  pmd_start taptx virtio txonly "$W/a.sock" 1,0 "$tx" "mac=$MAC_A" --txpkts=64 "--eth-peer=0,$ctmac"
  sleep 2
  k0=$(kernel_rx "${P}ct")
  sleep $((DUR - 2))
  k1=$(kernel_rx "${P}ct")
  pmd_stop taptx
  ty port ls --json > "$LOGS/tap-ports.$1.json"
  rec tap_mpps "$1" "$(awk -v a="$k0" -v b="$k1" -v d=$((DUR - 2)) 'BEGIN{printf "%.3f", (b - a) / d / 1e6}')"
  daemon_down
  ip netns del "${P}ct"
}

run_loop() { # run
  local lg=$W/loop.$1.log a0 a1 b0 b1
  daemon_up
  ty network create ln --ipam none > /dev/null
  ty connect ln --vhost-user "$W/a.sock" --mac $MAC_A > /dev/null
  ty connect ln --vhost-user "$W/b.sock" --mac $MAC_B > /dev/null
  # One testpmd, both ports, forwarding lcore 1; mac mode rewrites the MACs so
  # tapyard learns each port where it is; --tx-first puts the frames in flight.
  TESTPMD_EAL_EXTRA="--vdev net_virtio_user1,path=$W/b.sock,mac=$MAC_B" \
    pmd_start loop virtio mac "$W/a.sock" 0,1 "$lg" "mac=$MAC_A" \
    "--eth-peer=0,$MAC_B" "--eth-peer=1,$MAC_A" --tx-first --burst=64
  sleep 2
  a0=$(port_rx "$W/a.sock"); b0=$(port_rx "$W/b.sock")
  sleep $((DUR - 2))
  a1=$(port_rx "$W/a.sock"); b1=$(port_rx "$W/b.sock")
  pmd_stop loop
  rec loop_mpps "$1" "$(awk -v a=$((a1 - a0 + b1 - b0)) -v d=$((DUR - 2)) 'BEGIN{printf "%.3f", a / d / 1e6}')"
  daemon_down
}

iperf_gbps() { # from-ns server-ip [args]: one TCP stream of DUR seconds
  local from=$1 ip=$2 js
  shift 2
  js=$(ip netns exec "$from" iperf3 -c "$ip" -p 5399 -t "$DUR" -J "$@" 2> /dev/null || true)
  jq -r '.end.sum_received.bits_per_second // 0 | . / 1e9 | . * 1000 | round / 1000' <<< "$js" 2> /dev/null || echo 0
}
iperf_server() { # ns: a one-off iperf3 server, tracked by pid
  ip netns exec "$1" iperf3 -s -p 5399 --one-off >> "$LOGS/iperf3-server.log" 2>&1 &
  SERVER_PIDS+=" $!"
  local i
  for ((i = 0; i < 50; i++)); do ip netns exec "$1" ss -ltn 2> /dev/null | grep -q ':5399 ' && return 0; sleep 0.1; done
}

run_tcp() { # run
  local br=$W/tcp-bridge.$1.log
  daemon_up
  ip netns add "${P}ct"; ip netns add "${P}c2"; ip netns add "${P}vm"
  ty network create vn --subnet 10.93.0.0/24 > /dev/null
  ty connect vn "${P}ct" --ip 10.93.0.2/24 > /dev/null
  ty connect vn "${P}c2" --ip 10.93.0.3/24 > /dev/null
  ty connect vn --vhost-user "$W/v.sock" --mac $MAC_A > /dev/null
  # The "VM": a kernel stack in ${P}vm behind DPDK, net_tap <-> net_virtio_user
  # forwarded by testpmd (io); testpmd runs in that namespace so its TAP is made there.
  printf '#!/bin/sh\nexec ip netns exec %s dpdk-testpmd "$@"\n' "${P}vm" > "$W/testpmd-in-vm"
  chmod 755 "$W/testpmd-in-vm"
  TESTPMD_BIN=$W/testpmd-in-vm TESTPMD_EAL_EXTRA="--vdev net_tap0,iface=vmeth0,mac=$MAC_A" \
    pmd_start vmbr virtio io "$W/v.sock" 0,1 "$br" "mac=$MAC_A"
  ip -n "${P}vm" addr add 10.93.0.50/24 dev vmeth0
  ip -n "${P}vm" link set vmeth0 up
  ip netns exec "${P}vm" ping -c 3 -i 0.2 -W 2 -q 10.93.0.2 > /dev/null 2>&1 || log "  the VM cannot ping the container yet"
  iperf_server "${P}ct"
  rec tcp_vm_ct_gbps "$1" "$(iperf_gbps "${P}vm" 10.93.0.2)"
  iperf_server "${P}ct"
  rec tcp_ct_vm_gbps "$1" "$(iperf_gbps "${P}vm" 10.93.0.2 -R)"
  iperf_server "${P}ct"
  rec tcp_ct_ct_gbps "$1" "$(iperf_gbps "${P}c2" 10.93.0.2)"
  pmd_stop vmbr
  ty port ls --json > "$LOGS/tcp-ports.$1.json"
  daemon_down
  for ns in "${P}ct" "${P}c2" "${P}vm"; do ip netns del "$ns" 2> /dev/null || true; done
}

log "machine: $(nproc) CPUs, kernel $(uname -r); $RUNS x $DUR s; DPDK $(pkg-config --modversion libdpdk 2> /dev/null || echo '?')"
for ((r = 1; r <= RUNS; r++)); do
  log "run $r/$RUNS: DPDK's own loop (ceiling)"; run_ceiling "$r"
  log "run $r/$RUNS: testpmd -> tapyard -> testpmd"; run_vhost "$r"
  log "run $r/$RUNS: testpmd -> tapyard -> TAP"; run_tap "$r"
  log "run $r/$RUNS: testpmd loop through tapyard"; run_loop "$r"
  log "run $r/$RUNS: TCP, VM (virtio-user) <-> container"; run_tcp "$r"
done

fig() { awk -F'\t' -v k="$1" '$1 == k {print $3}' "$W/runs.tsv" | median; }
RESULTS=$(jq -n --rawfile runs "$W/runs.tsv" --arg nproc "$(nproc)" --arg kernel "$(uname -r)" \
  --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg ver "$("$TAPYARD" --version 2> /dev/null || true)" \
  --argjson dur "$DUR" --argjson nruns "$RUNS" '
  def median: sort | if length == 0 then null elif length % 2 == 1 then .[(length - 1) / 2]
              else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def r3: if . == null then null else (. * 1000 | round) / 1000 end;
  ($runs | split("\n") | map(select(length > 0) | split("\t"))) as $rows |
  ($rows | group_by(.[0]) | map({key: .[0][0], value: map(.[2] | tonumber)}) | from_entries) as $r |
  ($r | map_values(median | r3)) as $f |
  def ratio($a; $b): if $f[$a] == null or $f[$b] == null or $f[$b] == 0 then null else ($f[$a] / $f[$b] * 100 | round) / 100 end;
  {tool: "tapyard bench --vhost", schema_version: 1,
   machine: {nproc: ($nproc | tonumber), kernel: $kernel, date: $date, tapyard_version: $ver},
   config: {duration_s: $dur, runs: $nruns, frame_bytes: 64, workers: 1},
   figures: $f,
   ratios: {vhost_to_ceiling: ratio("vhost_mpps"; "ceiling_mpps"), vhost_to_tap: ratio("vhost_mpps"; "tap_mpps"),
            loop_to_ceiling: ratio("loop_mpps"; "ceiling_mpps"), vm_ct_tcp_to_ct_ct: ratio("tcp_vm_ct_gbps"; "tcp_ct_ct_gbps")},
   runs: $r}')

table() {
  jq -r '
    def row($k; $l; $unit): [$l, (.figures[$k] // "-" | tostring), $unit] | @tsv;
    row("ceiling_mpps"; "DPDK vhost <-> virtio-user, no switch (ceiling)"; "Mpps"),
    row("vhost_mpps"; "testpmd -> tapyard (vhost-user -> vhost-user) -> testpmd"; "Mpps"),
    row("vhost_in_mpps"; "  of which tapyard took from the sender"; "Mpps"),
    row("tap_mpps"; "testpmd -> tapyard (vhost-user -> TAP) -> container"; "Mpps"),
    row("loop_mpps"; "testpmd loop through two tapyard vhost-user ports"; "Mpps"),
    row("tcp_vm_ct_gbps"; "TCP, virtio-user VM -> container"; "Gbit/s"),
    row("tcp_ct_vm_gbps"; "TCP, container -> virtio-user VM"; "Gbit/s"),
    row("tcp_ct_ct_gbps"; "TCP, container -> container (TAP ports)"; "Gbit/s"),
    (["ratio vhost/ceiling", (.ratios.vhost_to_ceiling // "-" | tostring), "(target >= 0.5)"] | @tsv),
    (["ratio vhost/TAP", (.ratios.vhost_to_tap // "-" | tostring), "(target >= 5)"] | @tsv),
    (["ratio loop/ceiling", (.ratios.loop_to_ceiling // "-" | tostring), ""] | @tsv)' <<< "$RESULTS" |
    awk -F'\t' '{printf "%-62s %10s  %s\n", $1, $2, $3}'
}

if [[ -n $REPORT ]]; then
  mkdir -p "$REPORT"
  printf '%s\n' "$RESULTS" > "$REPORT/results.json"
  {
    echo "# tapyard bench --vhost, $(jq -r .machine.date <<< "$RESULTS")"
    echo
    echo "$(nproc) CPUs, kernel $(uname -r), $RUNS run$( ((RUNS == 1)) || echo s) x $DUR s, medians; 64-byte frames; daemon --workers 1."
    echo
    echo '```'
    table
    echo '```'
  } > "$REPORT/results.md"
  cp -r "$LOGS" "$REPORT/logs"
  log "report written to $REPORT"
fi
if ((JSON)); then printf '%s\n' "$RESULTS"; else table; fi
