#!/usr/bin/env bash
# bench/system/egress.sh: the egress benchmark behind `tapyard bench --egress`.
#
# A container reaching beyond its host through NAT, and the outside reaching a
# port the host publishes for a container, on tapyard and on the classic
# Docker data path, measured in one run, interleaved run by run, so that the
# ratios mean something on a noisy machine. Each data path gets namespaces of
# its own, the same on both:
#
#   host       the daemon's namespace (tapyard), or the one with the bridge (bridge);
#              the kernel's NAT (nftables masquerade, dnat) and ip_forward live here
#   outside    joined to host by a veth pair: host 198.18.0.1/24, outside
#              198.18.0.2/24 (RFC 2544 benchmarking range, nothing leaves the
#              machine); no route beyond, so it only ever sees the host's address
#   container  tapyard: on the network `eg` (198.19.1.0/24, egress NAT, the default)
#              of a daemon run as `ip netns exec HOST tapyard daemon` (its uplink
#              TAP in HOST); bridge: a veth to a Linux bridge in HOST that carries
#              the gateway 198.19.2.1/24, ip_forward on, `masquerade` for the
#              container's subnet; bridge-nf-call-* off (frames skip iptables in
#              the bridge: the fastest the bridge gets; Docker turns them on)
#
# Scenarios and figures (medians of --runs runs of --duration seconds; the
# spread is min-max over the runs; ratios tapyard / baseline of the medians,
# and min-max of the per-run ratios, each run measuring both paths back to back):
#
#   egress    iperf3 TCP container -> outside (198.18.0.2), 1 and 4 streams;
#             target tapyard >= 0.8 x bridge + NAT
#   publish   iperf3 TCP outside -> host 198.18.0.1:8080 -> container:5201: tapyard
#             `connect ... --publish 8080:5201` against the bridge with a Docker-style
#             nft `dnat to` in prerouting; target >= 0.8 x. Skipped, with that
#             reason, when this tapyard's `connect` has no --publish
#   rootless  iperf3 TCP container -> outside, tapyard + pasta (the daemon's uplink
#             through pasta) against pasta alone (the container's namespace with a
#             pasta of its own, as podman runs it; its host side a namespace like
#             the others); target >= 0.9 x. tapyard + pasta: a namespace with pasta
#             attached (the same options) holds the tapyard daemon and its uplink;
#             the container is on a network with egress. Both run as root here,
#             for the harness's sake (namespaces made with `ip netns`), pasta with
#             --runas 0
#   cpu_s_per_gb  CPU seconds (utime+stime of /proc/PID/stat) of the tapyard daemon,
#             or of pasta, during the 1-stream tests, per GB received; the bridge
#             forwards in softirq context and has no process to account
#   machine_cpu1_s_per_gb, machine_cpu4_s_per_gb  the whole machine's busy CPU
#             seconds (/proc/stat: user, nice, system, irq, softirq) during the 1-
#             and 4-stream tests, per GB received: what a path costs all in all,
#             both iperf3 ends and the kernel's forwarding included, comparable
#             between paths; anything else running is counted too
#
# usage: egress.sh [--duration S] [--runs N] [--json] [--report DIR] [--keep]
# env: TAPYARD (the tapyard binary), TAPYARD_SRC (a source tree whose git
#      revision goes into the report; optional)
# Needs root, ip, iperf3, jq, nft, ping, ss, timeout; pasta (passt) for the
# rootless baseline, reported as failed when missing. Everything it makes is
# named tye<PID>... (namespaces) or lives in its temporary directory, and is
# removed on exit, Ctrl-C and SIGTERM included; only processes it started are
# stopped, by pid.

# on_exit and setup_* are called indirectly (trap, by name); the backquotes in
# messages are literal
# shellcheck disable=SC2317,SC2016
set -euo pipefail

log() { printf '[bench egress %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf 'tapyard bench --egress: %s\n' "$*" >&2; exit 1; }
usage_error() { printf 'tapyard bench --egress: %s\n(see `tapyard bench --help`)\n' "$*" >&2; exit 2; }

DUR=5
RUNS=3
JSON=0
REPORT=""
KEEP=0
while (($#)); do
  case $1 in
  --duration | --runs | --report)
    (($# >= 2)) || usage_error "$1 needs a value"
    case $1 in
    --duration) DUR=$2 ;;
    --runs) RUNS=$2 ;;
    --report) REPORT=$2 ;;
    esac
    shift 2
    ;;
  --json) JSON=1; shift ;;
  --keep) KEEP=1; shift ;;
  -h | --help) sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) usage_error "unknown argument '$1'" ;;
  esac
done
in_range() { [[ $1 =~ ^[0-9]+$ ]] && (($1 >= $2 && $1 <= $3)); }
in_range "$DUR" 1 3600 || usage_error "--duration: whole seconds from 1 to 3600, not '$DUR'"
in_range "$RUNS" 1 100 || usage_error "--runs: 1 to 100, not '$RUNS'"

