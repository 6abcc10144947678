#!/usr/bin/env bash
# The test command (README, CI): formatting, lints, the layer rules, and every
# test (unit and integration against real namespaces and TAP devices).
#
# Integration tests need CAP_NET_ADMIN. As root they run directly. As any other
# user this script re-runs itself inside `unshare --user --map-root-user --net
# --mount`, with a private /run for `ip netns`; TAP devices then need
# /dev/net/tun to be mode 0666 (the distribution default).
#
# Nothing passes by not testing: TAPYARD_TEST_STRICT=1 makes a test that lacks
# CAP_NET_ADMIN fail (a plain `cargo test` skips those, saying so), a test
# whose peer program is missing always fails, and the last line names every
# part that was skipped: `test.sh: summary: all passed; SKIPPED: ...`.
set -euo pipefail
cd "$(dirname "$0")/.."
export TAPYARD_TEST_STRICT=1
if [ -z "${TAPYARD_IN_USERNS:-}" ]; then
  scripts/setup.sh --tests
  if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
fi

if [ "$(id -u)" -ne 0 ] && [ -z "${TAPYARD_IN_USERNS:-}" ]; then
  if [ ! -w /dev/net/tun ]; then
    echo "test.sh: /dev/net/tun is not writable by $(id -un) (mode $(stat -c %a /dev/net/tun)); the TAP tests need mode 0666, the distribution default" >&2
  fi
  cargo build --all-targets --quiet   # build outside: the user namespace has no network for crates.io
  # The fuzz smoke needs no privilege (and crates.io for its first build).
  if [ -z "${TAPYARD_SKIP_FUZZ:-}" ]; then scripts/fuzz-smoke.sh; fi
  env TAPYARD_IN_USERNS=1 unshare --user --map-root-user --net --mount -- "$0" "$@"
  fuzz_skip=""
  if [ -n "${TAPYARD_SKIP_FUZZ:-}" ]; then fuzz_skip="; fuzz smoke (TAPYARD_SKIP_FUZZ is set)"; fi
  echo "test.sh: summary: all passed; SKIPPED: rootless pass as nobody, rootless uplink, rootless Docker, rootless podman, vm-guest, AF_XDP ports and CPU steering (they need root)$fuzz_skip"
  exit 0
fi
if [ -n "${TAPYARD_IN_USERNS:-}" ]; then
  mount -t tmpfs tapyard-run /run
  mkdir -p /run/netns
  ip link set lo up
