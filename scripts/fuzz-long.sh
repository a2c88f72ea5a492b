#!/usr/bin/env bash
# Runs every libFuzzer target (fuzz/*_fuzz.cc) for N seconds each, one after the
# other, and prints a line per target: runs, exec/s, corpus growth, and whether it
# found anything. CI runs each for 10 s (meson test --suite fuzz); this is for
# the long runs (the default is 10 minutes each).
#
# Usage: scripts/fuzz-long.sh [SECONDS] [TARGET...]
#   FTVM_BUILD_DIR   build directory (default build; built first with ninja)
#   FTVM_NO_BUILD=1  use the fuzzers already in $FTVM_BUILD_DIR/fuzz as they are (e.g. a
#                    copy, so that rebuilding the tree does not pull them from under a run)
#   FTVM_FUZZ_DIR    where corpora and crash inputs go (default $FTVM_BUILD_DIR/fuzz-runs):
#                    <dir>/<target>/corpus grows across runs; a crash input lands in
#                    <dir>/<target>/ (replay it with build/fuzz/<target>_fuzz_regression
#                    FILE, and commit it under fuzz/corpus/<target>/ with the fix)
# Exit status: 0 when no target found anything.
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
shift || true
builddir=${FTVM_BUILD_DIR:-build}
rundir=${FTVM_FUZZ_DIR:-$builddir/fuzz-runs}
if [[ ${FTVM_NO_BUILD:-0} != 1 ]]; then
  if [[ ! -f $builddir/build.ninja ]]; then
    meson setup "$builddir" >/dev/null || { echo "meson setup failed" >&2; exit 1; }
  fi
  ninja -C "$builddir" >/dev/null || { echo "build failed" >&2; exit 1; }
fi
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  for f in "$builddir"/fuzz/*_fuzzer; do targets+=("$(basename "$f" _fuzzer)"); done
fi
if [[ ${#targets[@]} -eq 0 ]]; then
  echo "no fuzzers in $builddir/fuzz (clang++ and libclang-rt-dev needed)" >&2
  exit 1
fi
failed=0
printf '%-16s %8s %12s %10s %8s  %s\n' target seconds runs exec/s new result
for t in "${targets[@]}"; do
  bin=$builddir/fuzz/${t}_fuzzer
  [[ -x $bin ]] || { echo "$t: no fuzzer $bin" >&2; failed=1; continue; }
  mkdir -p "$rundir/$t/corpus"
  log=$rundir/$t/last.log
  seeds=()
  [[ -d fuzz/corpus/$t ]] && seeds=(fuzz/corpus/$t)
  "$bin" -max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$rundir/$t/" "$rundir/$t/corpus" "${seeds[@]}" >"$log" 2>&1
  status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  new=$(sed -n 's/^stat::new_units_added: *//p' "$log")
  if [[ $status -eq 0 ]]; then
    result=ok
  else
    failed=1
    result="FOUND: $(grep -m1 -E 'invariant violated|ERROR: |runtime error' "$log" | cut -c1-120) (see $log)"
  fi
  printf '%-16s %8s %12s %10s %8s  %s\n' "$t" "$seconds" "${runs:-?}" "${rate:-?}" "${new:-?}" "$result"
done
exit $failed
