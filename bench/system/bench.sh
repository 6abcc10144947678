#!/usr/bin/env bash
# bench/system/bench.sh: the system benchmark behind `tapyard bench`.
#
# Two network namespaces A and B are joined by each data path in turn, and the
# same measurements run from A to B on every path, in one run, so that ratios
# between paths mean something on a noisy machine:
#
#   bridge          the Linux kernel bridge, A and B attached by veth pairs
#   vde             vde_switch with TAP ports (created in a namespace S, moved to A/B)
#   ovs             Open vSwitch, userspace (netdev) datapath, type=tap ports
#   ovs-tso         the same with other_config:userspace-tso-enable=true
#   tapyard         A and B on one tapyard network (pure L2, --ipam none)
#   tapyard-routed  A and B on two tapyard networks joined by a tapyard router
#   tapyard-busy    as tapyard, the daemon started with --poll busy
#
# Figures (medians of --runs runs each):
#   tcp1_gbps        iperf3 TCP, 1 stream                       Gbit/s received
#   tcp4_gbps        iperf3 TCP, 4 streams (-P 4)               Gbit/s received
#   udp64_kpps       iperf3 -u -l 18 -b 0 (60-byte frames, 64 with FCS): (packets - lost) / seconds
#   loss_pct         iperf3 -u -l 18 offered at the rate the bridge received in this run: % not received
#   ping_p50_us, ping_p99_us          ICMP echo every 2 ms (ping -i 0.002), RTT percentiles
#   pingpong_p50_us, pingpong_p99_us  64-byte UDP request/response back to back (sockperf
#                    ping-pong, or the python3 fallback pingpong.py), RTT percentiles
#   cpu_s_per_gb     CPU seconds (utime+stime from /proc/PID/stat) of the switch process(es)
#                    during the 1-stream TCP test, per gigabyte received; none for the bridge
#
# It prints a table (or, with --json, the JSON), and with --report DIR writes
# DIR/results.json, DIR/results.md, DIR/chart.png and DIR/logs/.
# Needs root (or uid 0 in a user namespace with a private /run/netns), iperf3,
# jq, ping; vde_switch, Open vSwitch, sockperf and gnuplot are optional: what is
# missing is reported as skipped, with how to install it.
# Everything it makes is named tyb<PID>... and removed on exit, Ctrl-C included.
#
# usage: bench.sh [--against bridge,vde,ovs|none] [--paths switched,routed,busy|none]
#                 [--duration S] [--runs N] [--tests tcp1,tcp4,udp,loss,ping,pingpong]
#                 [--pings N] [--ping-interval S] [--workers N] [--nice N]
#                 [--json] [--report DIR] [--keep]
# env: TAPYARD (the tapyard binary; default: tapyard on PATH), TAPYARD_SRC (a
#      source tree whose git revision goes into the report; optional),
#      TAPYARD_BENCH_PINGPONG=python3 (use the python3 ping-pong even if sockperf is installed)

# setup_* and on_exit are called indirectly (by name, by trap); the backquotes in
# messages are literal
# shellcheck disable=SC2317,SC2016
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
INSTALL_HINT='install with `scripts/setup.sh --bench`'

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf 'tapyard bench: %s\n' "$*" >&2; exit 1; }
usage_error() { printf 'tapyard bench: %s\n(see `tapyard bench --help`)\n' "$*" >&2; exit 2; }

# ------------------------------------------------------------------ arguments
AGAINST=bridge,vde,ovs
TY_PATHS=switched,routed,busy
DUR=5
RUNS=3
TESTS=tcp1,tcp4,udp,loss,ping,pingpong
PINGS=1000
PING_INTERVAL=0.002
WORKERS=""
NICE=""
JSON=0
REPORT=""
KEEP=0

check_list() { # flag value allowed... : every comma-separated item must be allowed
  local flag=$1 value=$2 item a ok
  shift 2
  [[ -n $value ]] || usage_error "$flag: empty list (allowed: $* none)"
  IFS=, read -r -a items <<< "$value"
  for item in "${items[@]}"; do
    ok=0
    for a in "$@" none; do [[ $item == "$a" ]] && ok=1; done
    ((ok)) || usage_error "$flag: '$item' is not one of: $* none"
  done
}
has() { [[ ,$1, == *,$2,* ]]; } # has LIST ITEM

while (($#)); do
  case $1 in
  --against | --paths | --duration | --runs | --tests | --pings | --ping-interval | --workers | --nice | --report)
    (($# >= 2)) || usage_error "$1 needs a value"
    case $1 in
    --against) AGAINST=$2 ;;
    --paths) TY_PATHS=$2 ;;
    --duration) DUR=$2 ;;
    --runs) RUNS=$2 ;;
    --tests) TESTS=$2 ;;
    --pings) PINGS=$2 ;;
    --ping-interval) PING_INTERVAL=$2 ;;
    --workers) WORKERS=$2 ;;
    --nice) NICE=$2 ;;
    --report) REPORT=$2 ;;
    esac
    shift 2
    ;;
  --against=* | --paths=* | --duration=* | --runs=* | --tests=* | --pings=* | --ping-interval=* | --workers=* | --nice=* | --report=*)
    set -- "${1%%=*}" "${1#*=}" "${@:2}"
    ;;
  --json) JSON=1; shift ;;
  --keep) KEEP=1; shift ;;
  -h | --help) sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) usage_error "unknown argument '$1'" ;;
  esac
done
check_list --against "$AGAINST" bridge vde ovs
check_list --paths "$TY_PATHS" switched routed busy
check_list --tests "$TESTS" tcp1 tcp4 udp loss ping pingpong
in_range() { [[ $1 =~ ^-?[0-9]+$ ]] && (($1 >= $2 && $1 <= $3)); } # value min max
in_range "$DUR" 1 3600 || usage_error "--duration: whole seconds from 1 to 3600, not '$DUR'"
in_range "$RUNS" 1 100 || usage_error "--runs: 1 to 100, not '$RUNS'"
in_range "$PINGS" 1 1000000 || usage_error "--pings: 1 to 1000000, not '$PINGS'"
if ! [[ $PING_INTERVAL =~ ^[0-9]*\.?[0-9]+$ ]] || ! awk -v i="$PING_INTERVAL" 'BEGIN{exit !(i >= 0.002 && i <= 10)}'; then
  usage_error "--ping-interval: seconds from 0.002 to 10, not '$PING_INTERVAL'"
