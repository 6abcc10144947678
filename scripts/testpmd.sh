#!/usr/bin/env bash
# DPDK dpdk-testpmd as a traffic peer for tests and benchmarks.
#
# Source it:   . scripts/testpmd.sh
#              testpmd_available || skip
#              testpmd_start be vhost  rxonly "$(testpmd_dir)/a.sock" 0,1 "$(testpmd_dir)/be.log"
#              testpmd_start fe virtio txonly "$(testpmd_dir)/a.sock" 1,0 "$(testpmd_dir)/fe.log" \
#                  mac=02:00:00:00:00:01 --txpkts=64 --eth-peer=0,02:00:00:00:00:02
#              sleep 7; testpmd_stop be; testpmd_stop fe   # stop the receiver first
#              testpmd_rx_pps "$(testpmd_dir)/be.log"; testpmd_totals "$(testpmd_dir)/be.log"
# Or run it:   scripts/testpmd.sh ceiling [seconds]   # DPDK's own vhost<->virtio_user rate
#              scripts/testpmd.sh available | install
#
# Needs root (EAL keeps its runtime files in /var/run/dpdk) and, on Debian 12:
#   apt-get install -y dpdk-dev librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23
# dpdk-testpmd is in dpdk-dev (the `dpdk` package only has scripts). The PMDs are
# plugins, not linked into testpmd; EAL loads every .so in its compiled-in plugin
# directory (/usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0) by itself, so no -d and no
# LD_PRELOAD are needed for a system install.
#
# Everything created (sockets you put there, logs, pid files) lives in one directory,
# /tmp/testpmd.<pid> (testpmd_dir). testpmd_cleanup stops only the testpmds started
# here, by pid, and removes that directory and their /var/run/dpdk/<prefix>.
# It runs from an EXIT trap that this file installs if the caller has none; a caller
# with its own EXIT trap must call testpmd_cleanup from it.
#
# The functions do not change the caller's shell options; they are written for set -u.

TESTPMD_APT_PACKAGES="dpdk-dev librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23"
TESTPMD_BIN=${TESTPMD_BIN:-dpdk-testpmd}
TESTPMD_MEM_MB=${TESTPMD_MEM_MB:-256}     # --no-huge -m N: memfd memory, shared with the vhost side
TESTPMD_MBUFS=${TESTPMD_MBUFS:-8192}
# Extra EAL options for the next testpmd_start, split on blanks; e.g. a capture port:
#   TESTPMD_EAL_EXTRA="--vdev net_pcap0,tx_pcap=$(testpmd_dir)/out.pcap" (with MODE io,
#   port 0 -> port 1 writes every frame the first port receives to the pcap file).
TESTPMD_EAL_EXTRA=${TESTPMD_EAL_EXTRA:-}
TESTPMD_DIR=/tmp/testpmd.$$               # created lazily by testpmd_dir
declare -gA _TESTPMD_PID _TESTPMD_PREFIX   # no =(): sourcing twice keeps track

# The directory everything goes into, /tmp/testpmd.<pid>; created on first use.
# The name depends only on $$ (same in subshells), so "$(testpmd_dir)" works too.
testpmd_dir() {
  if [ ! -d "$TESTPMD_DIR" ]; then
    mkdir -m 700 "$TESTPMD_DIR" || return 1
  fi
  if [ ! -O "$TESTPMD_DIR" ] || [ -L "$TESTPMD_DIR" ]; then
    echo "testpmd_dir: $TESTPMD_DIR is not ours" >&2; return 1
  fi
  # Install the cleanup trap only in the main shell (a subshell's EXIT trap would fire
  # when the $(...) ends) and only if nobody else owns EXIT: never clobber a caller's trap.
  if [ "$BASH_SUBSHELL" -eq 0 ] && [ -z "$(trap -p EXIT)" ]; then trap testpmd_cleanup EXIT; fi
  printf '%s\n' "$TESTPMD_DIR"
}

# EAL's runtime directory: /var/run/dpdk for root, $XDG_RUNTIME_DIR/dpdk otherwise.
_testpmd_rundir() {
  if [ "$(id -u)" -eq 0 ]; then echo /var/run/dpdk; else echo "${XDG_RUNTIME_DIR:-/tmp}/dpdk"; fi
}

