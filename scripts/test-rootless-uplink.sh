#!/usr/bin/env bash
# Rootless start of `tapyard daemon` (docs/ROOTLESS.md), as a throwaway
# unprivileged user with its own XDG_RUNTIME_DIR and no `unshare` around it:
# the daemon makes its own user, network and mount namespaces, pasta is its
# uplink, `tapyard netns add` / `tapyard exec` work inside it, a TCP server
# on the host's 127.0.0.1 is reached through pasta, SIGTERM to the
# supervisor stops everything; a missing pasta and a 0600 /dev/net/tun give
# the plain errors. Run as root. The user, its files and every process it
# ran are removed on exit; /dev/net/tun is set to 0666 for the run if it is
# not already, and its mode restored (the 0600 case uses a private mount
# namespace, never the host's node).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "test-rootless-uplink.sh: run as root (it makes and drops a user itself)" >&2; exit 1; }
for t in pasta slirp4netns python3 setpriv useradd nsenter; do
  command -v "$t" >/dev/null || { echo "test-rootless-uplink.sh: $t is needed" >&2; exit 1; }
done

# shellcheck source=scripts/lib/rootless-user.sh
. scripts/lib/rootless-user.sh
rootless_init "tyrl$$" /tmp/tapyard-rootless-uplink.XXXXXX
sup=""
server=""

cleanup() {
  set +e
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  if [ -n "$sup" ] && kill -0 "$sup" 2>/dev/null; then
    kill -TERM "$sup"
    for _ in $(seq 100); do gone "$sup" && break; sleep 0.05; done
  fi
  rootless_cleanup
  rm -rf "$work"
}
trap cleanup EXIT

trap 'exit 130' INT TERM

quiet() { "$@" >/dev/null; }
# refused DESCRIPTION PATTERN CMD...: CMD must fail with PATTERN in its output.
refused() {
  local what=$1 pattern=$2 out; shift 2
  if out=$("$@" 2>&1); then fail "$what: it succeeded"; return; fi
  if grep -q -- "$pattern" <<<"$out"; then ok "$what: $out"; else fail "$what: $out"; fi
}

cargo build -q -p tapyard-switch --bin tapyard
rootless_add_user
mkdir -p "$work/empty" "$work/cwd"
chown "$uid:$gid" "$work/cwd"

export XDG_RUNTIME_DIR="$work/run"
sock="$work/run/tapyard/tapyard.sock"
# shellcheck disable=SC2119 # no variables beyond the common ones
rootless_user_env
ty() { as_user "$work/bin/tapyard" "$@"; }
# start_daemon LOG ARGS...: `tapyard daemon ARGS` as the user in the
# background; setpriv and env exec, so $sup is the supervisor itself.
start_daemon() {
  local log=$1; shift
  "${user_env[@]}" "$work/bin/tapyard" daemon --workers 1 "$@" >"$log" 2>&1 &
  sup=$!
  daemon_log=$log
}
# stop_daemon: SIGTERM to the supervisor; it must exit 0 within 10 s.
stop_daemon() {
  kill -TERM "$sup"
  if wait_for 10 gone "$sup" && wait "$sup"; then ok "supervisor exited 0 after SIGTERM"; else
    fail "supervisor did not stop cleanly; its log ends:"; tail -n 20 "$daemon_log" >&2
  fi
  sup=""
}
# child_named NAME: the supervisor's child started as NAME (by its
# argv[0]: Debian's pasta re-executes itself as passt.avx2 where it can).
child_named() { ps --ppid "$sup" -o pid=,args= | awk -v c="$1" '{ n = $2; sub(".*/", "", n) } n == c { print $1 }'; }

echo "rootless uplink: user $user (uid $uid), XDG_RUNTIME_DIR=$work/run"

# 1. The daemon, started plainly.
start_daemon "$work/daemon.log"
if wait_for 20 test -S "$sock"; then ok "socket under \$XDG_RUNTIME_DIR/tapyard: $sock"; else
  fail "no socket at $sock"; cat "$work/daemon.log"; exit 1