fi
PING_INTERVAL=$(awk -v i="$PING_INTERVAL" 'BEGIN{printf "%g", i}')
[[ -z $WORKERS ]] || in_range "$WORKERS" 1 1024 || usage_error "--workers: 1 to 1024, not '$WORKERS'"
[[ -z $NICE ]] || in_range "$NICE" -20 19 || usage_error "--nice: -20 to 19, not '$NICE'"

# ------------------------------------------------------------------ environment
[[ $(id -u) == 0 ]] || die "needs root: it creates network namespaces, veth pairs, TAPs and bridges \
(or run it as uid 0 of a user namespace: unshare --user --map-root-user --net --mount, with a tmpfs on /run and /run/netns)"
missing=()
for t in ip iperf3 jq ping awk ss timeout; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
((${#missing[@]} == 0)) || die "missing tools: ${missing[*]}; $INSTALL_HINT (Debian: iproute2 iperf3 jq iputils-ping coreutils)"
TAPYARD=${TAPYARD:-$(command -v tapyard || true)}
NEED_TY=0
[[ $TY_PATHS == none ]] || NEED_TY=1
if ((NEED_TY)); then
  [[ -n $TAPYARD && -x $TAPYARD ]] || die "no tapyard binary: set TAPYARD=/path/to/tapyard (tapyard bench does) or put tapyard on PATH"
fi

CLK_TCK=$(getconf CLK_TCK)
ID=$$
P=tyb$ID                      # every name this run makes starts with this
NS_A=${P}a NS_B=${P}b NS_S=${P}s
W=$(mktemp -d "${TMPDIR:-/tmp}/tapyard-bench.$ID.XXXXXX")
LOGS=$W/logs
RUN=$W/run                    # per-path scratch (sockets, databases, pid files); emptied between paths
PIDS=$W/pids                  # "pid starttime" of every process this run started
mkdir -p "$LOGS" "$RUN"
: > "$PIDS"
: > "$W/paths.tsv"            # path status reason setup
: > "$W/runs.tsv"             # path key run value
: > "$W/notes.tsv"            # path note
IPERF_PORT=5201
PP_PORT=11111
CUR=""                        # the client process being waited for

NICE_CMD=()
[[ -z $NICE ]] || NICE_CMD=(nice -n $((NICE - $(nice))))

# ------------------------------------------------------------------ processes
starttime() { # field 22 of /proc/PID/stat
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }
  # shellcheck disable=SC2086
  set -- $s
  echo "${20}"
}
alive() { # running and not a zombie
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }
  [[ ${s:0:1} != Z ]]
}
track() { # remember a pid we started, with its start time (so a recycled pid is never hit)
  local st
  st=$(starttime "$1") || return 0
  echo "$1 $st" >> "$PIDS"
}
stop_pid() { # pid starttime: TERM, up to 10 s, then KILL
  local pid=$1 want=$2 i
  [[ $(starttime "$pid" 2>/dev/null) == "$want" ]] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do alive "$pid" || return 0; sleep 0.1; done
  log "pid $pid ignored SIGTERM for 10 s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}
stop_all() { # every tracked pid, the last started first
  local pid st
  if [[ -n $CUR ]]; then kill -TERM "$CUR" 2>/dev/null || true; CUR=""; fi
  while read -r pid st; do stop_pid "$pid" "$st"; done < <(tac "$PIDS")
  : > "$PIDS"
}
# Runs a command in namespace $1, output to file $2, in the background and waits
# for it, so that a signal to this script is handled at once (bash runs traps
# during `wait`). The output is redirected here, not around the call: a trap
# that runs meanwhile still logs to this script's stderr.
fgwait_ns() {
  local ns=$1 out=$2 rc=0
  shift 2
  ip netns exec "$ns" "${NICE_CMD[@]}" "$@" > "$out" 2>&1 < /dev/null &
  CUR=$!
  wait "$CUR" || rc=$?
  CUR=""
  return "$rc"
}
bg_ns() { # start a server in namespace $1; stdout/stderr to $2
  local ns=$1 out=$2
  shift 2
  ip netns exec "$ns" "${NICE_CMD[@]}" "$@" > "$out" 2>&1 < /dev/null &
  track $!
}

# ------------------------------------------------------------------ namespaces and links
ns_add() {
  ip netns add "$1"
  ip -n "$1" link set lo up
  # no IPv6 chatter (DAD, router and multicast listener messages) in the measurements
  ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 \
    > /dev/null 2>&1 || true
}
ns_exists() { [[ -e /run/netns/$1 ]]; }
# Removes every namespace and link of this run; idempotent.
remove_net() {
  local ns l
  for ns in "$NS_A" "$NS_B" "$NS_S"; do
    ns_exists "$ns" || continue
    # our namespaces: every link in them is ours (persistent TAPs included)
    for l in $(ip -n "$ns" -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
      [[ $l == lo ]] || ip -n "$ns" link del "$l" 2>/dev/null || true
    done
    ip netns del "$ns" 2>/dev/null || true
  done
  # anything of ours left in the current namespace
  for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep "^$P" || true); do
    ip link del "$l" 2>/dev/null || true
  done
}
teardown() {
  stop_all
  remove_net
  local f
  for f in "$RUN"/*.log; do # the peers' own logs (Open vSwitch), for the report
    [[ -e $f ]] && cp "$f" "$LOGS/${PATH_NAME:-none}.${f##*/}"
  done
  rm -rf "$RUN"
  mkdir -p "$RUN"
}
on_exit() {
  local rc=$?
  set +e
  trap - EXIT
  trap '' INT TERM # a second Ctrl-C must not cut the cleanup short
  teardown
  if ((KEEP)); then log "work directory kept: $W"; else rm -rf "$W"; fi
  exit "$rc"
}
trap on_exit EXIT
trap 'log "interrupted: cleaning up"; exit 130' INT
trap 'log "terminated: cleaning up"; exit 143' TERM

# ------------------------------------------------------------------ data paths
# Each setup_* runs in a subshell with `set -e`: it leaves A and B with eth0 (or
# a TAP) up and addressed, writes the switch pids to $RUN/swpids and a one-line
# description to $RUN/desc; `skip REASON` / `fail REASON` end it with a reason.
IP_A=198.18.0.1 IP_B=198.18.0.2   # RFC 2544 benchmarking range; no default route: nothing leaves A and B
skip() { echo "SKIP $*" > "$RUN/why"; exit 1; }
fail() { echo "FAIL $*" > "$RUN/why"; exit 1; }
addr_up() { # ns ifname cidr
  ip -n "$1" addr add "$3" dev "$2"
  ip -n "$1" link set "$2" up
}

setup_bridge() {
  ns_add "$NS_A"; ns_add "$NS_B"; ns_add "$NS_S"
  ip -n "$NS_S" link add br0 type bridge
  ip -n "$NS_S" link set br0 up
  # bridged frames skip iptables, as they do through the userspace switches
  ip netns exec "$NS_S" sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0 \
    net.bridge.bridge-nf-call-arptables=0 > /dev/null 2>&1 || true
  local x ns
  for x in a b; do
    ns=${P}$x
    ip -n "$ns" link add eth0 type veth peer name "${P}p$x" netns "$NS_S"
    ip -n "$NS_S" link set "${P}p$x" master br0 up
  done
  addr_up "$NS_A" eth0 "$IP_A/24"
  addr_up "$NS_B" eth0 "$IP_B/24"
  : > "$RUN/swpids"
  echo "Linux bridge in namespace S, A and B attached by veth pairs (bridge-nf-call-* off)" > "$RUN/desc"
}

wait_carrier() { # ns tap...: a process attached a queue to each TAP
  local ns=$1 i t ok
  shift
  for ((i = 0; i < 100; i++)); do
    ok=1
    for t in "$@"; do
      [[ $(ip netns exec "$ns" cat "/sys/class/net/$t/carrier" 2>/dev/null) == 1 ]] || ok=0
    done
    ((ok)) && return 0
    sleep 0.1
  done
  return 1
}
move_taps() { # the two TAPs from S into A and B, addressed
  ip -n "$NS_S" link set "${P}ta" netns "$NS_A"
  ip -n "$NS_S" link set "${P}tb" netns "$NS_B"
  addr_up "$NS_A" "${P}ta" "$IP_A/24"
  addr_up "$NS_B" "${P}tb" "$IP_B/24"
}

setup_vde() {
  command -v vde_switch > /dev/null || skip "vde_switch not found (Debian package vde2), $INSTALL_HINT"
  ns_add "$NS_A"; ns_add "$NS_B"; ns_add "$NS_S"
  local t i
  for t in "${P}ta" "${P}tb"; do
    ip -n "$NS_S" tuntap add dev "$t" mode tap
    ip -n "$NS_S" link set "$t" up
  done
  ip netns exec "$NS_S" "${NICE_CMD[@]}" vde_switch -t "${P}ta" -t "${P}tb" -d -p "$RUN/vde.pid" \
    -s "$RUN/vde.sock" -M "$RUN/vde.mgmt" -f /dev/null || fail "vde_switch did not start"
  for ((i = 0; i < 50; i++)); do [[ -s $RUN/vde.pid ]] && break; sleep 0.1; done
  [[ -s $RUN/vde.pid ]] || fail "vde_switch wrote no pid file"
  track "$(cat "$RUN/vde.pid")"
  cat "$RUN/vde.pid" > "$RUN/swpids"
  wait_carrier "$NS_S" "${P}ta" "${P}tb" || fail "vde_switch did not attach the TAPs"
  move_taps
  echo "vde_switch -t TAP -t TAP, TAPs created and attached in namespace S, then moved to A and B" > "$RUN/desc"
}

ovs_setup() { # other_config assignment or ""
  local t
  for t in ovsdb-tool ovsdb-server ovs-vswitchd ovs-vsctl; do
    command -v "$t" > /dev/null || skip "$t not found (Debian package openvswitch-switch), $INSTALL_HINT"
  done
  local schema=/usr/share/openvswitch/vswitch.ovsschema
  [[ -r $schema ]] || skip "$schema not found (Debian package openvswitch-common), $INSTALL_HINT"
  ns_add "$NS_A"; ns_add "$NS_B"; ns_add "$NS_S"
  # a private instance: its own database, sockets, logs and pid files under $RUN;
  # a system Open vSwitch, if any, is never touched
  export OVS_RUNDIR=$RUN OVS_LOGDIR=$RUN OVS_DBDIR=$RUN OVS_SYSCONFDIR=$RUN
  local vsctl=(ovs-vsctl "--db=unix:$RUN/db.sock" --timeout=15)
  ovsdb-tool create "$RUN/conf.db" "$schema" || fail "ovsdb-tool create failed"
  ip netns exec "$NS_S" ovsdb-server "$RUN/conf.db" --remote="punix:$RUN/db.sock" --pidfile="$RUN/ovsdb-server.pid" \
    --detach --no-chdir --log-file="$RUN/ovsdb-server.log" --unixctl="$RUN/ovsdb-server.ctl" ||
    fail "ovsdb-server did not start: $(tail -n 1 "$RUN/ovsdb-server.log" 2>/dev/null)"
  track "$(cat "$RUN/ovsdb-server.pid")"
  "${vsctl[@]}" --no-wait init
  [[ -z $1 ]] || "${vsctl[@]}" --no-wait set Open_vSwitch . "$1"
  ip netns exec "$NS_S" "${NICE_CMD[@]}" ovs-vswitchd "unix:$RUN/db.sock" --pidfile="$RUN/ovs-vswitchd.pid" \
    --detach --no-chdir --log-file="$RUN/ovs-vswitchd.log" --unixctl="$RUN/ovs-vswitchd.ctl" ||
    fail "ovs-vswitchd did not start: $(grep -m1 -E 'ERR|EMER' "$RUN/ovs-vswitchd.log" 2>/dev/null)"
  track "$(cat "$RUN/ovs-vswitchd.pid")"
  cat "$RUN/ovs-vswitchd.pid" > "$RUN/swpids"
  "${vsctl[@]}" add-br br0 -- set bridge br0 datapath_type=netdev || fail "ovs-vsctl add-br (netdev datapath) failed"
  for t in "${P}ta" "${P}tb"; do
    "${vsctl[@]}" add-port br0 "$t" -- set interface "$t" type=tap || fail "ovs-vsctl add-port $t type=tap failed"
  done
  local i
  for ((i = 0; i < 100; i++)); do
    ip -n "$NS_S" link show "${P}ta" > /dev/null 2>&1 && ip -n "$NS_S" link show "${P}tb" > /dev/null 2>&1 && break
    sleep 0.1
  done
  move_taps
}
setup_ovs() {
  ovs_setup ""
  echo "ovs-vswitchd, userspace (netdev) datapath, type=tap ports created in namespace S and moved to A and B, NORMAL action" > "$RUN/desc"
}
setup_ovs-tso() {
  ovs_setup "other_config:userspace-tso-enable=true"
  echo "as ovs, with other_config:userspace-tso-enable=true (vnet_hdr and TSO on the TAPs)" > "$RUN/desc"
}

ty() { "$TAPYARD" --socket "$RUN/ty.sock" "$@"; }
ty_daemon() { # extra daemon flags...
  local args=(daemon --uplink none --state-dir "$RUN/state")
  [[ -z $WORKERS ]] || args+=(--workers "$WORKERS")
  "${NICE_CMD[@]}" "$TAPYARD" --socket "$RUN/ty.sock" "${args[@]}" "$@" \
    > /dev/null 2>> "$LOGS/$PATH_NAME.daemon.log" < /dev/null &
  local pid=$! i
  track "$pid"
  echo "$pid" > "$RUN/swpids"
  for ((i = 0; i < 200; i++)); do
    ty network ls > /dev/null 2>&1 && return 0
    if ! alive "$pid"; then
      local why
      why=$(grep -m1 -iE 'error|unexpected|invalid' "$LOGS/$PATH_NAME.daemon.log" || tail -n 1 "$LOGS/$PATH_NAME.daemon.log")
      if (($#)) && grep -q -- "$1" <<< "$why"; then
        skip "this tapyard does not take \`daemon $*\` (the daemon refused it: ${why})"
      fi
      fail "the tapyard daemon exited: $why"
    fi
    sleep 0.05
  done
  fail "the tapyard daemon did not answer on its socket within 10 s"
}
ty_switched() { # extra daemon flags...
  ns_add "$NS_A"; ns_add "$NS_B"
  ty_daemon "$@"
  ty network create bench --ipam none > /dev/null # pure L2, like the bridge
  ty connect bench "$NS_A" --ip "$IP_A/24" > /dev/null
  ty connect bench "$NS_B" --ip "$IP_B/24" > /dev/null
}
setup_tapyard() {
  ty_switched
  echo "tapyard daemon, A and B on one network (--ipam none: pure L2)${WORKERS:+, --workers $WORKERS}" > "$RUN/desc"
}
setup_tapyard-busy() {
  ty_switched --poll busy
  echo "as tapyard, the daemon started with --poll busy${WORKERS:+, --workers $WORKERS}" > "$RUN/desc"
}
setup_tapyard-routed() {
  ns_add "$NS_A"; ns_add "$NS_B"
  ty_daemon
  ty network create r1 --subnet 198.18.1.0/24 > /dev/null
  ty network create r2 --subnet 198.18.2.0/24 > /dev/null
  ty router create r > /dev/null
  ty router attach r r1
  ty router attach r r2
  ty connect r1 "$NS_A" --ip 198.18.1.10/24 > /dev/null
  ty connect r2 "$NS_B" --ip 198.18.2.10/24 > /dev/null
  echo "tapyard daemon, A and B on two networks (198.18.1.0/24, 198.18.2.0/24) joined by a tapyard router${WORKERS:+, --workers $WORKERS}" > "$RUN/desc"
}

path_title() {
  case $1 in
  bridge) echo "Linux bridge (veth)" ;;
  vde) echo "vde_switch (TAP)" ;;
  ovs) echo "Open vSwitch netdev (TAP)" ;;
  ovs-tso) echo "Open vSwitch netdev (TAP) + userspace TSO" ;;
  tapyard) echo "tapyard, switched" ;;
  tapyard-routed) echo "tapyard, routed" ;;
  tapyard-busy) echo "tapyard, switched, --poll busy" ;;
  esac
}
target_ip() { [[ $1 == tapyard-routed ]] && echo 198.18.2.10 || echo $IP_B; }