fi

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
cargo fmt --all -- --check
scripts/check-layers.sh
# Every shell script, linted (Debian shellcheck; -x follows `. file` sources).
command -v shellcheck >/dev/null || { echo "test.sh: shellcheck is not installed (scripts/setup.sh --tests installs it)" >&2; exit 1; }
shellcheck -x scripts/*.sh scripts/lib/*.sh .ci/run switch/tests/fixtures/*.sh
cargo clippy --all-targets --quiet -- -D warnings
# The fuzz smoke's instrumented build (minutes of CPU) runs in the background,
# niced, while the tests below mostly wait on namespaces, daemons and peers.
fuzz_build=""
if [ -z "${TAPYARD_IN_USERNS:-}" ] && [ -z "${TAPYARD_SKIP_FUZZ:-}" ]; then
  fuzz_log=$(mktemp "${TMPDIR:-/tmp}/tapyard-fuzz-build.XXXXXX")
  # Its own process group (setsid), so that a failing test, which ends this
  # script, takes the whole build (cargo, rustc) with it.
  setsid nice -n 10 scripts/fuzz-smoke.sh --build-only >"$fuzz_log" 2>&1 &
  fuzz_build=$!
  trap 'if [ -n "$fuzz_build" ]; then kill -- "-$fuzz_build" 2>/dev/null || true; fi; rm -f "$fuzz_log"' EXIT
fi
cargo test --workspace "$@"
# Inside the user namespace only the part above runs; the outer run prints the summary.
[ -z "${TAPYARD_IN_USERNS:-}" ] || exit 0
skipped=()
# Every fuzz target under AFL++ for 10 s each from its seeds (docs/RELIABILITY.md,
# "Fuzzing"); the kept crashers and the seeds also replay in `cargo test` above.
if [ -n "${TAPYARD_SKIP_FUZZ:-}" ]; then
  skipped+=("fuzz smoke (TAPYARD_SKIP_FUZZ is set)")
else
  if ! wait "$fuzz_build"; then
    cat "$fuzz_log" >&2
    echo "test.sh: the fuzz targets' instrumented build failed" >&2
    exit 1
  fi
  fuzz_build=""
  cat "$fuzz_log"
  scripts/fuzz-smoke.sh --run-only
fi
# As root, also run the integration tests the rootless way (as nobody in a user namespace).
if [ -n "${TAPYARD_SKIP_ROOTLESS:-}" ]; then
  skipped+=("rootless pass (TAPYARD_SKIP_ROOTLESS is set)")
else
  scripts/test-rootless.sh
  skipped+=("tests/cni_podman.rs in the rootless pass (rootful podman cannot run as root of a single-uid user namespace here; it runs in the root pass; rootless podman itself is scripts/test-rootless-podman.sh)")
  skipped+=("AF_XDP ports and CPU steering (tests/afxdp.rs, tests/steering.rs, the portKind test of tests/cni.rs) in the rootless pass (BPF programs need CAP_BPF in the host's user namespace; the root pass runs them)")
  skipped+=("a second user in tests/control_socket.rs in the rootless pass (a single-uid user namespace has no other user to refuse; the root pass refuses a throwaway user and admits it through --socket-group)")
  skipped+=("containers in tests/docker_real.rs in the rootless pass (a rootful dockerd started as root of a single-uid user namespace makes tapyard networks, but runc cannot start containers there: devpts gid 5 is unmapped; the root pass runs them, and scripts/test-docker-rootless.sh runs them under Docker's own rootless mode)")
fi
# A rootless daemon started plainly by an unprivileged user: its own
# namespaces, pasta as its uplink, egress and a published port through it
# (scripts/test-rootless-uplink.sh: a throwaway user, removed afterwards;
# /dev/net/tun set to 0666 for its duration where it is 0600, and restored).
if [ -n "${TAPYARD_SKIP_ROOTLESS:-}" ]; then
  skipped+=("rootless uplink (TAPYARD_SKIP_ROOTLESS is set)")
else
  scripts/test-rootless-uplink.sh
fi
# Docker's own rootless mode (dockerd-rootless.sh, rootlesskit with
# /etc/subuid ranges) with tapyard started in its namespaces as its network
# and IPAM plugin: containers ping each other, egress, a published port
# (scripts/test-docker-rootless.sh: a throwaway user, removed afterwards;
# /dev/net/tun set to 0666 for its duration where it is 0600, and restored).
if [ -n "${TAPYARD_SKIP_ROOTLESS:-}" ]; then
  skipped+=("rootless Docker (TAPYARD_SKIP_ROOTLESS is set)")
else
  scripts/test-docker-rootless.sh
fi
# Rootless podman (CNI backend) with tapyard-cni, as a throwaway user with
# subordinate ids: the daemon as root of podman's user namespace, pasta its
# uplink; containers ping each other and the gateway, egress and a published
# port (scripts/test-rootless-podman.sh; the user, its subuid/subgid lines
# and /dev/net/tun's mode are restored afterwards).
if [ -n "${TAPYARD_SKIP_ROOTLESS:-}" ]; then
  skipped+=("rootless podman (TAPYARD_SKIP_ROOTLESS is set)")
else
  scripts/test-rootless-podman.sh
fi
# A real VM on a vhost-user port: QEMU (TCG) with Linux's virtio_net driver gets
# a DHCP lease from tapyard and pings a container both ways (scripts/vm-guest.sh;
# root; QEMU, a kernel and busybox are fetched from Debian into a cache). Exit 2
# means the guest's parts could not be fetched or unpacked: reported, not hidden.
if [ -n "${TAPYARD_SKIP_VM:-}" ]; then
  skipped+=("vm-guest (TAPYARD_SKIP_VM is set)")
else
  rc=0
  TAPYARD="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/tapyard" scripts/vm-guest.sh || rc=$?
  case $rc in
  0) ;;
  2) skipped+=("vm-guest (could not fetch or unpack QEMU, the kernel or busybox; see its output above)") ;;
  *) exit "$rc" ;;
  esac
fi
if [ ${#skipped[@]} -eq 0 ]; then
  echo "test.sh: summary: all passed; nothing skipped"
else
  summary=$(printf '%s; ' "${skipped[@]}")
  echo "test.sh: summary: all passed; SKIPPED: ${summary%; }"
fi