# The plugin directory EAL autoloads: <dir of librte_eal>/dpdk/pmds-*.
_testpmd_pmd_dir() {
  local bin eal d
  bin=$(command -v "$TESTPMD_BIN") || return 1
  eal=$(ldd "$bin" 2>/dev/null | awk '$1 ~ /^librte_eal\.so/ {print $3; exit}')
  [ -n "$eal" ] || return 1
  for d in "$(dirname "$eal")"/dpdk/pmds-*; do
    [ -d "$d" ] && { echo "$d"; return 0; }
  done
  return 1
}

# 0 if dpdk-testpmd runs here with the vhost, virtio and ring-mempool PMDs.
# (Checks files and linkage only; starting a testpmd costs ~2 s and 256 MiB.)
testpmd_available() {
  local bin pmd lib
  bin=$(command -v "$TESTPMD_BIN" 2>/dev/null) || return 1
  if ldd "$bin" 2>/dev/null | grep -q 'not found'; then return 1; fi
  # Plugins given by LD_PRELOAD (an unpacked, not installed DPDK) count too.
  for lib in librte_net_vhost librte_net_virtio librte_mempool_ring; do
    case ":${LD_PRELOAD:-}:" in *"/$lib.so"*) continue ;; esac
    pmd=$(_testpmd_pmd_dir) || return 1
    compgen -G "$pmd/$lib.so*" >/dev/null || return 1
  done
  return 0
}

# Installs the packages (Debian 12, root). Pulls ~225 packages (rdma-core, udev, ...).
testpmd_install() {
  # shellcheck disable=SC2086 # word splitting of the package list is intended
  DEBIAN_FRONTEND=noninteractive apt-get install -y $TESTPMD_APT_PACKAGES
}

# testpmd_start NAME ROLE MODE SOCKET LCORES LOGFILE [DEVARGS [TESTPMD_ARG...]]
#   ROLE    virtio: frontend, --vdev net_virtio_user0,path=SOCKET[,DEVARGS]
#                   (DEVARGS server=1 makes it create SOCKET; mac=02:.. sets its src MAC)
#           vhost:  backend, --vdev net_vhost0,iface=SOCKET,queues=1,client=0[,DEVARGS]
#                   (DEVARGS client=1 makes it connect to SOCKET instead of creating it)
#   MODE    testpmd --forward-mode: txonly rxonly io mac macswap icmpecho ...
#   LCORES  comma list, first one is the main lcore (it only prints stats), the rest
#           busy-poll; e.g. 0,1 and 1,0 put two testpmds on different cores.
#   TESTPMD_ARG  extra application options, e.g. --txpkts=64 --eth-peer=0,MAC
# Returns once forwarding has started (or 1, with the log tail on stderr).
testpmd_start() {
  if [ $# -lt 6 ]; then
    echo "usage: testpmd_start NAME ROLE MODE SOCKET LCORES LOGFILE [DEVARGS [ARG...]]" >&2
    return 2
  fi
  local name=$1 role=$2 mode=$3 sock=$4 lcores=$5 log=$6 devargs=${7:-} vdev prefix pid i
  shift $(($# > 6 ? 7 : 6))
  if [ -n "${_TESTPMD_PID[$name]:-}" ]; then echo "testpmd_start: $name already running" >&2; return 1; fi
  testpmd_dir >/dev/null || return 1
  case $role in
    virtio) vdev="net_virtio_user0,path=$sock" ;;
    vhost)
      vdev="net_vhost0,iface=$sock,queues=1"
      case ",$devargs," in *,client=*) ;; *) vdev+=",client=0" ;; esac ;;
    *) echo "testpmd_start: ROLE must be virtio or vhost, not '$role'" >&2; return 2 ;;
  esac
  [ -n "$devargs" ] && vdev+=",$devargs"
  # Unique per script instance: two testpmds with one prefix share (and corrupt) EAL state.
  prefix="$name-$$"
  # stdin from /dev/null: with --stats-period testpmd never reads it and runs until SIGINT.
  # shellcheck disable=SC2086 # TESTPMD_EAL_EXTRA is a blank-separated option list
  "$TESTPMD_BIN" -l "$lcores" --main-lcore "${lcores%%,*}" --no-huge -m "$TESTPMD_MEM_MB" \
      --no-pci --file-prefix "$prefix" --vdev "$vdev" $TESTPMD_EAL_EXTRA \
      -- --total-num-mbufs="$TESTPMD_MBUFS" --forward-mode="$mode" -a --stats-period 1 "$@" \
      </dev/null >"$log" 2>&1 &
  pid=$!
  _TESTPMD_PID[$name]=$pid
  _TESTPMD_PREFIX[$name]=$prefix
  echo "$pid $prefix" >"$TESTPMD_DIR/$name.pid"
  # EAL init of 256 MiB without hugepages takes ~1-2 s; wait for forwarding to start.
  for ((i = 0; i < 300; i++)); do
    if grep -aq 'packet forwarding - ports=' "$log" 2>/dev/null; then
      if grep -aq 'packet forwarding - ports=0' "$log"; then break; fi  # vdev probe failed
      return 0
    fi
    _testpmd_alive "$pid" || break
    sleep 0.1
  done
  echo "testpmd_start: $name did not start forwarding; last lines of $log:" >&2
  tail -n 15 "$log" >&2
  testpmd_stop "$name"
  return 1
}

