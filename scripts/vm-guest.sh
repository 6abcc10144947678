#!/bin/bash
# vm-guest.sh: a real QEMU guest (Linux virtio_net driver, TCG) on a tapyard vhost-user port.
#
#   sudo scripts/vm-guest.sh
#
# Starts its own tapyard daemon, creates a network with a subnet (DHCP on the gateway), a
# container namespace on it (TAP port, fixed address .2) and a vhost-user port that tapyard
# serves (tapyard listens, QEMU connects as the client). The guest is the Debian kernel +
# a busybox initramfs: it loads virtio_net, runs udhcpc against tapyard's DHCP server, pings
# the container, and stays up until the container has pinged it back (or tapyard.wait s).
# Checks: guest markers (LEASE, PING OK, PINGED), the container -> guest ping, the guest's MAC
# in `tapyard lease ls --json`, and the features QEMU's driver negotiated (`port ls --json`).
# Exit 0 only if all of them pass.
#
# Nothing is installed: QEMU 7.2, the kernel and busybox-static are `apt-get download`ed and
# unpacked into $TAPYARD_CACHE (default /var/cache/tapyard-vm), kept for later runs.
# (`apt-get install qemu-system-x86` would remove the preinstalled qemu-utils 10 on the dev
# machines; on a plain machine it would be fine, but the unpacked copy works everywhere.)
# Under TCG with Debian's QEMU 7.2, vhost-user + MSI-X segfaults QEMU: the NIC uses vectors=0.
#
# Environment: TAPYARD (binary; default: `cargo build --release` and use its output, honouring
# CARGO_TARGET_DIR), TAPYARD_CACHE, TIMEOUT (guest wall-clock limit, s; default 300),
# SUBNET (default 10.90.0.0/24), RUST_LOG (daemon log level; default info),
# KEEP_LOGS=1 (keep the logs also on success; on failure they are always kept).
set -u
T_START=$(date +%s.%N)
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PFX=tyvm$$
CACHE=${TAPYARD_CACHE:-/var/cache/tapyard-vm}
TIMEOUT=${TIMEOUT:-300}
SUBNET=${SUBNET:-10.90.0.0/24}
NET3=${SUBNET%.*}                        # 10.90.0
CIP=$NET3.2                              # the container's address
GUEST_WAIT=${GUEST_WAIT:-90}             # how long the guest waits to be pinged, s
MAC=$(printf '52:54:00:9a:%02x:%02x' $((($$ >> 8) & 255)) $(($$ & 255)))
NET=${PFX}n
NS=${PFX}c
DIR=$(mktemp -d "/tmp/$PFX.XXXXXX")
LOGS=${TAPYARD_VM_LOGS:-/tmp/tapyard-vm-logs}/$PFX
CTL=$DIR/ctl.sock
SOCK=$DIR/vhost.sock
QPID=
DPID=
FAIL=()

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
log() { echo "[$(since "$T_START")s] $*"; }
fail() { FAIL+=("$*"); log "FAIL: $*"; }

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local rc=$?
  if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then
    kill "$QPID" 2>/dev/null
    for _ in $(seq 20); do kill -0 "$QPID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$QPID" 2>/dev/null
  fi
  if [ -n "$DPID" ] && kill -0 "$DPID" 2>/dev/null; then
    kill "$DPID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$DPID" 2>/dev/null
  fi
  ip netns del "$NS" 2>/dev/null
  if [ ${#FAIL[@]} -gt 0 ] || [ "${KEEP_LOGS:-0}" = 1 ] || [ "$rc" != 0 ]; then
    mkdir -p "$LOGS" && cp -a "$DIR"/*.log "$DIR"/*.json "$LOGS"/ 2>/dev/null
    echo "logs kept in $LOGS"
  fi
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || { echo "run as root (namespaces, TAP devices)"; exit 2; }

# ---------------------------------------------------------------- downloads (cached)
mkdir -p "$CACHE/debs"
fetch() {  # apt-get download PKG... into the cache (apt-get update once if it fails)
  (cd "$CACHE/debs" && apt-get download "$@" >>"$CACHE/apt.log" 2>&1) && return 0
  apt-get update >>"$CACHE/apt.log" 2>&1
  (cd "$CACHE/debs" && apt-get download "$@" >>"$CACHE/apt.log" 2>&1)
}
unpack() {  # DEST DEB-GLOB...
  local dest=$1; shift
  rm -rf "$dest"; mkdir -p "$dest"
  for f in "$@"; do dpkg -x "$f" "$dest" || return 1; done
  touch "$dest/.complete"
}
T_DL=$(now)
qemu_pkgs() {  # qemu-system-x86 and its dependencies (transitively) that are not installed here
  local want=qemu-system-x86 seen="" p
  while [ -n "$want" ]; do
    seen="$seen $want"
    # shellcheck disable=SC2086  # $want is a list of package names, split on purpose
    want=$(for p in $(apt-cache depends $want 2>/dev/null | awk '$1 == "Depends:" {print $2}' | grep -v '^<' | sort -u); do
      case " $seen " in *" $p "*) continue ;; esac
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || echo "$p"
    done | sort -u)
  done
  # $want lists are newline-separated: one line of names, for read -a.
  seen=${seen//$'\n'/ }
  echo "${seen# }"
}
if [ ! -e "$CACHE/qemu/.complete" ]; then
  read -ra PKGS <<<"$(qemu_pkgs)"
  [ "${#PKGS[@]}" -gt 1 ] || { apt-get update >>"$CACHE/apt.log" 2>&1; read -ra PKGS <<<"$(qemu_pkgs)"; }
  log "fetching QEMU 7.2: ${PKGS[*]} (.debs, unpacked into $CACHE/qemu)"
  fetch "${PKGS[@]}" || { echo "apt-get download of QEMU failed; see $CACHE/apt.log"; exit 2; }
  (cd "$CACHE/debs" && debs=() && for p in "${PKGS[@]}"; do debs+=("${p}"_*.deb); done && unpack "$CACHE/qemu" "${debs[@]}") || exit 2
fi
MISSING=$(LD_LIBRARY_PATH=$CACHE/qemu/usr/lib/x86_64-linux-gnu ldd "$CACHE/qemu/usr/bin/qemu-system-x86_64" | grep 'not found')
[ -z "$MISSING" ] || { echo "unpacked QEMU misses libraries (cache reset; rerun):"; echo "$MISSING"; rm -f "$CACHE/qemu/.complete"; exit 2; }
if [ ! -e "$CACHE/kern/.complete" ]; then
  KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [ -n "$KPKG" ] || { apt-get update >>"$CACHE/apt.log" 2>&1
    KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'); }
  log "fetching kernel $KPKG (unpacked into $CACHE/kern)"
  fetch "$KPKG" || { echo "apt-get download $KPKG failed; see $CACHE/apt.log"; exit 2; }
  (cd "$CACHE/debs" && unpack "$CACHE/kern" "$KPKG"_*.deb) || exit 2
fi
if [ ! -e "$CACHE/bbs/.complete" ]; then
  log "fetching busybox-static (unpacked into $CACHE/bbs)"
  fetch busybox-static || { echo "apt-get download busybox-static failed"; exit 2; }
  (cd "$CACHE/debs" && unpack "$CACHE/bbs" busybox-static_*.deb) || exit 2
fi
QEMU=$CACHE/qemu/usr/bin/qemu-system-x86_64
QLD=$CACHE/qemu/usr/lib/x86_64-linux-gnu
KVER=$(find "$CACHE/kern/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort | head -1)
KERNEL=$CACHE/kern/boot/vmlinuz-$KVER
BB=$CACHE/bbs/bin/busybox
log "guest parts ready in $(since "$T_DL")s: QEMU $(LD_LIBRARY_PATH=$QLD $QEMU --version | awk 'NR==1{print $4}'), kernel $KVER"

# ---------------------------------------------------------------- tapyard binary
if [ -z "${TAPYARD:-}" ]; then
  T_B=$(now)
  (cd "$REPO" && cargo build --release -q --bin tapyard) || { echo "cargo build failed"; exit 2; }
  TAPYARD=${CARGO_TARGET_DIR:-$REPO/target}/release/tapyard
  log "tapyard built in $(since "$T_B")s: $TAPYARD"
fi
ty() { "$TAPYARD" --socket "$CTL" "$@"; }

# ---------------------------------------------------------------- initramfs
G=$DIR/initrd
mkdir -p "$G"/{bin,etc,lib/modules,proc,sys,dev,tmp}
cp "$BB" "$G/bin/busybox"
M=$CACHE/kern/lib/modules/$KVER/kernel
cp "$M"/drivers/virtio/{virtio,virtio_ring,virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio_pci}.ko \
   "$M"/net/core/failover.ko "$M"/drivers/net/net_failover.ko "$M"/drivers/net/virtio_net.ko "$G/lib/modules/" || exit 2
cat > "$G/etc/udhcpc.script" <<'EOF'
#!/bin/sh
# busybox udhcpc hook: $1 = deconfig|bound|renew|nak; env: interface ip mask router
case "$1" in
  deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip route add default via "$r" dev "$interface" && break; done
    echo "$ip" > /tmp/lease.ip; echo "${mask:-?}" > /tmp/lease.mask; echo "${router:-none}" > /tmp/lease.router
    echo "${serverid:-?} ${lease:-?}" > /tmp/lease.server ;;
esac
exit 0
EOF
cat > "$G/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
say() { echo "TAPYARD-GUEST: $*"; }
arg() { sed -n "s/.*tapyard\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
up() { cut -d' ' -f1 /proc/uptime; }
inechos() { awk '/^Icmp:/{ if (!c) { for (i = 1; i <= NF; i++) if ($i == "InEchos") c = i } else print $c }' /proc/net/snmp; }
PEER=$(arg peer); WAIT=$(arg wait)
say "init, kernel $(uname -r), uptime $(up)s"
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net; do
  insmod /lib/modules/$m.ko || say "insmod $m failed"
done
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth0 ] && break; sleep 0.2; done
ip link set lo up; ip link set eth0 up
say "eth0 $(cat /sys/class/net/eth0/address) mtu $(cat /sys/class/net/eth0/mtu) virtio features $(cat /sys/class/net/eth0/device/features 2>/dev/null)"
E0=$(inechos)   # echo requests seen before any traffic: the container's may arrive during our own ping
T0=$(up)
if udhcpc -i eth0 -n -q -t 10 -T 2 -s /etc/udhcpc.script; then
  IP=$(cat /tmp/lease.ip)
  say "LEASE $IP/$(cat /tmp/lease.mask) router $(cat /tmp/lease.router) server+secs $(cat /tmp/lease.server) after $(awk -v a=$T0 -v b=$(up) 'BEGIN{printf "%.2f", b-a}')s"
  ip -o -4 addr show dev eth0; ip route
  if ping -c 5 -W 2 "$PEER" > /tmp/ping.out 2>&1; then
    cat /tmp/ping.out; say "PING OK $PEER $(grep -o 'round-trip.*' /tmp/ping.out)"
  else
    cat /tmp/ping.out; say "PING FAILED $PEER"
  fi
  say "waiting up to ${WAIT}s to be pinged"
  n=0; i=0
  while [ $i -lt $((WAIT * 5)) ]; do
    n=$(( $(inechos) - E0 )); [ $n -ge 3 ] && break
    sleep 0.2; i=$((i + 1))
  done
  [ $n -ge 3 ] && say "PINGED $n echo requests answered" || say "NOT PINGED ($n echo requests)"
else
  say "NO LEASE (udhcpc failed after $(awk -v a=$T0 -v b=$(up) 'BEGIN{printf "%.2f", b-a}')s)"
fi
S=/sys/class/net/eth0/statistics
say "eth0 counters rx $(cat $S/rx_packets) pkts / $(cat $S/rx_bytes) B, tx $(cat $S/tx_packets) pkts / $(cat $S/tx_bytes) B, rx_dropped $(cat $S/rx_dropped) tx_dropped $(cat $S/tx_dropped)"
say "DONE"
poweroff -f
EOF
chmod +x "$G/init" "$G/etc/udhcpc.script"
(cd "$G" && find . | "$BB" cpio -o -H newc 2>/dev/null | gzip -1 > "$DIR/initrd.gz") || exit 2

# ---------------------------------------------------------------- tapyard: daemon, network, ports
RUST_LOG=${RUST_LOG:-info} "$TAPYARD" --socket "$CTL" daemon --uplink none --workers 2 --state-dir "$DIR/state" > "$DIR/daemon.log" 2>&1 &
DPID=$!
for _ in $(seq 100); do ty network ls >/dev/null 2>&1 && break; sleep 0.1; done
ty network ls >/dev/null 2>&1 || { echo "daemon did not start"; cat "$DIR/daemon.log"; exit 1; }
ty network create "$NET" --subnet "$SUBNET" >/dev/null || exit 1
ip netns add "$NS" || exit 1
ty connect "$NET" "$NS" --ip "$CIP/${SUBNET#*/}" >/dev/null || exit 1
ty connect "$NET" --vhost-user "$SOCK" --server --mac "$MAC" --json > "$DIR/connect.json" || exit 1
log "daemon pid $DPID, network $NET ($SUBNET), container $NS ($CIP), vhost-user port $SOCK (guest MAC $MAC)"

# ---------------------------------------------------------------- the guest
T_Q=$(now)
LD_LIBRARY_PATH=$QLD "$QEMU" -L "$CACHE/qemu/usr/share/qemu" -L "$CACHE/qemu/usr/share/seabios" \
  -machine pc,accel=tcg,memory-backend=mem -cpu max -smp 1 -m 256 \
  -object memory-backend-memfd,id=mem,size=256M,share=on \
  -chardev socket,id=chr0,path="$SOCK" \
  -netdev vhost-user,id=net0,chardev=chr0 \
  -device virtio-net-pci,netdev=net0,mac="$MAC",romfile=,vectors=0 \
  -kernel "$KERNEL" -initrd "$DIR/initrd.gz" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 tapyard.peer=$CIP tapyard.wait=$GUEST_WAIT" \
  -trace vhost_user_read -trace vhost_user_write -trace vhost_user_event \
  -display none -no-reboot -nodefaults -serial file:"$DIR/console.log" < /dev/null > "$DIR/qemu.log" 2>&1 &
QPID=$!
log "QEMU pid $QPID started (TCG)"

marker() { grep -aE "TAPYARD-GUEST: ($1)" "$DIR/console.log" 2>/dev/null | head -1; }
wait_for() {  # PATTERN: until the guest prints it, QEMU exits, or TIMEOUT
  while kill -0 "$QPID" 2>/dev/null; do
    [ -n "$(marker "$1")" ] && return 0
    [ "$(since "$T_Q" | cut -d. -f1)" -ge "$TIMEOUT" ] && return 1
    sleep 0.2
  done
  [ -n "$(marker "$1")" ]
}

GIP=
if wait_for 'LEASE|NO LEASE'; then
  L=$(marker 'LEASE [0-9]')
  if [ -n "$L" ]; then
    GIP=$(echo "$L" | awk '{print $3}' | cut -d/ -f1)
    log "guest: $L"
    log "guest lease after $(since "$T_Q")s of QEMU"
  fi
fi
[ -n "$GIP" ] || fail "the guest got no lease"

if [ -n "$GIP" ]; then
  # container -> guest while the guest is up (it waits until it has answered 3 echo requests)
  if ip netns exec "$NS" ping -c 3 -W 2 -i 0.5 "$GIP" > "$DIR/ns-ping.log" 2>&1; then
    log "container -> guest: $(grep -E 'packets transmitted' "$DIR/ns-ping.log"); $(grep -E '^rtt' "$DIR/ns-ping.log")"
  else
    cat "$DIR/ns-ping.log"; fail "container $CIP cannot ping the guest $GIP"
  fi
  ty port ls --json > "$DIR/ports-up.json"
  ty lease ls --json > "$DIR/leases.json"
fi

wait_for 'DONE' || fail "the guest did not finish within ${TIMEOUT}s"
for _ in $(seq 50); do kill -0 "$QPID" 2>/dev/null || break; sleep 0.1; done
T_GUEST=$(since "$T_Q")
kill -0 "$QPID" 2>/dev/null || { wait "$QPID"; log "QEMU exited rc=$? after ${T_GUEST}s"; QPID=; }
ty port ls --json > "$DIR/ports-end.json"

echo "---- guest console (TAPYARD-GUEST lines and ping output)"
grep -aE 'TAPYARD-GUEST|udhcpc|bytes from|packet loss|round-trip' "$DIR/console.log"
echo "----"
[ -n "$(marker 'PING OK')" ] || fail "guest -> container ping failed"
[ -n "$GIP" ] && { [ -n "$(marker 'PINGED [0-9]')" ] || fail "the guest did not see the container's echo requests"; }

# lease table: the guest's MAC with the address it printed
if [ -n "$GIP" ]; then
  python3 - "$DIR/leases.json" "$MAC" "$GIP" <<'EOF' || fail "tapyard lease ls does not show $MAC -> $GIP"
import json, sys
path, mac, ip = sys.argv[1:]
data = json.load(open(path))
def walk(o):
    if isinstance(o, dict):
        yield o
        for v in o.values(): yield from walk(v)
    elif isinstance(o, list):
        for v in o: yield from walk(v)
hits = [d for d in walk(data) if any(isinstance(v, str) and v.lower() == mac for v in d.values())]
print("tapyard lease ls:", json.dumps(hits))
sys.exit(0 if any(any(isinstance(v, str) and v.split("/")[0] == ip for v in d.values()) for d in hits) else 1)
EOF
fi

# negotiated features and counters of the vhost-user port
python3 - "$DIR/ports-up.json" "$DIR/ports-end.json" "$SOCK" <<'EOF' || fail "port ls --json: no connected vhost-user port with features"
import json, os, sys
up, end, sock = sys.argv[1:]
def vport(path):
    if not os.path.exists(path): return None
    data = json.load(open(path))
    ports = data if isinstance(data, list) else data.get("ports", [])
    for p in ports:
        if isinstance(p, dict) and p.get("vhost"): return p
ok = False
for label, path in (("while the guest was up", up), ("after the guest powered off", end)):
    p = vport(path)
    if p is None: continue
    v = p["vhost"]
    print(f"vhost-user port {label}: {json.dumps(v, sort_keys=True)}")
    print(f"  port counters: {json.dumps({k: x for k, x in p.items() if k != 'vhost'}, sort_keys=True)}")
    if label.startswith("while") and v.get("connected") and v.get("features"):
        ok = True
sys.exit(0 if ok else 1)
EOF

echo "timings: total $(since "$T_START")s, guest (QEMU start to exit) ${T_GUEST}s"
if [ ${#FAIL[@]} -gt 0 ]; then
  echo "---- evidence"
  echo "console:"; cat "$DIR/console.log"
  echo "qemu (vhost-user messages it wrote/read, in order):"
  awk 'BEGIN { split("GET_FEATURES SET_FEATURES SET_OWNER RESET_OWNER SET_MEM_TABLE SET_LOG_BASE SET_LOG_FD SET_VRING_NUM SET_VRING_ADDR SET_VRING_BASE GET_VRING_BASE SET_VRING_KICK SET_VRING_CALL SET_VRING_ERR GET_PROTOCOL_FEATURES SET_PROTOCOL_FEATURES GET_QUEUE_NUM SET_VRING_ENABLE SEND_RARP NET_SET_MTU SET_SLAVE_REQ_FD IOTLB_MSG SET_VRING_ENDIAN GET_CONFIG SET_CONFIG CREATE_CRYPTO_SESSION CLOSE_CRYPTO_SESSION POSTCOPY_ADVISE POSTCOPY_LISTEN POSTCOPY_END GET_INFLIGHT_FD SET_INFLIGHT_FD GPU_SET_SOCKET RESET_DEVICE VRING_KICK GET_MAX_MEM_SLOTS ADD_MEM_REG REM_MEM_REG SET_STATUS GET_STATUS", n, " ") }
       /vhost_user_(read|write)/ { r = ""; if (match($0, /req:[0-9]+/)) r = n[substr($0, RSTART + 4, RLENGTH - 4) + 0]; print "  " $0 (r ? "  = " r : ""); next }
       { print "  " $0 }' "$DIR/qemu.log"
  echo "port ls --json:"; cat "$DIR/ports-end.json"
  echo "daemon log (tail):"; tail -50 "$DIR/daemon.log"
  echo "FAILED: ${FAIL[*]}"
  exit 1
fi
echo "PASS: guest $MAC leased $GIP from tapyard, pinged $CIP, and was pinged back"
exit 0
