#!/usr/bin/env bash
# Checks the import rules of switch/src (see switch/src/lib.rs and docs/ARCHITECTURE.md):
# data flows one way, and the forwarding code never reaches up.
set -euo pipefail
cd "$(dirname "$0")/../switch/src"
fail=0
uses() { # uses DIR-OR-FILE MODULE: code lines naming MODULE (doc links and comments aside)
  grep -rnE "(crate|super)::$2\b" "$1" 2>/dev/null | grep -vE '^[^:]+:[0-9]+:[[:space:]]*//' || true
}
check() { # check DIR-OR-FILE FORBIDDEN-MODULE...
  local where=$1; shift
  for m in "$@"; do
    if [ -n "$(uses "$where" "$m")" ]; then
      echo "layer violation: $where must not import $m:"; uses "$where" "$m"; fail=1
    fi
  done
}
# Bottom up (switch/src/lib.rs): wire < packet < {table, stats, punt, capture} < port
# < snapshot < datapath < worker; control beside them all, never imported
# by the data path. `impair` (the link settings and their shared state)
# imports nothing: everything above may use it; `security` (what a port may
# send) imports only `wire`.
check impair.rs wire packet table stats punt port snapshot datapath worker control cli
check security.rs packet table stats punt port snapshot datapath worker control cli
check wire packet table stats punt port snapshot datapath worker control cli
check packet.rs table stats punt port snapshot datapath worker control cli
check table stats punt port snapshot datapath worker control cli
check stats.rs table punt port snapshot datapath worker control cli
check punt.rs table stats port snapshot datapath worker control cli
check capture.rs wire table stats punt port snapshot datapath worker control cli
check port table punt snapshot datapath worker control cli
check snapshot.rs datapath worker control cli
check datapath worker control cli
check worker.rs control cli
# The decision never touches a port; only the egress stage sends (through the
# Port trait, whose report it names).
check datapath/classify.rs port
check datapath/route.rs port
check datapath/offload.rs port
check datapath/mod.rs port
check datapath/impair.rs port
check datapath/guard.rs port
if grep -nE "(crate|super)::port::" datapath/egress.rs | grep -v "port::SendReport;" >/dev/null; then
  echo "layer violation: datapath/egress.rs may name only port::SendReport"; fail=1
fi
if grep -rn "tapyard_ipam" datapath worker.rs port packet.rs wire table punt.rs capture.rs snapshot.rs stats.rs >/dev/null; then
  echo "layer violation: the data path must not name the ipam crate"; fail=1
fi
# unsafe is allowed only under port/ (STYLE §12).
if grep -rnE "unsafe[[:space:]]*\{|unsafe fn|unsafe impl" --include=*.rs . | grep -v "^./port/"; then
  echo "unsafe code outside port/"; fail=1
fi
[ $fail -eq 0 ] && echo "layers: ok"
exit $fail