# True while PID exists and is not a zombie.
_testpmd_alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# testpmd_stop NAME: SIGINT (testpmd then prints its totals), SIGKILL after 5 s.
testpmd_stop() {
  local name=$1 pid=${_TESTPMD_PID[$1]:-} prefix=${_TESTPMD_PREFIX[$1]:-} i
  if [ -z "$pid" ] && [ -r "$TESTPMD_DIR/$name.pid" ]; then
    read -r pid prefix <"$TESTPMD_DIR/$name.pid"   # started from a subshell
  fi
  [ -n "$pid" ] || return 0
  # Signal only if the pid is still our testpmd (its command line holds our unique prefix).
  if _testpmd_alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--file-prefix $prefix "; then
    kill -INT "$pid" 2>/dev/null
    for ((i = 0; i < 50; i++)); do _testpmd_alive "$pid" || break; sleep 0.1; done
    if _testpmd_alive "$pid"; then kill -KILL "$pid" 2>/dev/null; fi
  fi
  wait "$pid" 2>/dev/null
  if [ -n "$prefix" ]; then rm -rf "$(_testpmd_rundir)/${prefix:?}"; fi
  rm -f "$TESTPMD_DIR/$name.pid"
  unset "_TESTPMD_PID[$name]" "_TESTPMD_PREFIX[$name]"
  return 0
}

# Stops every testpmd started here and removes the temp dir.
testpmd_cleanup() {
  local f name
  for name in "${!_TESTPMD_PID[@]}"; do testpmd_stop "$name"; done
  if [ -d "$TESTPMD_DIR" ]; then
    for f in "$TESTPMD_DIR"/*.pid; do   # ones started in subshells
      [ -e "$f" ] || continue
      name=${f##*/}; testpmd_stop "${name%.pid}"
    done
    rm -rf "$TESTPMD_DIR"
  fi
}

# Number of Rx-pps samples for PORT so far (to skip those from before the sender started).
testpmd_samples() {
  awk -v port="${2:-0}" '
    /NIC statistics for port/ { for (i = 1; i < NF; i++) if ($i == "port") p = $(i + 1) }
    /Rx-pps:/ && p == port { n++ }
    END { print n + 0 }' "$1"
}