fi
daemon=$(child_named tapyard)
pasta=$(child_named pasta)
check "daemon (pid $daemon) is a child of the supervisor (pid $sup)" test -n "$daemon"
check "pasta (pid $pasta) is a child of the supervisor" test -n "$pasta"
own_ns() { [ -n "$daemon" ] && [ "$(ns_of "$daemon" user)" != "$(ns_of self user)" ] && [ "$(ns_of "$daemon" net)" != "$(ns_of self net)" ] &&
  [ "$(ns_of "$daemon" mnt)" != "$(ns_of self mnt)" ]; }
check "daemon has its own user, network and mount namespaces" own_ns
map=$(tr -s ' ' <"/proc/${daemon:-0}/uid_map" | paste -sd';')
check "uid 0 in it is uid $uid (uid_map:$map)" test "$(awk 'NR == 1 { print $1, $2 }' "/proc/${daemon:-0}/uid_map")" = "0 $uid"

refused "a second daemon on the same socket" "another tapyard daemon is already running" \
  as_user "$work/bin/tapyard" daemon --workers 1
check "the first daemon's pasta still runs" kill -0 "${pasta:-0}"

# 2. pasta's interface in the daemon's namespace: an address and the default route.
dev=$(nsenter -t "$daemon" -n ip -4 route show default | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1) }' | head -1)
gw=$(nsenter -t "$daemon" -n ip -4 route show default | awk '{ print $3 }' | head -1)
addr=$(nsenter -t "$daemon" -n ip -4 -o addr show dev "${dev:-lo}" | awk '{ print $4 }' | head -1)
if [ -n "$dev" ] && [ "$dev" != lo ] && [ -n "$addr" ] && [ -n "$gw" ]; then
  ok "daemon's namespace: $dev $addr, default via $gw"
else fail "daemon's namespace has no uplink (dev=$dev addr=$addr gw=$gw)"; fi

# 3. netns add / ls / exec, inside the daemon's namespaces.
check "tapyard netns add c1" ty netns add c1
check "tapyard netns ls shows c1" grep -qx c1 <(ty netns ls)
check "c1 is not in the host's /run/netns" test ! -e /run/netns/c1
if links=$(ty exec c1 -- ip -o link) && grep -q ': lo:' <<<"$links" && [ "$(grep -c . <<<"$links")" -eq 1 ]; then
  ok "tapyard exec c1 -- ip link: only lo (a fresh namespace)"
else fail "exec c1 -- ip link: $links"; fi
check "exec runs as uid 0 of the daemon's user namespace" test "$(ty exec c1 -- id -u)" = 0
check "exec keeps the working directory" test "$(cd "$work/cwd" && ty exec c1 -- pwd)" = "$work/cwd"
refused "a second netns add c1" "already exists" ty netns add c1

