#!/usr/bin/env bash
# Installs what tapyard and its tests need on a fresh Debian/Ubuntu machine:
# iproute2 (ip), util-linux (nsenter, unshare), iputils-ping, python3 (raw-socket
# test sender), udhcpc and isc-dhcp-client (DHCP clients the tests run), iperf3,
# jq, DPDK testpmd (a vhost-user frontend), a C compiler, and Rust
# if cargo is missing. Idempotent; installs only what is absent.
#
# --bench: also the peers and tools of `tapyard bench` (docs/PERFORMANCE.md):
# vde2 (vde_switch), openvswitch-switch (ovs-vswitchd, ovsdb-server), sockperf,
# gnuplot-nox (the report's chart), ethtool, iperf3 and jq. The benchmark runs
# its own private Open vSwitch; so that installing the package does not start
# the system one, service starts are held back during that install (with a
# temporary /usr/sbin/policy-rc.d, unless one already decides).
set -euo pipefail

bench=0
for a in "$@"; do
  case $a in
  --bench) bench=1 ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "setup.sh: unknown argument '$a' (known: --bench)" >&2; exit 2 ;;
  esac
done

need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v kill >/dev/null 2>&1 || need+=(procps)
# Real DHCP clients for the gateway tests.
command -v udhcpc >/dev/null 2>&1 || need+=(udhcpc)
command -v dhclient >/dev/null 2>&1 || need+=(isc-dhcp-client)
# TCP across routers in the tests, and scripts/bench-l2.sh.
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
command -v jq >/dev/null 2>&1 || need+=(jq)
# A vhost-user frontend nobody here wrote, for the vhost-user tests and
# benchmark: DPDK's testpmd with its virtio-user and vhost PMDs (no hugepages
# needed with --no-huge). testpmd is in dpdk-dev, not in dpdk.
command -v dpdk-testpmd >/dev/null 2>&1 || need+=(dpdk-dev librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23)
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  need+=(cargo rustc)
fi

bench_need=()
if [ $bench -eq 1 ]; then
  command -v vde_switch >/dev/null 2>&1 || bench_need+=(vde2)
  command -v ovs-vswitchd >/dev/null 2>&1 || bench_need+=(openvswitch-switch)
  command -v sockperf >/dev/null 2>&1 || bench_need+=(sockperf)
  command -v gnuplot >/dev/null 2>&1 || bench_need+=(gnuplot-nox)
  command -v ethtool >/dev/null 2>&1 || bench_need+=(ethtool)
fi

if [ $((${#need[@]} + ${#bench_need[@]})) -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  all=("${need[@]}" "${bench_need[@]}")
  echo "setup: installing ${all[*]}"
  $sudo apt-get update -qq
  if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  if [ ${#bench_need[@]} -gt 0 ]; then
    policy=/usr/sbin/policy-rc.d
    held=0
    if [ ! -e $policy ]; then
      printf '#!/bin/sh\n# setup.sh --bench: no service starts during this install\nexit 101\n' | $sudo tee $policy >/dev/null
      $sudo chmod 755 $policy
      held=1
    fi
    rc=0
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${bench_need[@]}" >/dev/null || rc=$?
    [ $held -eq 0 ] || $sudo rm -f $policy
    [ $rc -eq 0 ] || { echo "setup: apt-get install ${bench_need[*]} failed" >&2; exit $rc; }
  fi
fi
echo "setup: ok ($(ip -V 2>&1 | head -1); $(cargo --version 2>/dev/null || "$HOME/.cargo/bin/cargo" --version))"
