#!/usr/bin/env bash
# Rootless podman (Debian's 4.3, CNI backend) with tapyard-cni, as a
# throwaway unprivileged user with /etc/subuid and /etc/subgid ranges
# (docs/cni.md, "Rootless podman"):
#   - the daemon runs as uid 0 of podman's own user namespace (`podman
#     unshare`), in a network namespace of its own (`unshare --net`), with
#     pasta attached to that namespace as its uplink;
#   - podman runs the CNI plugins (as uid 0 of the same user namespace, in
#     its "rootless-netns"), so tapyard-cni reaches the daemon's socket under
#     $XDG_RUNTIME_DIR and the daemon, being root of the user namespace that
#     owns the containers' network namespaces, makes their TAPs in them;
#   - containers from an imported busybox image ping each other and the
#     gateway, reach a server on the host through the daemon's NAT and
#     pasta (egress), serve the host through `tapyard port publish` and
#     pasta's -t auto, and `podman run --rm` / `podman rm` leave no port.
# Run as root. The user, its lines in /etc/subuid and /etc/subgid, its
# files and every process it ran are removed on exit; /dev/net/tun is set to
# 0666 for the run if it is not already (pasta and slirp4netns open it as
# the user), and its mode restored; the host-side veth is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
me=test-rootless-podman.sh
[ "$(id -u)" -eq 0 ] || { echo "$me: run as root (it makes and drops a user itself)" >&2; exit 1; }
for t in podman pasta slirp4netns newuidmap newgidmap python3 setpriv useradd unshare; do
  command -v "$t" >/dev/null || { echo "$me: $t is needed (scripts/setup.sh --tests installs it)" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "$me: /bin/busybox is needed (busybox-static; scripts/setup.sh --tests)" >&2; exit 1; }

# shellcheck source=scripts/lib/rootless-user.sh
. scripts/lib/rootless-user.sh
rootless_init "tyrp$$" /tmp/tapyard-rpodman.XXXXXX
veth="tyrp$$h"
sup=""
pasta=""
server=""

cleanup() {
  set +e
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  [ -n "$pasta" ] && kill -TERM "$pasta" 2>/dev/null
  if [ -n "$sup" ] && kill -0 "$sup" 2>/dev/null; then
    [ -n "${daemon:-}" ] && kill -TERM "$daemon" 2>/dev/null
    for _ in $(seq 100); do gone "$sup" && break; sleep 0.05; done
  fi
  # What the user still runs: podman's pause process, conmon, containers,
  # pasta, slirp4netns.
  rootless_cleanup
  ip link del "$veth" 2>/dev/null
  # Container storage holds files of the user's subordinate uids: root removes it.
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

quiet() { "$@" >/dev/null; }

cargo build -q -p tapyard-switch --bin tapyard --bin tapyard-cni
rootless_add_user
# Ranges of its own where useradd gave the user none (SUB_UID_COUNT 0).
grep -q "^$user:" /etc/subuid || echo "$user:$((200000 + uid * 65536)):65536" >>/etc/subuid
grep -q "^$user:" /etc/subgid || echo "$user:$((200000 + gid * 65536)):65536" >>/etc/subgid
# podman refuses a runroot longer than 50 characters: $work is short.
run="$work/run"
mkdir -p "$work/plugins" "$work/net.d" "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp"
install -m 755 target/debug/tapyard-cni "$work/plugins/tapyard-cni"

net="rp$$"
subnet=198.18.63.0/24
gw=198.18.63.1
sock="$run/tapyard.sock"
# podman's configuration, as for rootful (docs/cni.md): the CNI backend, the
# plugin and conflist directories, and lower default ulimits (this VM lacks
# CAP_SYS_RESOURCE).
cat >"$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[network]
network_backend = "cni"
cni_plugin_dirs = ["$work/plugins", "/usr/lib/cni"]
network_config_dir = "$work/net.d"
EOF
cat >"$work/net.d/$net.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "$net", "plugins": [
  {"type": "tapyard-cni", "socket": "$sock", "ipam": {"type": "tapyard", "subnet": "$subnet"}}]}