# 4. The host's 127.0.0.1, reached from the daemon's namespace through pasta
#    (pasta maps the gateway address to the host's loopback: pasta(1) NOTES).
token="tapyard-rootless-$$"
python3 -c "
import socket, sys
s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); c.sendall(sys.argv[1].encode() + b'\n'); c.close()" "$token" >"$work/port" &
server=$!
wait_for 10 test -s "$work/port" || fail "the host's test server did not start"
port=$(cat "$work/port")
got=$(ty exec "pid:$daemon" -- python3 -c "
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(s.makefile().readline().strip())" "$gw" "$port" 2>&1) || true
check "host 127.0.0.1:$port reached from the daemon's netns via $gw (pasta): got '$got'" test "$got" = "$token"
kill "$server" 2>/dev/null || true
wait "$server" 2>/dev/null || true
server=""

# 4b. The other way, what published ports rely on: a port listened on in the
#     daemon's namespace is forwarded from the host by pasta (-t auto, which
#     rescans every second: pasta(1)).
#     Not an ephemeral port: pasta leaves those out of `auto`.
nsport=$((20000 + $$ % 10000))
while ss -Htln "sport = :$nsport" | grep -q .; do nsport=$((nsport + 1)); done
# Not through ty (a function): $! must be the server itself, for kill.
"${user_env[@]}" "$work/bin/tapyard" exec "pid:$daemon" -- python3 -c "
import socket, sys
s = socket.socket(); s.bind(('0.0.0.0', int(sys.argv[2]))); s.listen(1)
print(s.getsockname()[1], flush=True)
s.settimeout(20)
c, _ = s.accept(); c.sendall(sys.argv[1].encode() + b'\n'); c.close()" "$token" "$nsport" >"$work/nsport" 2>&1 &
server=$!
wait_for 10 test -s "$work/nsport" || fail "the namespace's test server did not start: $(cat "$work/nsport")"
fetch() { python3 -c "
import socket, sys
s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2)
line = s.makefile().readline().strip()
sys.exit(line != sys.argv[2])" "$nsport" "$token" 2>/dev/null; }
check "the daemon's netns port $nsport reached from the host's 127.0.0.1 (pasta -t auto)" wait_for 10 fetch
kill "$server" 2>/dev/null || true
wait "$server" 2>/dev/null || true
server=""

# 4c. A TAP port into c1, made by the rootless daemon (named namespaces
#     resolve in its own directory).
check "tapyard network create n1" quiet ty network create n1 --subnet 198.18.77.0/24
check "tapyard connect n1 c1 --ip 198.18.77.5/24" quiet ty connect n1 c1 --ip 198.18.77.5/24
check "c1 has eth0 with 198.18.77.5" grep -q "198.18.77.5/24" <(ty exec c1 -- ip -4 -o addr show dev eth0)

# 4d. Egress and a published port through the daemon's own uplink and pasta
#     (docs/EGRESS.md, "Rootless"): c1 fetches from a server root runs on
#     the host's 127.0.0.1 (c1 -> tapyard -> tapyard0 -> NAT -> pasta ->
#     the host's loopback), and the host's 127.0.0.1 reaches a server in c1
#     through a published port (pasta -t auto -> the held port -> DNAT).
python3 -c "
import socket, sys
s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
s.settimeout(30)
c, _ = s.accept(); c.sendall(sys.argv[1].encode() + b'\n'); c.close()" "$token-egress" >"$work/eport" &
server=$!
wait_for 10 test -s "$work/eport" || fail "the host's egress test server did not start"
eport=$(cat "$work/eport")
got=$(ty exec c1 -- python3 -c "
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(s.makefile().readline().strip())" "$gw" "$eport" 2>&1) || true
check "c1 (a container on n1) reaches the host's 127.0.0.1:$eport through tapyard and pasta: got '$got'" \
  test "$got" = "$token-egress"
kill "$server" 2>/dev/null || true
wait "$server" 2>/dev/null || true
server=""
pport=$((nsport + 1))
while ss -Htln "sport = :$pport" | grep -q .; do pport=$((pport + 1)); done
check "tapyard port publish n1 c1 $pport:8080" quiet ty port publish n1 c1 "$pport:8080"
"${user_env[@]}" "$work/bin/tapyard" exec c1 -- python3 -c "
import socket, sys
s = socket.socket(); s.bind(('0.0.0.0', 8080)); s.listen(4)
print('listening', flush=True)
s.settimeout(30)
while True:
    c, a = s.accept(); c.sendall((sys.argv[1] + ' ' + a[0]).encode() + b'\n'); c.close()" "$token-publish" >"$work/pserver" 2>&1 &
server=$!
wait_for 10 test -s "$work/pserver" || fail "c1's test server did not start: $(cat "$work/pserver")"
pfetch() { python3 -c "
import socket, sys
s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2)
line = s.makefile().readline().strip()
sys.exit(not line.startswith(sys.argv[2] + ' '))" "$pport" "$token-publish" 2>/dev/null; }
check "c1's port 8080 published on the host's 127.0.0.1:$pport (pasta -t auto, then tapyard's DNAT)" wait_for 10 pfetch
check "tapyard port unpublish n1 c1 $pport:8080" quiet ty port unpublish n1 c1 "$pport:8080"
check "unpublished: 127.0.0.1:$pport no longer reaches c1" wait_for 10 sh -c "! python3 -c \"
import socket, sys
s = socket.create_connection(('127.0.0.1', $pport), timeout=2)
sys.exit(0 if s.makefile().readline().startswith('$token-publish') else 1)\" 2>/dev/null"
kill "$server" 2>/dev/null || true
wait "$server" 2>/dev/null || true
server=""

# 5. SIGTERM to the supervisor stops the daemon and pasta, and removes the socket.
stop_daemon
check "pasta (pid $pasta) stopped" gone "$pasta"
check "daemon (pid $daemon) stopped" gone "$daemon"
check "socket removed" test ! -e "$sock"

# 6. The plain errors.
refused "without pasta" \
  "pasta not found: install the passt package (apt-get install passt), or start with --rootless-uplink none" \
  as_user PATH="$work/empty" "$work/bin/tapyard" daemon
mknod "$work/tun600" c 10 200
chmod 600 "$work/tun600"
# A 0600 node bound over /dev/net/tun in a private mount namespace: the
# host's node is not touched.
# shellcheck disable=SC2016 # $1 and $@ are the inner shell's
refused "0600 /dev/net/tun" "/dev/net/tun is mode 0600 (root only).*chmod 0666 /dev/net/tun" \
  unshare --mount --propagation private -- sh -c 'mount --bind "$1" /dev/net/tun && shift && exec "$@"' sh "$work/tun600" \
  "${user_env[@]}" "$work/bin/tapyard" daemon
check "nothing of the user left running" test -z "$(pgrep -u "$user")"

# 7. slirp4netns as the uplink instead.
start_daemon "$work/slirp.log" --rootless-uplink slirp4netns
slirp=""
if wait_for 20 test -S "$sock"; then
  daemon=$(child_named tapyard)
  slirp=$(child_named slirp4netns)
  check "--rootless-uplink slirp4netns: default route via tap0 (slirp4netns pid $slirp)" \
    grep -q "dev tap0" <(nsenter -t "$daemon" -n ip -4 route show default)
else fail "slirp4netns daemon: no socket"; cat "$work/slirp.log"; fi
stop_daemon
check "slirp4netns stopped" gone "${slirp:-0}"

# 8. A supervisor killed outright takes the daemon and pasta with it
#    (PR_SET_PDEATHSIG: they get SIGTERM; the daemon stops cleanly).
start_daemon "$work/kill.log"
if wait_for 20 test -S "$sock"; then
  daemon=$(child_named tapyard)
  pasta=$(child_named pasta)
  kill -KILL "$sup"
  wait "$sup" 2>/dev/null || true
  sup=""
  check "after SIGKILL of the supervisor: the daemon (pid $daemon) stops" wait_for 10 gone "$daemon"
  check "after SIGKILL of the supervisor: pasta (pid $pasta) stops" wait_for 10 gone "$pasta"
  check "after SIGKILL of the supervisor: the socket is removed" wait_for 10 test ! -e "$sock"
else fail "daemon for the SIGKILL check: no socket"; cat "$work/kill.log"; fi

# 9. Without /etc/subuid and /etc/subgid ranges (the user's lines, made by
#    useradd for it, removed): a single-uid map written by the supervisor
#    itself; and --rootless-uplink none (no uplink, lo still up).
sed -i "/^$user:/d" /etc/subuid /etc/subgid
start_daemon "$work/single.log" --rootless-uplink none
if wait_for 20 test -S "$sock"; then
  daemon=$(child_named tapyard)
  check "single-uid map: $(tr -s ' ' <"/proc/$daemon/uid_map")" \
    test "$(awk '{ print $1, $2, $3 }' "/proc/$daemon/uid_map")" = "0 $uid 1"
  check "--rootless-uplink none: no other child than the daemon" test "$(ps --ppid "$sup" -o pid= | wc -l)" -eq 1
  check "--rootless-uplink none: lo up, no default route" \
    test "$(nsenter -t "$daemon" -n ip -o link show up | grep -c .)$(nsenter -t "$daemon" -n ip -4 route show default)" = 1
  check "netns add and exec with a single-uid map" ty netns add c2
  check "exec c2 as uid 0" test "$(ty exec c2 -- id -u)" = 0
else fail "daemon with a single-uid map: no socket"; cat "$work/single.log"; fi
stop_daemon

if [ "$fails" -gt 0 ]; then
  echo "rootless uplink: $fails check(s) failed; daemon log:"
  cat "$work/daemon.log"
  exit 1
fi
echo "rootless uplink: all checks passed"