# ------------------------------------------------------------------ measurements
rec() { printf '%s\t%s\t%s\t%s\n' "$PATH_NAME" "$1" "$2" "$3" >> "$W/runs.tsv"; } # key run value
note() { printf '%s\t%s\n' "$PATH_NAME" "$*" >> "$W/notes.tsv"; log "  note: $*"; }
ERRORS=0
err() { ERRORS=$((ERRORS + 1)); note "error: $*"; }
median() { sort -g | awk '{v[NR]=$1} END{ if (!NR) exit; print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2 }'; }
pct() { # p: nearest-rank percentile of sorted numbers on stdin
  awk -v p="$1" '{v[NR]=$1} END{ if (!NR) exit; i=int(p*NR); if (i < p*NR) i++; if (i < 1) i=1; print v[i] }'
}
sw_ticks() { # utime+stime of the switch processes, in clock ticks
  local p t=0 s f
  for p in $SW_PIDS; do
    s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    s=${s##*) }
    read -r -a f <<< "$s"
    t=$((t + f[11] + f[12]))
  done
  echo "$t"
}

iperf_client() { # out.json iperf3-args...: 0 when iperf3 produced a result
  local out=$1
  shift
  fgwait_ns "$NS_A" "$out" timeout $((DUR + 30)) iperf3 -c "$TARGET" -p $IPERF_PORT -t "$DUR" -J "$@" || true
  jq -e '.end.sum_received.bytes > 0' "$out" > /dev/null 2>&1
}
iperf_error() { jq -r '.error // empty' "$1" 2>/dev/null | head -n 1 || true; }

test_tcp() { # streams key
  local n=$1 key=$2 i js t0 t1 v
  for ((i = 1; i <= RUNS; i++)); do
    js=$LOGS/$PATH_NAME.$key.$i.json
    t0=$(sw_ticks)
    if ! iperf_client "$js" -P "$n"; then
      err "$key run $i: iperf3 failed: $(iperf_error "$js")"
      continue
    fi
    t1=$(sw_ticks)
    v=$(jq '.end.sum_received.bits_per_second / 1e9' "$js")
    rec "$key" "$i" "$v"
    rec "${key%_gbps}_retransmits" "$i" "$(jq '.end.sum_sent.retransmits // 0' "$js")"
    local cpu="-"
    if [[ $key == tcp1_gbps && -n $SW_PIDS ]]; then
      cpu=$(jq --argjson d $((t1 - t0)) --argjson hz "$CLK_TCK" \
        '($d / $hz) / (.end.sum_received.bytes / 1e9)' "$js")
      rec cpu_s_per_gb "$i" "$cpu"
    fi
    [[ $cpu == - ]] || cpu=" switch CPU $(printf '%.3f' "$cpu") s/GB"
    log "  $key run $i: $(printf '%.2f' "$v") Gbit/s${cpu#-}"
  done
}

test_udp() {
  local i js v
  for ((i = 1; i <= RUNS; i++)); do
    js=$LOGS/$PATH_NAME.udp.$i.json
    if ! iperf_client "$js" -u -l 18 -b 0; then
      err "udp run $i: iperf3 failed: $(iperf_error "$js")"
      continue
    fi
    v=$(jq '.end.sum_received | (.packets - .lost_packets) / .seconds / 1e3' "$js")
    rec udp64_kpps "$i" "$v"
    rec udp64_offered_kpps "$i" "$(jq '.end.sum_sent.packets / .end.sum_sent.seconds / 1e3' "$js")"
    log "  udp64 run $i: $(printf '%.1f' "$v") kpps received"
  done
}

BRIDGE_KPPS=""
test_loss() {
  if [[ -z $BRIDGE_KPPS ]]; then
    note "loss: skipped, the Linux bridge's 64-byte UDP rate was not measured in this run (it needs bridge in --against)"
    return 0
  fi
  local bits i js v
  bits=$(awk -v k="$BRIDGE_KPPS" 'BEGIN{printf "%.0f", k * 1000 * 18 * 8}')
  for ((i = 1; i <= RUNS; i++)); do
    js=$LOGS/$PATH_NAME.loss.$i.json
    if ! iperf_client "$js" -u -l 18 -b "$bits"; then
      err "loss run $i: iperf3 failed: $(iperf_error "$js")"
      continue
    fi
    # received = packets - lost (by sequence gaps); anything sent and never seen is lost too
    v=$(jq '(.end.sum_sent.packets) as $s | (.end.sum_received | .packets - .lost_packets) as $r
            | if $s > 0 then ([0, 100 * ($s - $r) / $s] | max) else null end' "$js")
    rec loss_pct "$i" "$v"
    rec loss_offered_kpps "$i" "$(jq '.end.sum_sent.packets / .end.sum_sent.seconds / 1e3' "$js")"
    log "  loss run $i: $(printf '%.3f' "$v") % of 60-byte frames offered at $BRIDGE_KPPS kpps"
  done
}

test_ping() {
  local i f n rtts limit
  limit=$(awk -v n="$PINGS" -v i="$PING_INTERVAL" 'BEGIN{printf "%d", n * i + 30}')
  for ((i = 1; i <= RUNS; i++)); do
    f=$LOGS/$PATH_NAME.ping.$i.txt
    fgwait_ns "$NS_A" "$f" timeout "$limit" ping -n -c "$PINGS" -i "$PING_INTERVAL" -W 1 "$TARGET" || true
    rtts=$(grep -o 'time=[0-9.]*' "$f" | cut -d= -f2 | awk '{printf "%.1f\n", $1 * 1000}' | sort -g || true)
    n=$(grep -c . <<< "$rtts" || true)
    if ((n == 0)); then
      err "ping run $i: no replies ($(tail -n 1 "$f"))"
      continue
    fi
    rec ping_p50_us "$i" "$(pct 0.50 <<< "$rtts")"
    rec ping_p99_us "$i" "$(pct 0.99 <<< "$rtts")"
    rec ping_lost "$i" $((PINGS - n))
    log "  ping run $i: RTT p50 $(pct 0.50 <<< "$rtts") us, p99 $(pct 0.99 <<< "$rtts") us, lost $((PINGS - n))"
  done
}

PP_TOOL=""
pingpong_server() {
  case $PP_TOOL in
  sockperf) bg_ns "$NS_B" "$LOGS/$PATH_NAME.sockperf-server.log" sockperf sr -i "$TARGET" -p $PP_PORT ;;
  python3) bg_ns "$NS_B" "$LOGS/$PATH_NAME.pingpong-server.log" python3 "$HERE/pingpong.py" server "$TARGET" $PP_PORT ;;
  esac
  local i
  for ((i = 0; i < 50; i++)); do
    ip netns exec "$NS_B" ss -lun 2>/dev/null | grep -q ":$PP_PORT " && return 0
    sleep 0.1
  done
  err "the ping-pong server ($PP_TOOL) did not start"
}
test_pingpong() {
  local i f p50 p99 n
  for ((i = 1; i <= RUNS; i++)); do
    f=$LOGS/$PATH_NAME.pingpong.$i.txt
    p50="" p99="" n=""
    if [[ $PP_TOOL == sockperf ]]; then
      fgwait_ns "$NS_A" "$f" timeout $((DUR + 30)) sockperf pp -i "$TARGET" -p $PP_PORT -t "$DUR" -m 64 || true
      sed -i 's/\x1b\[[0-9;]*m//g' "$f"
      # sockperf reports one-way latency, RTT / 2: twice that is the RTT
      p50=$(awk '/percentile 50.000 =/{printf "%.1f", 2 * $NF}' "$f")
      p99=$(awk '/percentile 99.000 =/{printf "%.1f", 2 * $NF}' "$f")
      n=$(grep -o 'Valid Duration.*ReceivedMessages=[0-9]*' "$f" | grep -o '[0-9]*$' || true)
    else
      fgwait_ns "$NS_A" "$f" timeout $((DUR + 30)) python3 "$HERE/pingpong.py" client "$TARGET" $PP_PORT "$DUR" 64 || true
      read -r n p50 p99 _ < "$f" || true
      [[ $n =~ ^[0-9]+$ && $n -gt 0 ]] || p50=""
    fi
    if [[ -z $p50 || -z $p99 ]]; then
      err "pingpong run $i: $PP_TOOL gave no result ($(tail -n 1 "$f"))"
      continue
    fi
    rec pingpong_p50_us "$i" "$p50"
    rec pingpong_p99_us "$i" "$p99"
    rec pingpong_messages "$i" "${n:-0}"
    log "  pingpong ($PP_TOOL) run $i: RTT p50 $p50 us, p99 $p99 us, $n messages"
  done
}

