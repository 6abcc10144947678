#!/usr/bin/env bash
# bench-l2.sh — a quick system benchmark of tapyard's L2 path against the Linux
# kernel bridge (veth), measured in one run so the ratio means something on a
# noisy machine. Two namespaces A and B on each path; from A to B:
#   - TCP throughput, one stream (iperf3, $DUR s)
#   - UDP 18-byte payload (64-byte frames) received per second (iperf3 -u -b 0)
#   - ping round-trip time, $PINGS pings 10 ms apart (median and 99th percentile)
# Medians of $RUNS runs. Needs root, iperf3, ping, a release build of tapyard.
# The full harness with vde_switch and Open vSwitch is `tapyard bench` (fast-path issue).
#
# usage: scripts/bench-l2.sh            env: RUNS=3 DUR=5 PINGS=200 TY_WORKERS=(daemon default)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}; DUR=${DUR:-5}; PINGS=${PINGS:-200}
for t in iperf3 ping ip jq; do command -v $t >/dev/null || { echo "missing tool: $t (apt-get install iperf3 jq iputils-ping)"; exit 1; }; done
[ "$(id -u)" -eq 0 ] || { echo "run as root"; exit 1; }
cargo build --release --quiet -p tapyard-switch
TY=$PWD/target/release/tapyard
P=tyb$$; W=$(mktemp -d /tmp/tapyard-bench.XXXXXX); SOCK=$W/ty.sock
A=$P-a; B=$P-b; S=$P-s
DPID=""
cleanup() {
  set +e
  for ns in $A $B $S; do ip netns pids $ns 2>/dev/null | xargs -r kill 2>/dev/null; done
  [ -n "$DPID" ] && kill $DPID 2>/dev/null && wait $DPID 2>/dev/null
  for ns in $A $B $S; do ip netns del $ns 2>/dev/null; done
  rm -rf "$W"
}
trap cleanup EXIT

mkns() { ip netns add $A; ip netns add $B; for n in $A $B; do ip -n $n link set lo up; done; }
delns() { for ns in $A $B $S; do { ip netns pids $ns | xargs -r kill; ip netns del $ns; } 2>/dev/null || true; done; sleep 0.2; }

setup_bridge() {
  mkns; ip netns add $S
  ip -n $S link add br0 type bridge; ip -n $S link set br0 up
  for n in $A $B; do
    ip link add v$n type veth peer name eth0 netns $n
    ip link set v$n netns $S; ip -n $S link set v$n master br0 up; ip -n $n link set eth0 up
  done
  ip -n $A addr add 10.90.0.1/24 dev eth0; ip -n $B addr add 10.90.0.2/24 dev eth0
}
setup_tapyard() {
  mkns
  $TY --socket $SOCK daemon --state-dir $W/state ${TY_WORKERS:+--workers $TY_WORKERS} 2>$W/daemon.log & DPID=$!
  for _ in $(seq 100); do $TY --socket $SOCK network ls >/dev/null 2>&1 && break; sleep 0.05; done
  $TY --socket $SOCK network create bench --ipam none >/dev/null   # pure L2, like the bridge
  $TY --socket $SOCK connect bench $A --ip 10.90.0.1/24 >/dev/null
  $TY --socket $SOCK connect bench $B --ip 10.90.0.2/24 >/dev/null
}
setup_routed() {
  mkns
  $TY --socket $SOCK daemon --state-dir $W/state ${TY_WORKERS:+--workers $TY_WORKERS} 2>$W/daemon.log & DPID=$!
  for _ in $(seq 100); do $TY --socket $SOCK network create r1 --subnet 10.90.1.0/24 >/dev/null 2>&1 && break; sleep 0.05; done
  $TY --socket $SOCK network create r2 --subnet 10.90.2.0/24 >/dev/null
  $TY --socket $SOCK router create r >/dev/null
  $TY --socket $SOCK router attach r r1; $TY --socket $SOCK router attach r r2
  $TY --socket $SOCK connect r1 $A --ip 10.90.1.10 >/dev/null
  $TY --socket $SOCK connect r2 $B --ip 10.90.2.10 >/dev/null
}
teardown() { delns; if [ -n "$DPID" ]; then kill $DPID; wait $DPID 2>/dev/null || true; DPID=""; fi; }

median() { sort -g | awk '{a[NR]=$1} END{if(NR==0){print "nan"; exit} print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }

measure() { # target IP -> prints "tcp_gbps udp_kpps rtt_p50_us rtt_p99_us"
  local T=$1
  ip netns exec $B iperf3 -s -D -1 --logfile /dev/null >/dev/null 2>&1 || true
  ip netns exec $A ping -c 3 -W 1 $T >/dev/null
  local tcp=() udp=() p50=() p99=()
  for r in $(seq $RUNS); do
    ip netns exec $B iperf3 -s -1 -D >/dev/null 2>&1; sleep 0.3
    tcp+=($(ip netns exec $A iperf3 -c $T -t $DUR -J | jq '.end.sum_received.bits_per_second/1e9'))
    ip netns exec $B iperf3 -s -1 -D >/dev/null 2>&1; sleep 0.3
    udp+=($(ip netns exec $A iperf3 -c $T -u -l 18 -b 0 -t $DUR -J | jq '(.end.sum.packets - .end.sum.lost_packets)/.end.sum.seconds/1e3'))
    local rtts; rtts=$(ip netns exec $A ping -n -c $PINGS -i 0.01 $T | sed -n 's/.*time=\([0-9.]*\) ms/\1/p' | sort -g)
    p50+=($(echo "$rtts" | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]*1000}'))
    p99+=($(echo "$rtts" | awk '{a[NR]=$1} END{i=int(NR*0.99); if(i<1)i=1; print a[i]*1000}'))
  done
  echo "$(printf '%s\n' "${tcp[@]}" | median) $(printf '%s\n' "${udp[@]}" | median) $(printf '%s\n' "${p50[@]}" | median) $(printf '%s\n' "${p99[@]}" | median)"
}

echo "machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "runs: $RUNS x ${DUR}s iperf3, $PINGS pings; medians"
setup_bridge; read -r bt bu b50 b99 < <(measure 10.90.0.2); teardown
setup_tapyard; read -r tt tu t50 t99 < <(measure 10.90.0.2); teardown
setup_routed; read -r rt ru r50 r99 < <(measure 10.90.2.10); teardown
printf '%-10s %12s %14s %12s %12s\n' path "TCP Gbit/s" "UDP64 kpps rx" "RTT p50 us" "RTT p99 us"
printf '%-10s %12.2f %14.0f %12.0f %12.0f\n' bridge $bt $bu $b50 $b99
printf '%-10s %12.2f %14.0f %12.0f %12.0f\n' tapyard $tt $tu $t50 $t99
printf '%-10s %12.2f %14.0f %12.0f %12.0f\n' routed $rt $ru $r50 $r99
awk -v a=$tt -v b=$bt -v c=$tu -v d=$bu -v e=$t50 -v f=$b50 'BEGIN{printf "tapyard/bridge: TCP %.2fx, UDP64 %.2fx, RTT p50 %.2fx\n", a/b, c/d, e/f}'
awk -v a=$rt -v b=$tt -v c=$ru -v d=$tu 'BEGIN{printf "routed/switched (tapyard): TCP %.2fx, UDP64 %.2fx\n", a/b, c/d}'