[[ $(id -u) == 0 ]] || die "needs root: it creates network namespaces, veth pairs, bridges and nftables tables"
missing=()
for t in ip iperf3 jq nft ping ss timeout; do command -v "$t" > /dev/null 2>&1 || missing+=("$t"); done
((${#missing[@]} == 0)) || die "missing tools: ${missing[*]} (Debian: iproute2 iperf3 jq nftables iputils-ping coreutils)"
TAPYARD=${TAPYARD:-$(command -v tapyard || true)}
[[ -n $TAPYARD && -x $TAPYARD ]] || die "no tapyard binary: set TAPYARD=/path/to/tapyard (tapyard bench does) or put tapyard on PATH"

CLK_TCK=$(getconf CLK_TCK)
P=tye$$                       # every namespace this run makes starts with this
W=$(mktemp -d "${TMPDIR:-/tmp}/tapyard-bench-egress.$$.XXXXXX")
LOGS=$W/logs
PIDS=$W/pids                  # "pid starttime" of every process this run started
mkdir -p "$LOGS"
: > "$PIDS"
: > "$W/runs.tsv"             # scenario path key run value
: > "$W/status.tsv"           # scenario path status reason
: > "$W/paths.tsv"            # path setup-description
HOST_IP=198.18.0.1 OUTSIDE_IP=198.18.0.2
IPERF_PORT=5201 PUB_PORT=8080
TY_NET=198.19.1.0/24 TY_CT=198.19.1.2
BR_NET=198.19.2.0/24 BR_GW=198.19.2.1 BR_CT=198.19.2.2
CUR=""                        # the client being waited for
ERRORS=0

# ------------------------------------------------------------------ processes
starttime() { # field 22 of /proc/PID/stat
  local s
  s=$(cat "/proc/$1/stat" 2> /dev/null) || return 1
  s=${s##*) }
  # shellcheck disable=SC2086
  set -- $s
  echo "${20}"
}
alive() { # running and not a zombie
  local s
  s=$(cat "/proc/$1/stat" 2> /dev/null) || return 1
  s=${s##*) }
  [[ ${s:0:1} != Z ]]
}
track() { # remember a pid we started with its start time, so a recycled pid is never hit
  local st
  st=$(starttime "$1") || return 0
  echo "$1 $st" >> "$PIDS"
}
stop_pid() { # pid starttime: TERM, up to 10 s, then KILL
  local pid=$1 want=$2 i
  [[ $(starttime "$pid" 2> /dev/null) == "$want" ]] || return 0
  kill -TERM "$pid" 2> /dev/null || return 0
  for ((i = 0; i < 100; i++)); do alive "$pid" || return 0; sleep 0.1; done
  log "pid $pid ignored SIGTERM for 10 s: SIGKILL"
  kill -KILL "$pid" 2> /dev/null || true
}
stop_all() { # every tracked pid, the last started first
  local pid st
  if [[ -n $CUR ]]; then kill -TERM "$CUR" 2> /dev/null || true; CUR=""; fi
  while read -r pid st; do stop_pid "$pid" "$st"; done < <(tac "$PIDS")
  : > "$PIDS"
}
bg_ns() { # ns log cmd...: a background process in a namespace, tracked; its pid in BG_PID
  local ns=$1 out=$2
  shift 2
  ip netns exec "$ns" "$@" >> "$out" 2>&1 < /dev/null &
  BG_PID=$!
  track "$BG_PID"
}
# A client in the foreground, waited for in the background so that a signal is
# handled at once (bash runs traps during `wait`).
fg_ns() { # ns out cmd...
  local ns=$1 out=$2 rc=0
  shift 2
  ip netns exec "$ns" "$@" > "$out" 2>&1 < /dev/null &
  CUR=$!
  wait "$CUR" || rc=$?
  CUR=""
  return "$rc"
}
until_ok() { # seconds cmd...: retry cmd every 0.1 s until it succeeds or the deadline passes
  local end=$((SECONDS + $1))
  shift
  while ! "$@" > /dev/null 2>&1; do
    ((SECONDS < end)) || return 1
    sleep 0.1
  done
}

# ------------------------------------------------------------------ namespaces
ns_add() {
  ip netns add "$1"
  ip -n "$1" link set lo up
  # no IPv6 chatter (DAD, router and multicast listener messages) in the measurements
  ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 \
    > /dev/null 2>&1 || true
}
remove_net() { # every namespace of this run, and every link in them (persistent TAPs included)
  local ns l
  for ns in $(ip netns list 2> /dev/null | awk '{print $1}' | grep "^$P" || true); do
    for l in $(ip -n "$ns" -o link show 2> /dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
      [[ $l == lo ]] || ip -n "$ns" link del "$l" 2> /dev/null || true
    done
    ip netns del "$ns" 2> /dev/null || true
  done
}
on_exit() {
  local rc=$?
  set +e
  trap - EXIT
  trap '' INT TERM # a second Ctrl-C must not cut the cleanup short
  stop_all
  remove_net
  if ((KEEP)); then log "work directory kept: $W"; else rm -rf "$W"; fi
  exit "$rc"
}
trap on_exit EXIT
trap 'log "interrupted: cleaning up"; exit 130' INT
trap 'log "terminated: cleaning up"; exit 143' TERM

# host (h) and outside (o) of a path, joined by a veth pair made in place (its
# names live only inside the two namespaces)
host_and_outside() { # prefix
  local h=${1}h o=${1}o
  ns_add "$h"
  ns_add "$o"
  ip link add up0 netns "$h" type veth peer name out0 netns "$o"
  ip -n "$h" addr add "$HOST_IP/24" dev up0
  ip -n "$h" link set up0 up
  ip -n "$o" addr add "$OUTSIDE_IP/24" dev out0
  ip -n "$o" link set out0 up
  ns_add "${1}c"
}

# ------------------------------------------------------------------ data paths
# Each setup_* runs in a subshell with `set -e` and output to its log; it leaves
# the container able to reach the outside, writes a one-line description to
# $W/desc.PATH, and `fail REASON` ends it with a reason.
fail() { echo "$*" > "$W/why.$PATH_NAME"; exit 1; }

ty() { "$TAPYARD" --socket "$W/ty.sock" "$@"; }
HAS_PUBLISH=0
"$TAPYARD" connect --help 2> /dev/null | grep -q -- '--publish' && HAS_PUBLISH=1

setup_tapyard() {
  local h=${P}th c=${P}tc pid
  host_and_outside "${P}t"
  ip netns exec "$h" "$TAPYARD" --socket "$W/ty.sock" daemon --state-dir "$W/state" \
    > /dev/null 2>> "$LOGS/tapyard.daemon.log" < /dev/null &
  pid=$!
  track "$pid"
  echo "$pid" > "$W/cpu.tapyard"
  local end=$((SECONDS + 15))
  until ty network ls > /dev/null 2>&1; do
    alive "$pid" || fail "the tapyard daemon exited: $(grep -m1 -iE 'error|invalid' "$LOGS/tapyard.daemon.log" || tail -n 1 "$LOGS/tapyard.daemon.log")"
    ((SECONDS < end)) || fail "the tapyard daemon did not answer on its socket within 15 s"
    sleep 0.05
  done
  ty network create eg --subnet "$TY_NET" > /dev/null || fail "network create eg --subnet $TY_NET failed"
  local pub=()
  ((HAS_PUBLISH)) && pub=(--publish "$PUB_PORT:$IPERF_PORT")
  ty connect eg "$c" --ip "$TY_CT/24" "${pub[@]}" > /dev/null || fail "tapyard connect eg $c failed"
  echo "tapyard daemon in namespace host (uplink TAP, kernel masquerade), container on network eg $TY_NET$( ((HAS_PUBLISH)) && echo ", --publish $PUB_PORT:$IPERF_PORT")" > "$W/desc.tapyard"
}

setup_bridge() {
  local h=${P}bh c=${P}bc
  host_and_outside "${P}b"
  ip -n "$h" link add br0 type bridge
  ip -n "$h" addr add "$BR_GW/24" dev br0
  ip -n "$h" link set br0 up
  ip netns exec "$h" sysctl -qw net.ipv4.ip_forward=1
  ip netns exec "$h" sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0 \
    net.bridge.bridge-nf-call-arptables=0 > /dev/null 2>&1 || true
  ip -n "$c" link add eth0 type veth peer name veth0 netns "$h"
  ip -n "$h" link set veth0 master br0 up
  ip -n "$c" addr add "$BR_CT/24" dev eth0
  ip -n "$c" link set eth0 up
  ip -n "$c" route add default via "$BR_GW"
  # Docker's rules, in nftables: masquerade what leaves the bridge's subnet by
  # another interface, and the published port's DNAT in prerouting (replies
  # are un-NATed by conntrack).
  ip netns exec "$h" nft -f - << EOF
table ip tyegress {
  chain pre {
    type nat hook prerouting priority dstnat;
    ip daddr $HOST_IP tcp dport $PUB_PORT dnat to $BR_CT:$IPERF_PORT
  }
  chain post {
    type nat hook postrouting priority srcnat;
    ip saddr $BR_NET oifname != "br0" masquerade
  }
}
EOF
  echo "Linux bridge br0 ($BR_GW/24) in namespace host, veth to the container, ip_forward, nft masquerade and dnat $HOST_IP:$PUB_PORT -> $BR_CT:$IPERF_PORT (bridge-nf-call-* off)" > "$W/desc.bridge"
}

# Rootless egress, the baseline: a namespace with its own pasta, as podman runs
# one per container (pasta copies the host side's address and routes into the
# namespace and relays its traffic through sockets of the host side). Run as
# root here for the harness's sake (namespaces made by `ip netns`), and kept
# root (--runas 0: as nobody it could not enter a namespace that root made,
# and rootless pasta runs as the namespace's owner anyway). Its host side is ${P}ph, the same host/outside layout as
# the other paths (default route to the outside, so pasta has an interface to
# copy); --no-map-gw so that the outside, which is the gateway, is reached as
# itself rather than as the host side's loopback.
setup_pasta() {
  local h=${P}ph c=${P}pc
  command -v pasta > /dev/null || fail "pasta not found (Debian package passt)"
  host_and_outside "${P}p"
  ip -n "$h" route add default via "$OUTSIDE_IP"
  bg_ns "$h" "$LOGS/pasta.log" pasta -f -q -4 --runas 0 --config-net --netns "/run/netns/$c" --no-map-gw \
    -t none -u none -T none -U none
  echo "$BG_PID" > "$W/cpu.pasta"
  local ver
  ver=$(dpkg-query -W -f '${Version}' passt 2> /dev/null || pasta --version 2> /dev/null | head -n 1 || true)
  until_ok 10 eval "ip -n $c -4 -o addr show | grep -qv ' lo '" || fail "pasta did not configure the namespace: $(tail -n 1 "$LOGS/pasta.log")"
  echo "pasta ${ver:-(version unknown)} --config-net (MTU $(ip -n "$c" -o link show | awk '$2 != "lo:" {for (i = 1; i < NF; i++) if ($i == "mtu") print $(i + 1)}' | head -n 1)) into the container's namespace, its host side in namespace host; run as root" > "$W/desc.pasta"
}

# Rootless egress through tapyard: what a rootless daemon builds (docs/ROOTLESS.md),
# made here by hand as root so the harness can name every namespace: the
# daemon's namespace ${P}yd with pasta attached to it (the same pasta options as
# the baseline), a tapyard daemon inside with its uplink TAP and NAT, and the
# container ${P}yc on a network with egress. The container's traffic crosses
# tapyard, the daemon namespace's kernel (NAT) and pasta.
setup_tapyard-pasta() {
  local h=${P}yh d=${P}yd c=${P}yc pid
  command -v pasta > /dev/null || fail "pasta not found (Debian package passt)"
  host_and_outside "${P}y"
  ns_add "$d"
  ip -n "$h" route add default via "$OUTSIDE_IP"
  bg_ns "$h" "$LOGS/tapyard-pasta.pasta.log" pasta -f -q -4 --runas 0 --config-net --netns "/run/netns/$d" --no-map-gw \
    -t none -u none -T none -U none
  echo "$BG_PID" > "$W/cpu.tapyard-pasta"
  until_ok 10 eval "ip -n $d -4 -o addr show | grep -qv ' lo '" || fail "pasta did not configure the daemon's namespace: $(tail -n 1 "$LOGS/tapyard-pasta.pasta.log")"
  ip netns exec "$d" "$TAPYARD" --socket "$W/typ.sock" daemon --state-dir "$W/state-pasta" \
    > /dev/null 2>> "$LOGS/tapyard-pasta.daemon.log" < /dev/null &
  pid=$!
  track "$pid"
  echo "$pid" >> "$W/cpu.tapyard-pasta"
  local end=$((SECONDS + 15))
  until "$TAPYARD" --socket "$W/typ.sock" network ls > /dev/null 2>&1; do
    alive "$pid" || fail "the tapyard daemon exited: $(tail -n 1 "$LOGS/tapyard-pasta.daemon.log")"
    ((SECONDS < end)) || fail "the tapyard daemon did not answer on its socket within 15 s"
    sleep 0.05
  done
  # The MTU pasta gives a namespace (65520), as the baseline's container has:
  # at 1500, pasta's per-packet cost dominates (docs/PERFORMANCE.md).
  "$TAPYARD" --socket "$W/typ.sock" network create eg --subnet "$TY_NET" --mtu 65520 > /dev/null || fail "network create eg failed"
  "$TAPYARD" --socket "$W/typ.sock" connect eg "$c" --ip "$TY_CT/24" > /dev/null || fail "tapyard connect eg $c failed"
  echo "tapyard daemon in namespace ${P}yd (uplink TAP, kernel masquerade) with pasta attached to that namespace (same options as the baseline), container on network eg $TY_NET, MTU 65520 (pasta's); run as root" > "$W/desc.tapyard-pasta"
}

declare -A PATH_OK
prefix() {
  case $1 in
  tapyard) echo "${P}t" ;;
  bridge) echo "${P}b" ;;
  pasta) echo "${P}p" ;;
  tapyard-pasta) echo "${P}y" ;;
  esac
}

bring_up() { # path: set it up, start its iperf3 servers, wait until everything answers
  PATH_NAME=$1
  local p rc=0 why n
  p=$(prefix "$1")
  log "setting up $1"
  set +e
  (set -e; "setup_$1") >> "$LOGS/$1.setup.log" 2>&1
  rc=$?
  set -e
  if ((rc == 0)); then
    bg_ns "${p}o" "$LOGS/$1.iperf3-outside.log" iperf3 -s -p $IPERF_PORT
    bg_ns "${p}c" "$LOGS/$1.iperf3-container.log" iperf3 -s -p $IPERF_PORT
    if ! until_ok 10 eval "ip netns exec ${p}o ss -ltn | grep -q ':$IPERF_PORT '"; then
      echo "the outside's iperf3 server did not listen" > "$W/why.$1"; rc=1
    elif ! until_ok 10 eval "ip netns exec ${p}c ss -ltn | grep -q ':$IPERF_PORT '"; then
      echo "the container's iperf3 server did not listen" > "$W/why.$1"; rc=1
    elif ! until_ok 15 ip netns exec "${p}c" timeout 2 bash -c "exec 3<> /dev/tcp/$OUTSIDE_IP/$IPERF_PORT"; then
      echo "the container cannot reach the outside ($OUTSIDE_IP:$IPERF_PORT) after setup" > "$W/why.$1"; rc=1
    fi
  fi
  {
    echo "# $(cat "$W/desc.$1" 2> /dev/null)"
    for n in h o c; do
      echo "## namespace $n"
      ip -n "${p}$n" -d addr show
      ip -n "${p}$n" route show
    done
    echo "## nftables in host"
    ip netns exec "${p}h" nft list ruleset
  } >> "$LOGS/$1.setup.log" 2>&1 || true
  if ((rc != 0)); then
    why=$(cat "$W/why.$1" 2> /dev/null || echo "setup failed: $(grep -v '^$' "$LOGS/$1.setup.log" | tail -n 1)")
    log "  $1 failed: $why"
    ERRORS=$((ERRORS + 1))
    PATH_OK[$1]=0
    printf '%s\tfailed\t%s\n' "$1" "$why" >> "$W/paths.tsv"
    return 0
  fi
  PATH_OK[$1]=1
  printf '%s\tok\t%s\n' "$1" "$(cat "$W/desc.$1")" >> "$W/paths.tsv"
}

# A published port is ready when a TCP connection to it from the outside is
# answered (by the container's iperf3 server, which shrugs off the empty one).
pub_answers() { # path
  local p
  p=$(prefix "$1")
  until_ok 15 ip netns exec "${p}o" timeout 2 bash -c "exec 3<> /dev/tcp/$HOST_IP/$PUB_PORT"
}

# ------------------------------------------------------------------ measurements
rec() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >> "$W/runs.tsv"; } # scenario path key run value
# The whole machine's busy time (user, nice, system, irq, softirq of /proc/stat's
# cpu line; not idle, iowait or steal), in clock ticks: what a path costs all in
# all, kernel forwarding and both iperf3 ends included. Anything else running
# on the machine is counted too, so it means something only on a quiet one.
machine_ticks() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8; exit}' /proc/stat; }
proc_ticks() { # path: utime+stime of the path's own processes (daemon, pasta), in clock ticks
  local pid s f t=0
  while read -r pid; do
    s=$(cat "/proc/$pid/stat" 2> /dev/null) || continue
    s=${s##*) }
    read -r -a f <<< "$s"
    t=$((t + f[11] + f[12]))
  done < "$W/cpu.$1"
  echo "$t"
}

measure() { # scenario path streams run
  local sc=$1 path=$2 n=$3 r=$4 p js from target port t0 t1 m0 m1 v key=tcp${3}_gbps
  p=$(prefix "$path")
  js=$LOGS/$sc.$path.$key.$r.json
  if [[ $sc == publish ]]; then
    from=${p}o target=$HOST_IP port=$PUB_PORT
  else
    from=${p}c target=$OUTSIDE_IP port=$IPERF_PORT
  fi
  [[ -e $W/cpu.$path ]] && t0=$(proc_ticks "$path")
  m0=$(machine_ticks)
  fg_ns "$from" "$js" timeout $((DUR + 30)) iperf3 -c "$target" -p "$port" -t "$DUR" -P "$n" -J || true
  m1=$(machine_ticks)
  if ! jq -e '.end.sum_received.bytes > 0' "$js" > /dev/null 2>&1; then
    ERRORS=$((ERRORS + 1))
    log "  $sc $path $key run $r: iperf3 failed: $(jq -r '.error // empty' "$js" 2> /dev/null | head -n 1)"
    return 0
  fi
  v=$(jq '.end.sum_received.bits_per_second / 1e9' "$js")
  rec "$sc" "$path" "$key" "$r" "$v"
  rec "$sc" "$path" "tcp${n}_retransmits" "$r" "$(jq '.end.sum_sent.retransmits // 0' "$js")"
  # seconds in which the transfer stalled (under 5 % of its best second): a
  # median hides them, and they say more about a data path than the rate does
  local stalls
  stalls=$(jq '[.intervals[].sum.bits_per_second] as $b | ($b | max) as $m | [$b[] | select($m > 0 and . < 0.05 * $m)] | length' "$js")
  rec "$sc" "$path" "tcp${n}_stalled_s" "$r" "$stalls"
  ((stalls == 0)) || echo "$sc $path, $n stream$( ((n == 1)) || echo s), run $r: stalled $stalls of $DUR s (under 5 % of its best second)" >> "$W/stalls.txt"
  rec "$sc" "$path" "machine_cpu${n}_s_per_gb" "$r" \
    "$(jq --argjson d $((m1 - m0)) --argjson hz "$CLK_TCK" '($d / $hz) / (.end.sum_received.bytes / 1e9)' "$js")"
  local cpu=""
  if [[ -e $W/cpu.$path && $n == 1 ]]; then
    t1=$(proc_ticks "$path")
    cpu=$(jq --argjson d $((t1 - t0)) --argjson hz "$CLK_TCK" '($d / $hz) / (.end.sum_received.bytes / 1e9)' "$js")
    rec "$sc" "$path" cpu_s_per_gb "$r" "$cpu"
    cpu=", $path CPU $(printf '%.3f' "$cpu") s/GB"
  fi
  log "  $sc $path $key run $r: $(printf '%.2f' "$v") Gbit/s$cpu"
}

# ------------------------------------------------------------------ run
git_rev() {
  local src=${TAPYARD_SRC:-} rev
  if [[ -z $src ]] || ! rev=$(git -C "$src" rev-parse --short=12 HEAD 2> /dev/null); then
    echo unknown
    return
  fi
  [[ -z $(git -C "$src" status --porcelain --untracked-files=no 2> /dev/null) ]] || rev+="+uncommitted"
  echo "$rev"
}
MACHINE=$(jq -n --arg nproc "$(nproc)" --arg kernel "$(uname -r)" \
  --arg cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" \
  --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg rev "$(git_rev)" \
  --arg ver "$("$TAPYARD" --version 2> /dev/null || true)" --arg bin "$TAPYARD" \
  '{nproc: ($nproc | tonumber), kernel: $kernel, cpu: $cpu, date: $date,
    tapyard_rev: $rev, tapyard_version: $ver, tapyard_binary: $bin}')
log "machine: $(nproc) CPUs, kernel $(uname -r); $RUNS x $DUR s"

bring_up tapyard
bring_up bridge
bring_up pasta
bring_up tapyard-pasta

# scenario status: ok, or why not
status() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$W/status.tsv"; }
for path in tapyard bridge; do
  if ((PATH_OK[$path])); then status egress "$path" ok ""; else status egress "$path" failed "$(awk -F'\t' -v p="$path" '$1 == p {print $3}' "$W/paths.tsv")"; fi
done
PUB_OK=(bridge)
if ((PATH_OK[bridge])); then status publish bridge ok ""; else status publish bridge failed "the bridge path did not come up"; fi
if ((!HAS_PUBLISH)); then
  status publish tapyard skipped "this tapyard has no --publish"
elif ((!PATH_OK[tapyard])); then
  status publish tapyard failed "the tapyard path did not come up"
else
  PUB_OK+=(tapyard)
  status publish tapyard ok ""
fi
for path in "${PUB_OK[@]}"; do
  if ((PATH_OK[$path])) && ! pub_answers "$path"; then
    log "  $path: nothing answers on the published port $HOST_IP:$PUB_PORT from the outside"
    ERRORS=$((ERRORS + 1))
    sed -i "s/^publish\t$path\tok\t.*/publish\t$path\tfailed\tnothing answers on the published port $HOST_IP:$PUB_PORT from the outside/" "$W/status.tsv"
  fi
done
if ((PATH_OK[pasta])); then
  status rootless pasta ok ""
else
  status rootless pasta failed "$(awk -F'\t' '$1 == "pasta" {print $3}' "$W/paths.tsv")"
fi
if [[ ${PATH_OK[tapyard-pasta]:-0} == 1 ]]; then
  status rootless tapyard-pasta ok ""
else
  status rootless tapyard-pasta failed "$(awk -F'\t' '$1 == "tapyard-pasta" {print $3}' "$W/paths.tsv")"
fi

scenario_ok() { awk -F'\t' -v s="$1" -v p="$2" '$1 == s && $2 == p && $3 == "ok" {f = 1} END {exit !f}' "$W/status.tsv"; }
for ((r = 1; r <= RUNS; r++)); do
  # alternate which path goes first, so neither always runs on a warmer (or busier) machine
  if ((r % 2)); then order=(tapyard bridge); else order=(bridge tapyard); fi
  for sc in egress publish rootless; do
    for n in 1 4; do
      for path in "${order[@]}" pasta tapyard-pasta; do
        scenario_ok "$sc" "$path" || continue
        log "run $r/$RUNS: $sc, $path, $n stream$( ((n == 1)) || echo s)"
        measure "$sc" "$path" "$n" "$r"
      done
    done
  done
done
if ((PATH_OK[tapyard])); then ty port ls --json > "$LOGS/tapyard.ports.json" 2>&1 || true; fi

# ------------------------------------------------------------------ results
CONFIG=$(jq -n --argjson dur "$DUR" --argjson runs "$RUNS" --arg iperf "$(iperf3 --version 2> /dev/null | head -n 1)" \
  --arg ty_net "$TY_NET" --arg br_net "$BR_NET" --arg host "$HOST_IP" --arg outside "$OUTSIDE_IP" \
  --argjson pub "$PUB_PORT" --argjson port "$IPERF_PORT" \
  '{duration_s: $dur, runs: $runs, iperf3: $iperf, host_ip: $host, outside_ip: $outside,
    tapyard_subnet: $ty_net, bridge_subnet: $br_net, published_port: $pub, iperf3_port: $port}')
# shellcheck disable=SC2016
RESULTS=$(jq -n --rawfile runs "$W/runs.tsv" --rawfile status "$W/status.tsv" --rawfile paths "$W/paths.tsv" \
  --argjson machine "$MACHINE" --argjson config "$CONFIG" --argjson errors "$ERRORS" '
  def rows($t): $t | split("\n") | map(select(length > 0) | split("\t"));
  def median: sort | if length == 0 then null elif length % 2 == 1 then .[(length - 1) / 2]
              else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def r3: if . == null then null else (. * 1000 | round) / 1000 end;
  def stat: if length == 0 then null
            else {median: (median | r3), min: (min | r3), max: (max | r3), runs: map(r3)} end;
  (rows($runs) | map({sc: .[0], path: .[1], key: .[2], run: (.[3] | tonumber), v: (.[4] | tonumber)})) as $rs |
  (rows($status) | map({sc: .[0], path: .[1], status: .[2], reason: (.[3] // "")})) as $st |
  def vals($sc; $path; $key): $rs | map(select(.sc == $sc and .path == $path and .key == $key));
  def pstat($sc; $path): ($st | map(select(.sc == $sc and .path == $path)) | first) //
                         {status: "skipped", reason: "not measured"};
  def figure($sc; $cand; $base; $key; $unit; $target):
    (vals($sc; $cand; $key)) as $c | (vals($sc; $base; $key)) as $b |
    ([$c[] as $x | $b[] | select(.run == $x.run and .v > 0) | $x.v / .v]) as $pr |
    ($c | map(.v) | stat) as $cs | ($b | map(.v) | stat) as $bs |
    (if $cs == null or $bs == null or $bs.median == 0 then null
     else ($cs.median / $bs.median * 100 | round) / 100 end) as $ratio |
    {key: $key, unit: $unit, candidate: $cs, baseline: $bs, ratio: $ratio,
     ratio_min: (if ($pr | length) == 0 then null else ($pr | min * 100 | round) / 100 end),
     ratio_max: (if ($pr | length) == 0 then null else ($pr | max * 100 | round) / 100 end),
     target: $target, met: (if $target == null or $ratio == null then null else $ratio >= $target end)};
  def scenario($sc; $title; $cand; $base; $target; $figs):
    {name: $sc, title: $title, candidate: $cand, baseline: $base, target: $target,
     candidate_status: pstat($sc; $cand), baseline_status: pstat($sc; $base),
     figures: [$figs[] as $f | figure($sc; $cand; $base; $f[0]; $f[1]; (if $f[2] then $target else null end))],
     extra: ([[$cand, $base][] as $p | {key: $p, value: ([["tcp1_retransmits", "tcp4_retransmits",
              "tcp1_stalled_s", "tcp4_stalled_s"][] as $k | {key: $k, value: (vals($sc; $p; $k) | map(.v) | stat)}]
              | from_entries)}] | from_entries)};
  ([["tcp1_gbps", "Gbit/s", true], ["tcp4_gbps", "Gbit/s", true], ["cpu_s_per_gb", "s/GB", false],
    ["machine_cpu1_s_per_gb", "s/GB", false], ["machine_cpu4_s_per_gb", "s/GB", false]]) as $tcp |
  {tool: "tapyard bench --egress", schema_version: 1, machine: $machine, config: $config, errors: $errors,
   paths: (rows($paths) | map({key: .[0], value: {status: .[1], setup: (.[2] // "")}}) | from_entries),
   scenarios: [
     scenario("egress"; "Egress TCP, container -> outside, through NAT"; "tapyard"; "bridge"; 0.8; $tcp),
     scenario("publish"; "Published port TCP, outside -> host:8080 -> container:5201"; "tapyard"; "bridge"; 0.8; $tcp),
     scenario("rootless"; "Rootless egress TCP: tapyard + pasta vs pasta alone"; "tapyard-pasta"; "pasta"; 0.9; $tcp)
   ]}')

table() {
  jq -r '
    def fx($v; $d): if $v == null then "-" else
      (($v * pow(10; $d)) | round | tostring) as $s |
      (([range(0; [0, $d + 1 - ($s | length)] | max)] | map("0") | join("")) + $s) as $p |
      if $d == 0 then $p else $p[0:($p | length) - $d] + "." + $p[($p | length) - $d:] end end;
    def spread($s; $d): if $s == null then "-"
      elif ($s.runs | length) == 1 then fx($s.median; $d)
      else "\(fx($s.median; $d)) [\(fx($s.min; $d))-\(fx($s.max; $d))]" end;
    def lbl($k): {tcp1_gbps: "TCP 1 stream, Gbit/s", tcp4_gbps: "TCP 4 streams, Gbit/s",
                  cpu_s_per_gb: "CPU s/GB of the daemon or pasta, 1 stream",
                  machine_cpu1_s_per_gb: "machine CPU s/GB, 1 stream (lower: better)",
                  machine_cpu4_s_per_gb: "machine CPU s/GB, 4 streams (lower: better)"}[$k];
    def dig($k): if $k | endswith("_s_per_gb") then 3 else 2 end;
    def cell($ps; $s): if $ps.status == "ok" then $s else $ps.status end;
    .scenarios[] | . as $sc |
    ["", "", "", ""],
    [.title, .candidate, (if .baseline == "bridge" then "bridge + NAT" else .baseline end),
     "ratio [per-run], target >= \(.target)"],
    (if .candidate_status.status != "ok" and .baseline_status.status != "ok" then empty
     else
       .figures[] | select(.key != "cpu_s_per_gb" or .candidate != null or .baseline != null) |
       ["  \(lbl(.key))",
        cell($sc.candidate_status; spread(.candidate; dig(.key))),
        (if .key == "cpu_s_per_gb" and .baseline == null and $sc.baseline == "bridge" then "(kernel softirq)"
         else cell($sc.baseline_status; spread(.baseline; dig(.key))) end),
        (if .ratio == null or .key == "cpu_s_per_gb" then "-"
         else "\(fx(.ratio; 2)) [\(fx(.ratio_min; 2))-\(fx(.ratio_max; 2))]" +
              (if .met == null then "" elif .met then "  met" else "  MISSED" end) end)]
     end),
    (.candidate_status | select(.status != "ok") | ["  \($sc.candidate): \(.status): \(.reason)", "", "", ""]),
    (.baseline_status | select(.status != "ok") | ["  \($sc.baseline): \(.status): \(.reason)", "", "", ""])
    | @tsv' <<< "$RESULTS" |
    awk -F'\t' 'NR == 1 && $1 == "" {next} $2 == "" {sub(/[ \t]+$/, ""); print $1; next} {printf "%-60s %-22s %-22s %s\n", $1, $2, $3, $4}'
}

if [[ -n $REPORT ]]; then
  mkdir -p "$REPORT"
  printf '%s\n' "$RESULTS" > "$REPORT/results.json"
  {
    echo "# tapyard bench --egress, $(jq -r .machine.date <<< "$RESULTS")"
    echo
    echo "$(nproc) CPUs ($(jq -r .machine.cpu <<< "$RESULTS")), kernel $(uname -r), tapyard $(jq -r .machine.tapyard_rev <<< "$RESULTS");"
    echo "$RUNS run$( ((RUNS == 1)) || echo s) x $DUR s, medians [min-max over the runs]; ratios tapyard / baseline"
    echo "of the medians [min-max of the per-run ratios, both paths measured back to back in each run]."
    echo
    echo '```'
    table
    echo '```'
    echo
    echo "Data paths:"
    echo
    awk -F'\t' '{printf "- %s (%s): %s\n", $1, $2, $3}' "$W/paths.tsv"
    echo
    if [[ -s $W/stalls.txt ]]; then
      echo "Stalls (seconds under 5 % of the run's best second):"
      echo
      sed 's/^/- /' "$W/stalls.txt"
      echo
    fi
    echo "Errors: $ERRORS. Raw iperf3 JSON and setup logs: logs/."
  } > "$REPORT/results.md"
  rm -rf "$REPORT/logs"
  cp -r "$LOGS" "$REPORT/logs"
  log "report written to $REPORT"
fi
if ((JSON)); then printf '%s\n' "$RESULTS"; else table; fi
((ERRORS == 0))