wait_reach() {
  local i
  for ((i = 0; i < 50; i++)); do
    ip netns exec "$NS_A" ping -n -c 1 -W 1 -q "$TARGET" > /dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}

# ------------------------------------------------------------------ one path
run_path() {
  PATH_NAME=$1
  TARGET=$(target_ip "$1")
  SW_PIDS=""
  local status=ok reason="" desc="" rc=0 kind
  log "=== $PATH_NAME: $(path_title "$PATH_NAME")"
  rm -f "$RUN/why" "$RUN/desc" "$RUN/swpids"
  set +e
  (set -e; "setup_$PATH_NAME") >> "$LOGS/$PATH_NAME.setup.log" 2>&1
  rc=$?
  set -e
  desc=$(cat "$RUN/desc" 2>/dev/null || true)
  if ((rc != 0)); then
    if [[ -s $RUN/why ]]; then
      read -r kind reason < "$RUN/why"
    else
      kind=FAIL
      reason="setup failed: $(grep -v '^$' "$LOGS/$PATH_NAME.setup.log" | tail -n 1)"
    fi
    # the peers are measured when they can start; tapyard and the bridge must work
    if [[ $kind == SKIP ]]; then
      status=skipped
    elif [[ $PATH_NAME == vde || $PATH_NAME == ovs* ]]; then
      status=skipped reason="could not start: $reason"
    else
      status=failed
    fi
  else
    SW_PIDS=$(cat "$RUN/swpids" 2>/dev/null || true)
    if ! wait_reach; then
      status=failed reason="A cannot ping B ($TARGET) after setup"
    fi
  fi
  if [[ $status != ok ]]; then
    log "  $status: $reason"
    [[ $status == failed ]] && ERRORS=$((ERRORS + 1))
    printf '%s\t%s\t%s\t%s\n' "$PATH_NAME" "$status" "$reason" "$desc" >> "$W/paths.tsv"
    teardown
    return 0
  fi
  printf '%s\t%s\t%s\t%s\n' "$PATH_NAME" ok "" "$desc" >> "$W/paths.tsv"
  {
    echo "# $desc"
    echo "switch pids: ${SW_PIDS:-none (kernel)}"
    ip -n "$NS_A" -d link show
    ip -n "$NS_A" addr show
    ip -n "$NS_A" route show
    ip -n "$NS_B" -d link show
    if command -v ethtool > /dev/null; then
      local ns ifn
      for ns in "$NS_A" "$NS_B"; do
        ifn=$(ip -n "$ns" -o link show | awk -F': ' '$2 != "lo" {print $2; exit}' | cut -d@ -f1)
        echo "offloads of $ifn in $ns:"
        ip netns exec "$ns" ethtool -k "$ifn" | grep -E '^(tx-checksumming|tcp-segmentation-offload|generic-segmentation-offload|generic-receive-offload):'
      done
    fi
  } >> "$LOGS/$PATH_NAME.setup.log" 2>&1 || true

  bg_ns "$NS_B" "$LOGS/$PATH_NAME.iperf3-server.log" iperf3 -s -p $IPERF_PORT
  local i
  for ((i = 0; i < 50; i++)); do
    ip netns exec "$NS_B" ss -ltn 2>/dev/null | grep -q ":$IPERF_PORT " && break
    sleep 0.1
  done
  if has "$TESTS" pingpong && [[ -n $PP_TOOL ]]; then pingpong_server; fi
  ip netns exec "$NS_A" ping -n -c 3 -i 0.2 -W 1 -q "$TARGET" > /dev/null 2>&1 || true # ARP, MAC learning

  if has "$TESTS" tcp1; then test_tcp 1 tcp1_gbps; fi
  if has "$TESTS" tcp4; then test_tcp 4 tcp4_gbps; fi
  # the bridge's UDP rate is the offered rate of every path's loss test
  if has "$TESTS" udp || { [[ $PATH_NAME == bridge ]] && has "$TESTS" loss; }; then test_udp; fi
  if [[ $PATH_NAME == bridge ]]; then
    BRIDGE_KPPS=$(awk -F'\t' '$1=="bridge" && $2=="udp64_kpps" {print $4}' "$W/runs.tsv" | median)
    BRIDGE_KPPS=${BRIDGE_KPPS:+$(printf '%.1f' "$BRIDGE_KPPS")}
  fi
  if has "$TESTS" loss; then test_loss; fi
  if has "$TESTS" ping; then test_ping; fi
  if has "$TESTS" pingpong; then
    if [[ -n $PP_TOOL ]]; then test_pingpong; else note "pingpong: skipped, neither sockperf nor python3 found, $INSTALL_HINT"; fi
  fi
  [[ -n $SW_PIDS ]] || note "cpu: the bridge forwards in kernel softirq context, no switch process to account"
  teardown
  log "=== $PATH_NAME done"
}