EOF
# A busybox root filesystem, imported as localhost/bb.
cp /bin/busybox "$work/rootfs/bin/"
for a in sh ip ping sleep nc timeout httpd; do ln -s busybox "$work/rootfs/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$work/rootfs/etc/passwd"
echo 'root:x:0:' >"$work/rootfs/etc/group"
tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
# podman locks files in the conflist directory.
chown "$uid:$gid" "$work/net.d"

rootless_user_env CONTAINERS_CONF="$work/containers.conf"
pm_args=(podman --root "$work/home/storage" --runroot "$run/containers" --storage-driver vfs)
pm() { as_user "${pm_args[@]}" "$@"; }
ty() { as_user "$work/bin/tapyard" --socket "$sock" "$@"; }
ports() { ty port ls --json | python3 -c '
import json, sys
for p in json.load(sys.stdin):
    if p["network"] == sys.argv[1]:
        print(p["id"], p["ip"], p["owner"] or "-", p["netns"])' "$net"; }
no_ports() { [ -z "$(ports)" ]; }

echo "rootless podman: user $user (uid $uid), XDG_RUNTIME_DIR=$run"
# (podman warns that "/" is not a shared mount: harmless here.)
pm import --quiet --change 'ENV PATH=/bin' "$work/rootfs.tar" localhost/bb >/dev/null 2>"$work/err" || cat "$work/err"
check "podman import (rootless) made localhost/bb" pm image exists localhost/bb

# 1. The daemon: uid 0 of podman's user namespace, in its own network
#    namespace. `podman unshare` runs its command as a child; unshare(1)
#    execs the daemon, so the daemon is that child.
"${user_env[@]}" "${pm_args[@]}" unshare unshare --net -- "$work/bin/tapyard" daemon --workers 1 --socket "$sock" \
  >"$work/daemon.log" 2>&1 </dev/null &
sup=$!
if wait_for 30 test -S "$sock"; then ok "daemon socket under \$XDG_RUNTIME_DIR: $sock"; else
  fail "no socket at $sock"; cat "$work/daemon.log"; exit 1
fi
daemon=$(ps --ppid "$sup" -o pid= | tr -d ' ' | head -1)
check "daemon (pid $daemon) is uid 0 of podman's user namespace" \
  test "$(pm unshare readlink /proc/self/ns/user)" = "$(ns_of "$daemon" user)"
check "daemon has a network namespace of its own" test "$(ns_of "$daemon" net)" != "$(ns_of self net)"

# 2. pasta, as the user, attached to the daemon's namespaces: its uplink
#    (the same command line as tapyard's own rootless mode, docs/ROOTLESS.md).
"${user_env[@]}" pasta --config-net --quiet --foreground -t auto -u auto --pid "$run/pasta.pid" "$daemon" \
  >"$work/pasta.log" 2>&1 </dev/null &
pasta=$!
check "pasta attached to the daemon's namespace (pid $pasta)" wait_for 10 test -s "$run/pasta.pid"
check "the daemon's namespace has a default route through pasta" \
  wait_for 10 sh -c "nsenter -t $daemon -n ip -4 route show default | grep -q ."

# 3. Containers: one stays up; a second pings it and the gateway.
# busybox httpd serves a file on port 8080 (for the published port, step 5).
a=$(pm run -d --name "a$$" --network "$net" localhost/bb sh -c \
  'mkdir /tmp/www && echo served-by-a >/tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www' 2>"$work/err") || { fail "podman run a: $(cat "$work/err")"; exit 1; }
mapfile -t p < <(ports)
one_port_of_a() { [ "${#p[@]}" -eq 1 ] && [ "$(awk '{ print $3 }' <<<"${p[0]}")" = "$a" ]; }
check "podman run -d: one port on $net, owned by the container (${p[*]:-none})" one_port_of_a
a_ip=$(awk '{ split($2, x, "/"); print x[1] }' <<<"${p[0]:-}")
a_ns=$(awk '{ print $4 }' <<<"${p[0]:-}")
out=$(pm run --rm --cap-add NET_RAW --network "$net" localhost/bb sh -c \
  "ip -o -4 addr show eth0; ip route; ping -c1 -W3 $gw; ping -c1 -W3 $a_ip" 2>&1) || true
check "second container: default route via $gw" grep -q "default via $gw dev eth0" <<<"$out"
check "second container pings the gateway $gw and container a ($a_ip)" \
  test "$(grep -c ' 1 packets received' <<<"$out")" -eq 2
[ "$fails" -eq 0 ] || echo "$out"
check "podman run --rm: its DEL removed the second port" test "$(ports | grep -c .)" -eq 1

# 4. Egress: container a reaches a server on the host (on a veth of ours,
#    198.18.64.1) through tapyard's NAT and pasta.
ip link add "$veth" type veth peer name "${veth}p"
ip addr add 198.18.64.1/32 dev "$veth"
ip link set "$veth" up
# One line, read with nc: busybox-static's wget dies of SIGSEGV here (a
# static glibc resolving without NSS), and nc run by `podman exec` did not
# exit when the server closed, so timeout(1) ends it.
python3 -c "
import socket, sys
s = socket.socket(); s.bind(('198.18.64.1', 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
s.settimeout(30)
c, _ = s.accept(); c.sendall(sys.argv[1].encode() + b'\\n'); c.close()" "egress-$$" >"$work/eport" &
server=$!
wait_for 10 test -s "$work/eport" || fail "the host's test server did not start"
got=$(pm exec "a$$" timeout 5 nc 198.18.64.1 "$(cat "$work/eport")" 2>&1) || true
check "container a reaches the host's 198.18.64.1 through tapyard and pasta: got '$got'" test "$got" = "egress-$$"
kill "$server" 2>/dev/null || true
wait "$server" 2>/dev/null || true
server=""

# 5. A published port: the host's 127.0.0.1:PORT -> pasta (-t auto) ->
#    the port tapyard holds in its namespace -> DNAT -> container a:8080.
pport=$((30000 + $$ % 10000))
while ss -Htln "sport = :$pport" | grep -q .; do pport=$((pport + 1)); done
check "tapyard port publish $net <a's netns> $pport:8080" quiet ty port publish "$net" "$a_ns" "$pport:8080"
fetch() { python3 -c "
import sys, urllib.request
body = urllib.request.urlopen('http://127.0.0.1:%s/' % sys.argv[1], timeout=2).read()
sys.exit(body.strip() != b'served-by-a')" "$pport" 2>/dev/null; }
check "container a's port 8080 reached from the host's 127.0.0.1:$pport" wait_for 15 fetch

# 6. podman rm: its DEL removes the last port.
pm rm -f -t 0 "a$$" >/dev/null
check "podman rm: no port left on $net" wait_for 10 no_ports

# 7. SIGTERM to the daemon stops it (podman unshare exits with it); pasta,
#    which holds the namespace itself, is stopped by whoever started it.
kill -TERM "$daemon"
check "daemon and podman unshare exited after SIGTERM" wait_for 10 gone "$sup"
wait "$sup" 2>/dev/null || true
sup=""
check "socket removed" test ! -e "$sock"
kill -TERM "$pasta"
check "pasta stopped by SIGTERM" wait_for 10 gone "$pasta"
wait "$pasta" 2>/dev/null || true
pasta=""

if [ "$fails" -gt 0 ]; then
  echo "rootless podman: $fails check(s) failed; daemon log:"
  cat "$work/daemon.log"
  exit 1
fi
echo "rootless podman: all checks passed"
