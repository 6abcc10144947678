#!/usr/bin/env bash
# Installs prerequisites on a fresh Debian/Ubuntu machine, in three sets, so
# each job installs only what it uses. Idempotent; installs only what is absent.
#
#   --lab     what `tapyard lab up` (scripts/lab.sh, the main job) needs to build
#             and run: iproute2 (ip), util-linux (nsenter), iputils-ping (the
#             lab's reachability check), procps (kill), a C compiler, and Rust
#             (cargo) if missing, and udhcpc (the DHCP client `lab up` runs
#             for an interface with address = "dhcp"). (A lab's daemon runs
#             with --uplink none; a daemon with egress also needs nftables:
#             the --tests and --bench sets install it.)
#   --tests   (the default) the lab set and every peer the test suite
#             (scripts/test.sh) runs: python3 (raw-socket sender), udhcpc and
#             isc-dhcp-client (real DHCP clients), graphviz (`lab graph` to SVG), iptables (iptables-nft and
#             -legacy, which the firewall must coexist with), iperf3, jq, shellcheck (the
#             shell lint), DPDK testpmd (a vhost-user peer; Debian dpdk-dev),
#             the reference CNI plugins (containernetworking-plugins: bridge,
#             host-local, portmap in /usr/lib/cni, which tests/cni.rs compares
#             tapyard-cni with and chains it to), podman (tests/cni_podman.rs:
#             a real runtime on tapyard-cni), docker.io (tests/docker_real.rs: a
#             real dockerd with tapyard as its network driver; installed with
#             service starts held back, as below, so that the install starts no
#             system dockerd), rootlesskit (Docker's rootless mode),
#             busybox-static (their images, made offline) and bird2 (the OSPF lab's
#             routing daemon, also installed with service starts held back).
#             system dockerd), busybox-static (their images, made offline),
#             and tshark and tcpdump (read tapyard's pcapng captures);
#             and cargo-afl (crates.io; it builds AFL++ with make, also
#             installed) for the fuzz smoke, scripts/fuzz-smoke.sh.
#   --bench   the lab set and the peers and tools of `tapyard bench` and
#             bench/system/*.sh (docs/PERFORMANCE.md): iperf3, jq, python3,
#             vde2 (vde_switch), openvswitch-switch (ovs-vswitchd, ovsdb-server),
#             sockperf, gnuplot-nox (the report's chart), ethtool, DPDK
#             testpmd (bench/system/vhost.sh), and ISC's perfdhcp (kea-admin)
#             and Kea (kea-dhcp4-server) for `tapyard bench --dhcp` (also in
#             the --tests set, for its smoke test), installed with service
#             starts held back. The benchmark runs its own private
#             Open vSwitch; so that installing the package does not start the
#             system one, service starts are held back during that install
#             (with a temporary /usr/sbin/policy-rc.d, unless one already decides).
#
# Sets combine: `setup.sh --tests --bench` installs both.
set -euo pipefail

lab=0 tests=0 bench=0
for a in "$@"; do
  case $a in
  --lab) lab=1 ;;
  --tests) tests=1 ;;
  --bench) bench=1 ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "setup.sh: unknown argument '$a' (known: --lab, --tests, --bench)" >&2; exit 2 ;;
  esac
done
[ $((lab + tests + bench)) -gt 0 ] || tests=1

have() { command -v "$1" >/dev/null 2>&1; }

# The lab set: always.
need=()
have ip || need+=(iproute2)
have nsenter || need+=(util-linux)
have ping || need+=(iputils-ping)
have kill || need+=(procps)
have udhcpc || need+=(udhcpc)
have cc || need+=(gcc libc6-dev)
if ! have cargo && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  need+=(cargo rustc)
fi

