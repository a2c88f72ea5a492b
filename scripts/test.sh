#!/usr/bin/env bash
# Sets up, builds and runs every test, in two stages:
#   1. the whole suite, built as usual in build/ ($FTVM_BUILD_DIR);
#   2. the sanitizer stage (scripts/test-asan.sh): the tests built again with
#      AddressSanitizer + UndefinedBehaviorSanitizer in build-asan/ and run under them.
# Usage: scripts/test.sh [meson test args...]
#   With arguments (a test name, --suite S, ...) only stage 1 runs them, unless
#   FTVM_SANITIZERS=1; FTVM_SANITIZERS=0 skips stage 2 (quick local runs; CI runs both).
# Ends with one summary line: "N passed, N failed, N skipped" (one count per test
# program and stage), after a line per stage and the failed assertions.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh || exit 1
builddir=${FTVM_BUILD_DIR:-build}
asandir=${FTVM_ASAN_BUILD_DIR:-build-asan}
sanitizers=${FTVM_SANITIZERS:-$([[ $# -eq 0 ]] && echo 1 || echo 0)}
if [[ ! -f $builddir/build.ninja ]]; then
  meson setup "$builddir" >/dev/null || { echo "meson setup failed" >&2; exit 1; }
fi
ninja -C "$builddir" || exit 1
logs=("plain=$builddir/meson-logs/testlog.json")
rm -f "${logs[0]#plain=}"
meson test -C "$builddir" --print-errorlogs "$@"
status=$?
if [[ $sanitizers == 1 ]]; then
  rm -f "$asandir"/meson-logs/asan-*.json
  FTVM_ASAN_BUILD_DIR=$asandir scripts/test-asan.sh "$@" || status=1
  for f in "$asandir"/meson-logs/asan-*.json; do [[ -f $f ]] && logs+=("asan=$f"); done
  [[ ${#logs[@]} -gt 1 ]] || { echo "the sanitizer stage ran no test" >&2; status=1; }
fi
python3 - "${logs[@]}" <<'PY'
import json, sys
total = {"passed": 0, "failed": 0, "skipped": 0}
stages, failures = {}, []
for arg in sys.argv[1:]:
    stage, path = arg.split("=", 1)
    counts = stages.setdefault(stage, {"passed": 0, "failed": 0, "skipped": 0})
    try:
        for line in open(path):
            t = json.loads(line)
            key = {"OK": "passed", "EXPECTEDFAIL": "passed", "SKIP": "skipped"}.get(t["result"], "failed")
            counts[key] += 1
            total[key] += 1
            if key == "failed":
                failures.append((stage, t))
    except FileNotFoundError:
        print(f"--- {stage}: no test log {path}")
        total["failed"] += 1
# The log of a long test program scrolls its failures out of sight: repeat each
# failed assertion (gtest's "Failure" blocks, shortened, or a sanitizer's report)
# right above the summary.
for stage, t in failures:
    print(f"--- {stage} {t['name']}: {t['result']}, its failed assertions:")
    lines = (t.get("stdout") or "").splitlines()
    printed, blocks = set(), 0
    for i, l in enumerate(lines):
        if blocks < 8 and (": Failure" in l or "ERROR: AddressSanitizer" in l or "ERROR: LeakSanitizer" in l
                           or "runtime error:" in l):
            printed.update(range(i, min(i + 14, len(lines))))
            blocks += 1
        elif "[  FAILED  ]" in l and "ms)" in l:
            printed.add(i)
    for i in sorted(printed):
        print("    " + lines[i][:300])
for stage, c in stages.items():
    name = {"plain": "plain build", "asan": "ASan+UBSan"}[stage]
    print(f"{name}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped")
print(f"{total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")
PY
exit $status
