#!/usr/bin/env bash
# The main job: install prerequisites, build tapyard, and run the embedded
# default lab (`tapyard lab up`). Arguments are passed on: `scripts/lab.sh --check`
# builds, checks and tears down; `scripts/lab.sh` keeps the lab until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet -p tapyard-switch
exec target/release/tapyard lab up "$@"
