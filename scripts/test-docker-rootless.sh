#!/usr/bin/env bash
# Docker's own rootless mode with tapyard as its network and IPAM driver
# (docs/docker.md, "Rootless Docker"), as a throwaway unprivileged user with
# /etc/subuid and /etc/subgid ranges: Debian's dockerd-rootless.sh starts
# dockerd inside rootlesskit's user, network and mount namespaces (slirp4netns
# as their uplink); `tapyard daemon --docker-plugin` is started in those same
# namespaces with nsenter, so the TAPs it makes on Join are in dockerd's
# network namespace and its plugin socket is in the /run dockerd sees
# (/run/docker/plugins, hard-coded in Docker 20.10's pkg/plugins, is a
# tmpfs of rootlesskit's --copy-up=/run there). Two containers on a tapyard
# network ping each other and the gateway, one reaches slirp4netns's gateway
# through tapyard's uplink, a published port is reached from the host's
# 127.0.0.1 (rootlessctl add-ports), and `docker rm` / `docker network rm`
# leave no port behind. Run as root. The user, its files and every process
# it ran are removed on exit; /dev/net/tun is set to 0666 for the run if it
# is not already, and its mode restored. Nothing of the host's dockerd or
# /etc/docker is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "test-docker-rootless.sh: run as root (it makes and drops a user itself)" >&2; exit 1; }

rootless_sh=/usr/share/docker.io/contrib/dockerd-rootless.sh
missing=()
for f in /usr/sbin/dockerd /usr/bin/docker "$rootless_sh"; do [ -x "$f" ] || missing+=("docker.io ($f)"); done
for t in rootlesskit rootlessctl; do command -v "$t" >/dev/null || missing+=("rootlesskit ($t)"); done
command -v slirp4netns >/dev/null || missing+=(slirp4netns)
command -v newuidmap >/dev/null || missing+=("uidmap (newuidmap)")
[ -x /bin/busybox ] || missing+=("busybox-static (the image)")
for t in setpriv useradd nsenter curl; do command -v "$t" >/dev/null || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test-docker-rootless.sh: missing: ${missing[*]} (scripts/setup.sh --tests installs them)" >&2
  exit 1
fi

# shellcheck source=scripts/lib/rootless-user.sh
. scripts/lib/rootless-user.sh
rootless_init "tyrd$$" /tmp/tapyard-docker-rootless.XXXXXX
run="$work/run"
rk=""      # rootlesskit (the parent), started through dockerd-rootless.sh
ty=""      # the tapyard daemon in rootlesskit's namespaces

# stop PID SECONDS: SIGTERM, then SIGKILL if it has not exited by the deadline.
stop() {
  [ -n "$1" ] || return 0
  kill -TERM "$1" 2>/dev/null || return 0
  wait_for "$2" gone "$1" || kill -KILL "$1" 2>/dev/null
  wait "$1" 2>/dev/null
}

