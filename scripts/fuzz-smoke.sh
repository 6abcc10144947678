#!/usr/bin/env bash
# The fuzz smoke run (CI, through scripts/test.sh): builds the AFL++ fuzz
# targets (fuzz/, cargo-afl; `scripts/setup.sh --tests` installs it) and runs
# each for FUZZ_SMOKE_SECS seconds (default 10) from its seeds, one at a
# time. Fails if a target crashes or hangs, and then names the input, which
# belongs in fuzz/regressions/<target>/ once the bug is fixed.
#
#   scripts/fuzz-smoke.sh                  every target
#   scripts/fuzz-smoke.sh dhcp gateway     only these
#   FUZZ_SMOKE_SECS=600 scripts/fuzz-smoke.sh frame_path    a longer run
#   scripts/fuzz-smoke.sh --build-only     only the instrumented build
#   scripts/fuzz-smoke.sh --run-only       only the runs (built before)
#
# scripts/test.sh builds with --build-only in the background while the tests
# run (they mostly wait on namespaces and peers, and the build is minutes of
# CPU), then runs with --run-only.
#
# The instrumented build goes to $FUZZ_TARGET_DIR (default target/fuzz-afl),
# apart from the normal one: cargo-afl builds with its own flags. Campaigns
# and docs: docs/RELIABILITY.md, "Fuzzing".
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
secs=${FUZZ_SMOKE_SECS:-10}
target_dir=${FUZZ_TARGET_DIR:-target/fuzz-afl}

if ! cargo afl --version >/dev/null 2>&1; then
  echo "fuzz-smoke.sh: cargo-afl is not installed (scripts/setup.sh --tests installs it: cargo install --locked cargo-afl)" >&2
  exit 1
fi
build=1 run=1
case ${1:-} in
--build-only) run=0; shift ;;
--run-only) build=0; shift ;;
esac
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^tapyard-fuzz$')
fi

start=$(date +%s)
if [ $build -eq 1 ]; then
  CARGO_TARGET_DIR=$target_dir cargo afl build --release --quiet -p tapyard-fuzz --features afl
  echo "fuzz-smoke.sh: built ${#targets[@]} targets in $(($(date +%s) - start)) s"
fi
[ $run -eq 1 ] || exit 0
start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/tapyard-fuzz-smoke.XXXXXX")
trap 'rm -rf "$work"' EXIT

# No CPU frequency or core-dump-pattern checks (CI machines and containers
# cannot change them), no UI, no pinning to a core other jobs may need.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1
failed=()
for t in "${targets[@]}"; do
  out=$work/$t
  # -m: a memory limit in MB (an unbounded allocation is a crash); -t: ms
  # per run before it counts as a hang.
  if ! cargo afl fuzz -V "$secs" -m 2048 -t 1000 -i "fuzz/seeds/$t" -o "$out" "$target_dir/release/$t" >"$work/$t.log" 2>&1; then
    echo "fuzz-smoke.sh: $t: afl-fuzz failed:" >&2
    tail -20 "$work/$t.log" >&2
    failed+=("$t")
    continue
  fi
  stat() { sed -n "s/^$1 *: *//p" "$out/default/fuzzer_stats"; }
  echo "fuzz-smoke.sh: $t: $(stat execs_done) runs, $(stat execs_per_sec)/s, $(stat corpus_count) paths, crashes $(stat saved_crashes), hangs $(stat saved_hangs)"
  if [ "$(stat saved_crashes)" != 0 ] || [ "$(stat saved_hangs)" != 0 ]; then
    keep=target/fuzz-smoke-findings/$t
    mkdir -p "$keep"
    cp "$out"/default/crashes/id* "$out"/default/hangs/id* "$keep"/ 2>/dev/null || true
    echo "fuzz-smoke.sh: $t: inputs that crashed or hung kept in $keep; replay one with $target_dir/release/$t < FILE" >&2
    failed+=("$t")
  fi
done
echo "fuzz-smoke.sh: ${#targets[@]} targets in $(($(date +%s) - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz-smoke.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
