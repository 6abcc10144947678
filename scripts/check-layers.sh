#!/usr/bin/env bash
# Checks the import rules of switch/src (see switch/src/lib.rs and docs/ARCHITECTURE.md):
# data flows one way, and the forwarding code never reaches up.
set -euo pipefail
cd "$(dirname "$0")/../switch/src"
fail=0
check() { # check DIR-OR-FILE FORBIDDEN-MODULE...
  local where=$1; shift
  for m in "$@"; do
    if grep -rnE "(crate|super)::$m\b" "$where" >/dev/null 2>&1; then
      echo "layer violation: $where must not import $m:"; grep -rnE "(crate|super)::$m\b" "$where"; fail=1
    fi
  done
}
check wire packet port datapath worker control snapshot stats cli
check packet.rs port datapath worker control snapshot cli
check datapath port worker control snapshot cli
check port datapath worker control snapshot cli
check snapshot.rs worker control cli
check worker.rs control cli
check stats.rs port datapath worker control cli
if grep -rn "tapyard_ipam" datapath worker.rs port packet.rs wire >/dev/null; then
  echo "layer violation: the data path must not name the ipam crate"; fail=1
fi
# unsafe is allowed only under port/ (STYLE §12).
if grep -rnE "unsafe[[:space:]]*\{|unsafe fn|unsafe impl" --include=*.rs . | grep -v "^./port/"; then
  echo "unsafe code outside port/"; fail=1
fi
[ $fail -eq 0 ] && echo "layers: ok"
exit $fail
