#!/usr/bin/env bash
# The main job: install what the lab needs (`scripts/setup.sh --lab`: iproute2,
# util-linux, iputils-ping, procps, a C compiler, Rust if missing; not the test
# suite's peers), build tapyard, and run the embedded default lab
# (`tapyard lab up`). Arguments are passed on: `scripts/lab.sh --check` builds,
# checks and tears down; `scripts/lab.sh` keeps the lab until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --lab >/dev/null
if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
cargo build --release --quiet -p tapyard-switch
exec target/release/tapyard lab up "$@"