# Peers shared by the tests and the benchmark.
held_need=()
if [ $tests -eq 1 ] || [ $bench -eq 1 ]; then
  # The uplink's rules (egress, published ports); nft lives in /usr/sbin,
  # which a user's PATH may lack.
  have nft || [ -x /usr/sbin/nft ] || need+=(nftables)
  have python3 || need+=(python3)
  have iperf3 || need+=(iperf3)
  have jq || need+=(jq)
  # A vhost-user peer nobody here wrote: DPDK's testpmd with its virtio-user and
  # vhost PMDs (no hugepages needed with --no-huge). testpmd is in dpdk-dev, not dpdk.
  have dpdk-testpmd || need+=(dpdk-dev librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23)
  # The egress tests' client (curl) and the rootless uplink (pasta,
  # slirp4netns, newuidmap).
  have curl || need+=(curl)
  have pasta || need+=(passt)
  have slirp4netns || need+=(slirp4netns)
  have newuidmap || need+=(uidmap)
  # `tapyard bench --dhcp` and its smoke test (tests/bench_smoke.rs): perfdhcp
  # drives, kea-dhcp4 is the baseline (both in /usr/sbin; the server's package
  # would start a system Kea, so service starts are held back).
  have perfdhcp || [ -x /usr/sbin/perfdhcp ] || held_need+=(kea-admin)
  have kea-dhcp4 || [ -x /usr/sbin/kea-dhcp4 ] || held_need+=(kea-dhcp4-server)
fi
if [ $tests -eq 1 ]; then
  [ -x /usr/sbin/dockerd ] || held_need+=(docker.io)
  # Docker's rootless mode (scripts/test-docker-rootless.sh): rootlesskit and rootlessctl.
  have rootlesskit || need+=(rootlesskit)
  dpkg -s busybox-static >/dev/null 2>&1 || held_need+=(busybox-static)
  have dot || need+=(graphviz)
  have dhclient || need+=(isc-dhcp-client)
  have shellcheck || need+=(shellcheck)
  have iptables || [ -x /usr/sbin/iptables ] || need+=(iptables)
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  have podman || held_need+=(podman)
  # examples/ospf.toml's routers (tests/labs_ospf.rs); its package would start a system bird.
  have bird || held_need+=(bird2)
  # Readers of tapyard's pcapng captures (tests/capture.rs); tshark's
  # install asks a debconf question, answered by DEBIAN_FRONTEND below.
  have tshark || need+=(tshark)
  have tcpdump || need+=(tcpdump)
  # cargo-afl builds AFL++ with make (scripts/fuzz-smoke.sh).
  have make || need+=(make)
fi

if [ $bench -eq 1 ]; then
  have vde_switch || held_need+=(vde2)
  have ovs-vswitchd || held_need+=(openvswitch-switch)
  have sockperf || held_need+=(sockperf)
  have gnuplot || held_need+=(gnuplot-nox)
  have ethtool || held_need+=(ethtool)
fi

if [ $((${#need[@]} + ${#held_need[@]})) -gt 0 ]; then
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "setup: installing ${need[*]} ${held_need[*]}"
  "${sudo[@]}" apt-get update -qq
  if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  if [ ${#held_need[@]} -gt 0 ]; then
    policy=/usr/sbin/policy-rc.d
    held=0
    if [ ! -e $policy ]; then
      printf '#!/bin/sh\n# setup.sh: no service starts during this install\nexit 101\n' |
        "${sudo[@]}" tee $policy >/dev/null
      "${sudo[@]}" chmod 755 $policy
      held=1
    fi
    rc=0
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${held_need[@]}" >/dev/null || rc=$?
    [ $held -eq 0 ] || "${sudo[@]}" rm -f $policy
    [ $rc -eq 0 ] || { echo "setup: apt-get install ${held_need[*]} failed" >&2; exit $rc; }
  fi
fi
cargo=cargo
have cargo || cargo=$HOME/.cargo/bin/cargo
# The fuzz smoke (scripts/fuzz-smoke.sh): cargo-afl from crates.io, which
# builds AFL++ itself (with the C compiler and make).
if [ $tests -eq 1 ] && ! "$cargo" afl --version >/dev/null 2>&1; then
  echo "setup: installing cargo-afl (it builds AFL++)"
  "$cargo" install --locked --quiet cargo-afl
fi
echo "setup: ok ($(ip -V 2>&1 | head -1); $("$cargo" --version))"