# testpmd_rx_pps LOGFILE [SKIP=2] [PORT=0]: median of the 1-s Rx-pps samples of PORT
# after the first SKIP (ramp-up). Prints an integer; 0 and status 1 if no samples.
# Samples after the sender stops count too: stop the receiver before the sender.
testpmd_rx_pps() {
  local skip=${2:-2}
  awk -v port="${3:-0}" -v skip="$skip" '
    /NIC statistics for port/ { for (i = 1; i < NF; i++) if ($i == "port") p = $(i + 1) }
    /Rx-pps:/ && p == port && ++n > skip { print $2 }' "$1" |
    sort -n |
    awk '{ v[NR] = $1 }
         END { if (NR == 0) { print 0; exit 1 }
               if (NR % 2) print v[(NR + 1) / 2]
               else printf "%d\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# testpmd_totals LOGFILE: the totals testpmd prints when stopped by SIGINT, as
#   rx_packets=N rx_dropped=N tx_packets=N tx_dropped=N
# (sums over all ports; status 1 if absent, e.g. after SIGKILL).
testpmd_totals() {
  awk '
    /Accumulated forward statistics for all ports/ { acc = 1; next }
    acc && /RX-packets:/ { rx = $2; rxd = $4 }
    acc && /TX-packets:/ { tx = $2; txd = $4; found = 1; acc = 0 }
    END { if (!found) exit 1
          printf "rx_packets=%s rx_dropped=%s tx_packets=%s tx_dropped=%s\n", rx, rxd, tx, txd }' "$1"
}

# Lines in a testpmd log that mean the port did not really work, although testpmd ran.
testpmd_log_errors() {
  grep -aE 'Too many memory regions|Failed to start|probe failed|Failed to (connect|setup)|EAL: Error|Cause:' "$1"
}

# ceiling SECONDS: DPDK vhost backend (rxonly) <- DPDK virtio_user frontend (txonly, 64 B),
# each busy-polling its own core. Prints ceiling_pps=N (median receiver Rx-pps).
testpmd_ceiling() {
  local secs=${1:-5} dir sock skip pps i
  dir=$(testpmd_dir) || return 1
  # Two busy-polling testpmds need both cores to themselves; other load cuts Mpps a lot.
  echo "ceiling: loadavg before $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  sock=$dir/ceiling.sock
  # Backend first (it creates the socket): main lcore 0, forwarding lcore 1.
  testpmd_start ceil-be vhost rxonly "$sock" 0,1 "$dir/ceil-be.log" || return 1
  # Frontend: main lcore 1, forwarding lcore 0.
  testpmd_start ceil-fe virtio txonly "$sock" 1,0 "$dir/ceil-fe.log" \
      mac=02:00:00:00:00:01 --txpkts=64 --eth-peer=0,02:00:00:00:00:02 || return 1
  # The backend printed samples before the frontend came up: skip them plus 2 ramp-up ones.
  skip=$(($(testpmd_samples "$dir/ceil-be.log") + 2))
  # Wait for SECONDS samples after those. Not a plain sleep: each main lcore (which prints
  # the stats) shares its core with the other testpmd's busy-polling lcore, so samples
  # come late and irregularly. Their rates are still right: testpmd divides by the TSC
  # time since the previous sample.
  for ((i = 0; i < 2 * (3 * secs + 10); i++)); do
    [ "$(testpmd_samples "$dir/ceil-be.log")" -ge $((skip + secs)) ] && break
    sleep 0.5
  done
  testpmd_stop ceil-be   # receiver first, so no idle samples at the end
  testpmd_stop ceil-fe
  if testpmd_log_errors "$dir/ceil-fe.log" >&2 || testpmd_log_errors "$dir/ceil-be.log" >&2; then
    return 1
  fi
  pps=$(testpmd_rx_pps "$dir/ceil-be.log" "$skip") || { echo "ceiling: no samples" >&2; return 1; }
  echo "ceiling: backend $(testpmd_totals "$dir/ceil-be.log"); frontend $(testpmd_totals "$dir/ceil-fe.log")" >&2
  echo "ceiling_pps=$pps"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -u
  trap testpmd_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  case ${1:-} in
    ceiling)
      testpmd_available || { echo "testpmd.sh: dpdk-testpmd or its PMDs missing; apt-get install -y $TESTPMD_APT_PACKAGES" >&2; exit 1; }
      testpmd_ceiling "${2:-5}" ;;
    available) testpmd_available ;;
    install) testpmd_install ;;
    *) echo "usage: $0 ceiling [seconds] | available | install" >&2; exit 2 ;;
  esac
fi