cleanup() {
  set +e
  # The containers first: dockerd then stops at once (with running
  # containers it waits ~13 s), and tapyard sees their endpoints go.
  if [ -n "$rk" ] && ! gone "$rk"; then
    # shellcheck disable=SC2046 # one id per word
    dk rm -f $(dk ps -aq) >/dev/null 2>&1
  fi
  stop "$ty" 10
  stop "$rk" 30
  rootless_cleanup
  # Image layers belong to the user's subordinate ids: root removes them.
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

quiet() { "$@" >/dev/null 2>&1; }
# fatal WHAT LOG: a step everything after depends on failed.
fatal() { fail "$1"; [ -z "${2:-}" ] || tail -n 30 "$2" >&2; exit 1; }

cargo build -q -p tapyard-switch --bin tapyard
# The user's /etc/subuid and /etc/subgid ranges are what rootlesskit maps
# through newuidmap/newgidmap.
rootless_add_user
if ! grep -q "^$user:" /etc/subuid || ! grep -q "^$user:" /etc/subgid; then
  fatal "useradd gave $user no /etc/subuid and /etc/subgid ranges (login.defs SUB_UID_COUNT)"
fi
mkdir -p "$work/rootfs"

# The user's commands see Docker's rootless socket.
rootless_user_env DOCKER_HOST="unix://$run/docker.sock"
# Debian's client: on some images a newer one in /usr/local/bin shadows it.
dk() { as_user /usr/bin/docker "$@"; }
tysock="$run/tapyard/tapyard.sock"
tyc() { as_user "$work/bin/tapyard" --socket "$tysock" "$@"; }

echo "docker rootless: user $user (uid $uid), XDG_RUNTIME_DIR=$run"

# 1. Rootless dockerd, as Docker documents it (dockerd-rootless.sh), with
#    rootlesskit's state directory (its child_pid and api.sock) at the place
#    newer dockerd-rootless.sh scripts choose themselves.
"${user_env[@]}" DOCKERD_ROOTLESS_ROOTLESSKIT_FLAGS="--state-dir=$run/dockerd-rootless" \
  "$rootless_sh" >"$work/dockerd.log" 2>&1 &
rk=$!
wait_for 60 quiet dk info || fatal "rootless dockerd did not answer \`docker info\` within 60 s" "$work/dockerd.log"
check "rootless dockerd: $(dk info --format '{{.ServerVersion}}, {{.Driver}}, cgroups {{.CgroupDriver}}, {{.SecurityOptions}}')" \
  grep -q rootless <(dk info --format '{{.SecurityOptions}}')
dockerd=$(cat "$run/docker.pid")
child=$(cat "$run/dockerd-rootless/child_pid")
same_ns() { [ "$(ns_of "$1" user)$(ns_of "$1" net)$(ns_of "$1" mnt)" = "$(ns_of "$2" user)$(ns_of "$2" net)$(ns_of "$2" mnt)" ]; }
check "dockerd (pid $dockerd) is in rootlesskit's user, network and mount namespaces (child pid $child)" same_ns "$dockerd" "$child"
check "and they are not the host's" test "$(ns_of "$dockerd" user)" != "$(ns_of self user)"
# rootlesskit's uplink: slirp4netns's tap0, default route via its gateway.
default_route() { nsenter -t "$child" -n ip -4 route show default; }
route0=$(default_route)
slirp_gw=$(awk '{ print $3; exit }' <<<"$route0")
check "dockerd's namespace has a default route: $route0" test -n "$slirp_gw"

# 2. The image, made offline from busybox-static (no registry here).
R="$work/rootfs"
mkdir -p "$R/bin" "$R/etc" "$R/tmp"
cp /bin/busybox "$R/bin/"
for a in $("$R/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$R/etc/passwd"
echo 'root:x:0:' >"$R/etc/group"
tar -C "$R" -c . | dk import -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - bb >/dev/null ||
  fatal "docker import of the busybox image" "$work/dockerd.log"
check "a container runs (docker run --rm --network none)" quiet dk run --rm --network none bb true

# 3. tapyard in dockerd's namespaces: as the user, nsenter into the user
#    namespace (uid 0 there), then its network and mount namespaces.
"${user_env[@]}" nsenter -U --preserve-credentials -n -m -t "$child" -- \
  "$work/bin/tapyard" daemon --workers 1 --docker-plugin --socket "$tysock" >"$work/tapyard.log" 2>&1 &
ty=$!
wait_for 20 test -S "$tysock" || fatal "tapyard daemon: no socket at $tysock" "$work/tapyard.log"
check "tapyard (pid $ty) shares dockerd's network and mount namespaces" \
  test "$(ns_of "$ty" net)$(ns_of "$ty" mnt)" = "$(ns_of "$dockerd" net)$(ns_of "$dockerd" mnt)"
check "plugin socket /run/docker/plugins/tapyard.sock in dockerd's /run" \
  wait_for 10 test -S "/proc/$ty/root/run/docker/plugins/tapyard.sock"

# 4. A tapyard network, two containers on it.
check "docker network create -d tapyard --ipam-driver tapyard red" \
  quiet dk network create -d tapyard --ipam-driver tapyard --subnet 198.18.93.0/24 -o tapyard.name=red red
check "tapyard network ls shows red" grep -q '^red ' <(tyc network ls)
check "docker run ca" quiet dk run -d --name ca --network red --cap-add NET_RAW bb sleep 600
check "docker run cb --ip 198.18.93.50" quiet dk run -d --name cb --network red --ip 198.18.93.50 --cap-add NET_RAW bb sleep 600
ipa=$(dk inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' ca || true)
check "ca has eth0 with $ipa/24" grep -q "inet $ipa/24" <(dk exec ca ip -4 -o addr show dev eth0)
check "cb has eth0 with 198.18.93.50/24" grep -q "inet 198.18.93.50/24" <(dk exec cb ip -4 -o addr show dev eth0)
# tun_flags exists only for TUN/TAP devices: eth0 is tapyard's TAP, moved
# in by dockerd, not a veth.
check "ca's eth0 is a TAP (tun_flags $(dk exec ca cat /sys/class/net/eth0/tun_flags 2>&1))" \
  quiet dk exec ca cat /sys/class/net/eth0/tun_flags
# Found by looking (Docker moves and renames the TAP after Join) and named
# by asking dockerd: both within a few polls of the daemon.
ports_in_containers() {
  [ "$(tyc port ls red --json | jq --arg d "$run/docker/netns/" \
    '[.[] | select((.netns | startswith($d)) and .ifname == "eth0" and .container.name != null)] | length')" = 2 ]
}
check "tapyard port ls: two ports on red in containers' namespaces, named by their containers" wait_for 10 ports_in_containers
check "ca pings cb (198.18.93.50)" wait_for 10 quiet dk exec ca ping -c1 -W1 198.18.93.50
check "cb pings ca ($ipa)" wait_for 10 quiet dk exec cb ping -c1 -W1 "$ipa"
check "ca pings the gateway 198.18.93.1" wait_for 10 quiet dk exec ca ping -c1 -W1 198.18.93.1

# 5. Egress: tapyard's uplink (tapyard0 in dockerd's namespace, NAT) then
#    rootlesskit's slirp4netns, whose gateway 10.0.2.2 answers ICMP itself.
# Join makes the TAPs in dockerd's namespace: their default route must not
# replace its own (it would vanish with the TAP into the container).
check "dockerd's namespace keeps its default route after the joins: $(default_route)" test "$(default_route)" = "$route0"
check "ca reaches slirp4netns's gateway $slirp_gw through tapyard's uplink" \
  wait_for 10 quiet dk exec ca ping -c1 -W1 "$slirp_gw"

# 6. A published port: tapyard publishes -p in dockerd's namespace (Docker
#    runs no docker-proxy for plugin networks, so rootlesskit is not told);
#    `rootlessctl add-ports` forwards the host's port to it.
port=$((20000 + $$ % 10000))
while ss -Htln "sport = :$port" | grep -q .; do port=$((port + 1)); done
check "docker run cw -p $port:80 (httpd)" quiet dk run -d --name cw --network red -p "$port:80" bb httpd -f -p 80 -h /etc
cw=$(dk inspect -f '{{.Id}}' cw 2>/dev/null || true)
api=(rootlessctl --socket "$run/dockerd-rootless/api.sock")
check "rootlessctl add-ports 127.0.0.1:$port:$port/tcp" quiet as_user "${api[@]}" add-ports "127.0.0.1:$port:$port/tcp"
# busybox httpd serves /etc, whose hostname Docker wrote: the container id.
fetch() { [ "$(curl -s --max-time 2 "http://127.0.0.1:$port/hostname")" = "${cw:0:12}" ]; }
check "the host's 127.0.0.1:$port reaches cw's port 80 (rootlesskit, then tapyard's published port)" wait_for 10 fetch
as_user "${api[@]}" list-ports | awk 'NR > 1 { print $1 }' | while read -r id; do as_user "${api[@]}" remove-ports "$id" >/dev/null; done

# 7. Removal leaves nothing.
check "docker rm -f ca cb cw" quiet dk rm -f ca cb cw
check "tapyard port ls: no port left" test "$(tyc port ls | tail -n +2 | wc -l)" -eq 0
# Join's TAPs are named ty + 12 digits of the endpoint id (tapyard0, the uplink, stays).
check "no TAP of tapyard's left in dockerd's namespace" test -z "$(nsenter -t "$child" -n ip -o link | grep -E '^[0-9]+: ty[0-9a-f]{12}[:@]')"
check "docker network rm red" quiet dk network rm red
check "tapyard network ls: red is gone" test -z "$(tyc network ls | awk '$1 == "red"')"

# 8. Stops: tapyard on SIGTERM (exit 0), then rootlesskit with dockerd.
kill -TERM "$ty"
if wait_for 10 gone "$ty" && wait "$ty"; then ok "tapyard exited 0 after SIGTERM"; else fail "tapyard did not stop cleanly"; fi
ty=""
kill -TERM "$rk"
check "rootlesskit, dockerd and slirp4netns stop after SIGTERM to rootlesskit" wait_for 30 sh -c "! pgrep -u $user >/dev/null"
wait "$rk" 2>/dev/null || true
rk=""

if [ "$fails" -gt 0 ]; then
  echo "docker rootless: $fails check(s) failed; tapyard log:"
  cat "$work/tapyard.log"
  echo "dockerd log (end):"
  tail -n 30 "$work/dockerd.log"
  exit 1
fi
echo "docker rootless: all checks passed"
