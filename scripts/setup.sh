#!/usr/bin/env bash
# Installs what tapyard and its tests need on a fresh Debian/Ubuntu machine:
# iproute2 (ip), util-linux (nsenter, unshare), iputils-ping, python3 (raw-socket
# test sender), udhcpc and isc-dhcp-client (DHCP clients the tests run), a C compiler (the tun-tap crate builds a small C file), and Rust
# if cargo is missing. Idempotent; installs only what is absent.
set -euo pipefail

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
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  need+=(cargo rustc)
fi

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "setup: ok ($(ip -V 2>&1 | head -1); $(cargo --version 2>/dev/null || "$HOME/.cargo/bin/cargo" --version))"