# ------------------------------------------------------------------ run
ALL_PATHS=()
if [[ $AGAINST != none ]]; then
  has "$AGAINST" bridge && ALL_PATHS+=(bridge)
  has "$AGAINST" vde && ALL_PATHS+=(vde)
  has "$AGAINST" ovs && ALL_PATHS+=(ovs ovs-tso)
fi
if [[ $TY_PATHS != none ]]; then
  has "$TY_PATHS" switched && ALL_PATHS+=(tapyard)
  has "$TY_PATHS" routed && ALL_PATHS+=(tapyard-routed)
  has "$TY_PATHS" busy && ALL_PATHS+=(tapyard-busy)
fi
((${#ALL_PATHS[@]})) || usage_error "nothing to measure: --against none and --paths none"

if has "$TESTS" pingpong; then
  if [[ ${TAPYARD_BENCH_PINGPONG:-} == python3 ]]; then
    PP_TOOL=python3
  elif command -v sockperf > /dev/null; then
    PP_TOOL=sockperf
  elif command -v python3 > /dev/null; then
    PP_TOOL=python3
    log "sockperf not found: 64-byte ping-pong by the python3 fallback (bench/system/pingpong.py); $INSTALL_HINT"
  fi
fi
pp_label() {
  case $PP_TOOL in
  sockperf) echo "sockperf $(sockperf --version 2>&1 | sed -n 's/.*version \([^ ,]*\).*/\1/p' | head -n 1) ping-pong, 64-byte messages" ;;
  python3)
    if [[ ${TAPYARD_BENCH_PINGPONG:-} == python3 ]]; then
      echo "python3 (pingpong.py, chosen by TAPYARD_BENCH_PINGPONG), 64-byte messages"
    else
      echo "python3 fallback (pingpong.py; sockperf not installed, $INSTALL_HINT), 64-byte messages"
    fi
    ;;
  *) echo "none: neither sockperf nor python3 found, $INSTALL_HINT" ;;
  esac
}

