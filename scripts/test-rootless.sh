#!/usr/bin/env bash
# Runs the integration tests as an unprivileged user (nobody) inside
# `unshare --user --map-root-user --net --mount`: the rootless mode tapyard is
# built for. Run as root (it needs to switch to another user and to make a
# 0666 copy of the tun device node, since /dev/net/tun here may be 0600 while
# distributions ship 0666). Everything it makes is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "test-rootless.sh: run as root (it drops to nobody itself)" >&2; exit 1; }

work=$(mktemp -d /tmp/tapyard-rootless.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
mkdir -m 1777 "$work/tmp"
mknod "$work/tun" c 10 200
chmod 666 "$work/tun"

# The test executables, built as the calling user (nobody has no toolchain).
mapfile -t bins < <(cargo test -p tapyard-switch --tests --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])')
[ ${#bins[@]} -gt 0 ] || { echo "test-rootless.sh: no test executables found" >&2; exit 1; }
# Not in this pass (scripts/test.sh names it in its summary): podman, which
# cannot run as root of a user namespace here (its locks in /dev/shm and its
# CNI cache in /var/lib/cni belong to the host's root); the real rootless
# engines are issue 13's.
kept=()
for b in "${bins[@]}"; do
  case $(basename "$b") in
  cni_podman-*) echo "rootless: not run in this pass: $(basename "$b") (podman as root of a user namespace cannot run here)" ;;
  *) kept+=("$b") ;;
  esac
done
bins=("${kept[@]}")

cat > "$work/inner.sh" <<INNER
set -euo pipefail
mount -t tmpfs tapyard-run /run
mkdir -p /run/netns
mount --bind "$work/tun" /dev/net/tun
ip link set lo up
cd "$PWD/switch"
status=0
for b in ${bins[*]}; do
  echo "rootless: \$(basename \$b)"
  TMPDIR="$work/tmp" TAPYARD_TEST_STRICT=1 "\$b" --test-threads 2 || status=1
done
exit \$status
INNER
chmod 755 "$work/inner.sh"
echo "rootless: running the integration tests as uid $(id -u nobody) in a user namespace"
setpriv --reuid=nobody --regid=nogroup --clear-groups -- \
  unshare --user --map-root-user --net --mount -- bash "$work/inner.sh"