git_rev() {
  local src=${TAPYARD_SRC:-} rev
  if [[ -z $src ]] || ! rev=$(git -C "$src" rev-parse --short=12 HEAD 2>/dev/null); then
    echo unknown
    return
  fi
  [[ -z $(git -C "$src" status --porcelain --untracked-files=no 2>/dev/null) ]] || rev+="+uncommitted"
  echo "$rev"
}
MACHINE=$(jq -n --arg nproc "$(nproc)" --arg kernel "$(uname -r)" \
  --arg cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" \
  --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg rev "$(if ((NEED_TY)); then git_rev; else echo unknown; fi)" \
  --arg ver "$(if ((NEED_TY)); then "$TAPYARD" --version 2>/dev/null || true; fi)" --arg bin "${TAPYARD:-}" \
  '{nproc: ($nproc | tonumber), kernel: $kernel, cpu: $cpu, date: $date,
    tapyard_rev: $rev, tapyard_version: $ver, tapyard_binary: $bin}')
log "machine: $(nproc) CPUs, kernel $(uname -r); paths: ${ALL_PATHS[*]}; tests: $TESTS; ${RUNS} x ${DUR} s; $PINGS pings"

for p in "${ALL_PATHS[@]}"; do run_path "$p"; done

# ------------------------------------------------------------------ results
FIGS='[
 {"key":"tcp1_gbps","head":"TCP1 Gbit/s","label":"TCP, 1 stream","unit":"Gbit/s","better":"higher","fmt":2,"test":"tcp1"},
 {"key":"tcp4_gbps","head":"TCP4 Gbit/s","label":"TCP, 4 streams","unit":"Gbit/s","better":"higher","fmt":2,"test":"tcp4"},
 {"key":"udp64_kpps","head":"UDP64 kpps","label":"64-byte UDP frames received (iperf3 -u -l 18 -b 0)","unit":"kpps","better":"higher","fmt":1,"test":"udp"},
 {"key":"loss_pct","head":"loss@br %","label":"loss of 60-byte frames offered at the rate the Linux bridge received","unit":"%","better":"lower","fmt":3,"test":"loss"},
 {"key":"ping_p50_us","head":"ping p50 us","label":"ICMP ping RTT, median","unit":"us","better":"lower","fmt":0,"test":"ping"},
 {"key":"ping_p99_us","head":"ping p99 us","label":"ICMP ping RTT, 99th percentile","unit":"us","better":"lower","fmt":0,"test":"ping"},
 {"key":"pingpong_p50_us","head":"pp p50 us","label":"64-byte UDP ping-pong RTT, median","unit":"us","better":"lower","fmt":0,"test":"pingpong"},
 {"key":"pingpong_p99_us","head":"pp p99 us","label":"64-byte UDP ping-pong RTT, 99th percentile","unit":"us","better":"lower","fmt":0,"test":"pingpong"},
 {"key":"cpu_s_per_gb","head":"CPU s/GB","label":"switch CPU seconds per GB received, TCP 1 stream","unit":"s/GB","better":"lower","fmt":3,"test":"tcp1"}
]'
CONFIG=$(jq -n --arg against "$AGAINST" --arg paths "$TY_PATHS" --arg tests "$TESTS" --argjson dur "$DUR" \
  --argjson runs "$RUNS" --argjson pings "$PINGS" --argjson pi "$PING_INTERVAL" --arg workers "$WORKERS" \
  --arg nice "$NICE" --arg pp "$(pp_label)" --arg iperf "$(iperf3 --version 2>/dev/null | head -n 1)" \
  '{against: ($against | split(",")), paths: ($paths | split(",")), tests: ($tests | split(",")),
    duration_s: $dur, runs: $runs, pings: $pings, ping_interval_s: $pi,
    workers: (if $workers == "" then null else ($workers | tonumber) end),
    nice: (if $nice == "" then null else ($nice | tonumber) end),
    iperf3: $iperf, pingpong_tool: $pp}')
# shellcheck disable=SC2016
RESULTS=$(jq -n --rawfile paths "$W/paths.tsv" --rawfile runs "$W/runs.tsv" --rawfile notes "$W/notes.tsv" \
  --argjson figs "$FIGS" --argjson machine "$MACHINE" --argjson config "$CONFIG" \
  --arg bridge_kpps "$BRIDGE_KPPS" --arg errors "$ERRORS" '
  def tsv: split("\n") | map(select(length > 0) | split("\t"));
  def median: sort | if length == 0 then null elif length % 2 == 1 then .[(length - 1) / 2]
              else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def r3: if . == null then null else (. * 1000 | round) / 1000 end;
  ($runs | tsv) as $runs | ($notes | tsv) as $notes | ($figs | map(.key)) as $main |
  [($paths | tsv)[] as [$name, $status, $reason, $setup] |
    ([$runs[] | select(.[0] == $name)] | group_by(.[1])
      | map({key: .[0][1], value: map(.[3] | tonumber)}) | from_entries) as $r |
    {name: $name, status: $status,
     reason: (if $reason == "" then null else $reason end),
     setup: (if $setup == "" then null else $setup end),
     figures: (if $status == "ok" then ($main | map({key: ., value: ($r[.] // [] | median | r3)}) | from_entries) else null end),
     extra: (if $status == "ok" then ($r | with_entries(select(.key as $k | $main | index($k) | not))
             | map_values(median | r3)) else null end),
     runs: (if $status == "ok" then $r else null end),
     notes: [$notes[] | select(.[0] == $name) | .[1]]}] as $ps |
  def ratio($base): ($ps | map(select(.name == $base and .status == "ok")) | first) as $b |
    if $b == null then null else
      (.figures // {}) as $f | $main | map({key: ., value:
        (if $f[.] == null or $b.figures[.] == null or $b.figures[.] == 0 then null
         else ($f[.] / $b.figures[.] * 100 | round) / 100 end)}) | from_entries end;
  {tool: "tapyard bench", schema_version: 1, machine: $machine, config: $config,
   bridge_udp64_kpps: (if $bridge_kpps == "" then null else ($bridge_kpps | tonumber) end),
   errors: ($errors | tonumber),
   figures: ($figs | map(del(.head, .fmt))),
   paths: [$ps[] | . + {ratio_to_bridge: (if .status == "ok" then ratio("bridge") else null end),
                        ratio_to_vde: (if .status == "ok" then ratio("vde") else null end),
                        ratio_to_tapyard: (if .status == "ok" then ratio("tapyard") else null end)}]}')

# Markdown tables, columns padded for a terminal.
# A row of two cells (a path that was skipped or failed, and why) does not widen the columns.
align() { awk -F'\t' '{ for (i = 1; i <= NF; i++) { c[NR, i] = $i; if (NF > 2 && length($i) > w[i]) w[i] = length($i) } n[NR] = NF }
  END { for (r = 1; r <= NR; r++) { line = "|"; for (i = 1; i <= n[r]; i++) {
          v = c[r, i]; if (r == 2) { v = ""; while (length(v) < w[i]) v = v "-" }
          line = line sprintf(" %-" w[i] "s |", v) } print line } }'; }
# shellcheck disable=SC2016
table() { # values | bridge | vde | tapyard
  jq -r --arg what "$1" --argjson figs "$FIGS" --arg tests ",$TESTS," '
    ($figs | map(select(.test as $t | $tests | contains("," + $t + ",")))) as $figs |
    (["path"] + ($figs | map(.head))) as $head | ($head | map("-")) as $sep |
    def fixed($n): (. * pow(10; $n) | round) as $i | ($i | fabs | tostring) as $s |
      (if $n == 0 then $s else (if ($s | length) <= $n then ("0" * ($n - ($s | length) + 1)) + $s else $s end)
        | .[0:length - $n] + "." + .[length - $n:] end) | (if $i < 0 then "-" else "" end) + .;
    def cell($f): if $what == "values" then (.figures[$f.key] | if . == null then "-" else fixed($f.fmt) end)
                  else (.["ratio_to_" + $what][$f.key] | if . == null then "-" else fixed(2) + "x" end) end;
    ($head, $sep,
     (.paths[] | select($what != "tapyard" or (.name | startswith("tapyard"))) | if .status == "ok" then [.name] + [. as $p | $figs[] | . as $f | $p | cell($f)]
                 else [.name, "\(.status): \(.reason)"] end)) | @tsv' <<< "$RESULTS" | align
}
have_path() { jq -e --arg n "$1" '.paths | any(.name == $n and .status == "ok")' <<< "$RESULTS" > /dev/null; }
render_md() {
  local what="medians of $RUNS runs"
  if ((RUNS == 1)); then what="one run"; fi
  echo "Figures ($what of ${DUR} s; $PINGS pings every ${PING_INTERVAL} s):"
  echo
  table values
  if have_path bridge; then
    echo; echo "Ratio to the Linux bridge (path / bridge: above 1 is better for throughput, worse for latency, loss and CPU):"; echo
    table bridge
  fi
  if have_path vde; then
    echo; echo "Ratio to vde_switch (path / vde_switch):"; echo
    table vde
  fi
  if have_path tapyard && { have_path tapyard-routed || have_path tapyard-busy; }; then
    echo; echo "Ratio to tapyard switched (routed / switched: what routing costs; busy / switched: what busy polling buys):"; echo
    table tapyard
  fi
  echo
  jq -r --arg tests ",$TESTS," '.figures[] | select(.test as $t | $tests | contains("," + $t + ","))
    | "- \(.key): \(.label) (\(.unit), \(.better) is better)"' <<< "$RESULTS"
  if has "$TESTS" pingpong; then echo "- ping-pong tool: $(pp_label)"; fi
  [[ -z $BRIDGE_KPPS ]] || ! has "$TESTS" loss || echo "- loss test offered rate: ${BRIDGE_KPPS} kpps (the bridge's median 64-byte UDP rate); target for tapyard: < 0.1 %"
  jq -r '.paths[] | select(.notes | length > 0) | .name as $n | .notes[] | "- \($n): \(.)"' <<< "$RESULTS"
}

if [[ -n $REPORT ]]; then
  mkdir -p "$REPORT"
  chart="chart.png"
  if command -v gnuplot > /dev/null; then
    jq -r '.paths[] | select(.status == "ok") | [.name] + ([.figures | .tcp1_gbps, .tcp4_gbps, .udp64_kpps, .ping_p50_us,
      .pingpong_p50_us, .cpu_s_per_gb] | map(if . == null then "NaN" else tostring end)) | @tsv' <<< "$RESULTS" \
      > "$W/chart.tsv"
    npaths=$(grep -c . "$W/chart.tsv" || true)
    present=$(awk -F'\t' '{ for (i = 2; i <= 7; i++) if ($i != "NaN") p[i] = 1 }
      END { for (i = 2; i <= 7; i++) printf "%s%d", (i > 2 ? " " : ""), (i in p) }' "$W/chart.tsv")
    if ((npaths == 0)); then
      chart="skipped: no data path was measured"
    elif ! gnuplot -e "datafile='$W/chart.tsv'; outfile='$REPORT/chart.png'; npaths=$npaths; present='$present'; \
        subtitle='$(nproc) CPUs, $(uname -r), $(date -u +%Y-%m-%d), $RUNS x ${DUR} s'; \
        ping_title='ping every $(awk -v i="$PING_INTERVAL" 'BEGIN{printf "%g", i * 1000}') ms, RTT median (µs, lower is better)'" "$HERE/chart.gp" \
        > "$LOGS/gnuplot.log" 2>&1; then
      chart="skipped: gnuplot failed: $(grep -v '^ *$' "$LOGS/gnuplot.log" | tail -n 1)"
    fi
  else
    chart="skipped: gnuplot not found (Debian package gnuplot-nox), $INSTALL_HINT"
  fi
  RESULTS=$(jq --arg chart "$chart" '. + {chart: $chart}' <<< "$RESULTS")
  echo "$RESULTS" > "$REPORT/results.json"
  {
    echo "# tapyard bench"
    echo
    jq -r '.machine | "- machine: \(.nproc) CPUs, \(.cpu)\n- kernel: \(.kernel)\n- date: \(.date)\n- tapyard: \(.tapyard_version) (\(.tapyard_binary)), revision \(.tapyard_rev)"' <<< "$RESULTS"
    echo "- command: tapyard bench --against $AGAINST --paths $TY_PATHS --tests $TESTS --duration $DUR --runs $RUNS --pings $PINGS --ping-interval $PING_INTERVAL${WORKERS:+ --workers $WORKERS}${NICE:+ --nice $NICE}"
    echo "- $(iperf3 --version 2>/dev/null | head -n 1)"
    echo
    echo "Data paths:"
    echo
    jq -r '.paths[] | "- \(.name): \(.setup // .reason)"' <<< "$RESULTS"
    echo
    render_md
    echo
    if [[ $chart == chart.png ]]; then echo "![chart](chart.png)"; else echo "Chart: $chart"; fi
  } > "$REPORT/results.md"
  rm -rf "$REPORT/logs"
  cp -r "$LOGS" "$REPORT/logs"
  log "report: $REPORT/results.md, results.json, $( [[ $chart == chart.png ]] && echo chart.png || echo "no chart ($chart)"), logs/"
fi

if ((JSON)); then
  echo "$RESULTS"
else
  render_md
fi

if ((ERRORS)); then
  log "$ERRORS error(s): see the notes above"
  exit 1
fi
exit 0
