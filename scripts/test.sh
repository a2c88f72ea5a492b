#!/usr/bin/env bash
# Sets up, builds and runs every test. Usage: scripts/test.sh [meson test args...]
# Ends with one summary line: "N passed, N failed, N skipped".
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh || exit 1
builddir=${FTVM_BUILD_DIR:-build}
if [[ ! -f $builddir/build.ninja ]]; then
  meson setup "$builddir" >/dev/null || { echo "meson setup failed" >&2; exit 1; }
fi
ninja -C "$builddir" || exit 1
meson test -C "$builddir" --print-errorlogs "$@"
status=$?
python3 - "$builddir/meson-logs/testlog.json" <<'PY'
import json, sys
counts = {"passed": 0, "failed": 0, "skipped": 0}
failures = []
try:
    for line in open(sys.argv[1]):
        t = json.loads(line)
        key = {"OK": "passed", "EXPECTEDFAIL": "passed", "SKIP": "skipped"}.get(t["result"], "failed")
        counts[key] += 1
        if key == "failed":
            failures.append(t)
except FileNotFoundError:
    pass
# The log of a long test program scrolls its failures out of sight: repeat each
# failed assertion (gtest's "Failure" blocks, shortened) right above the summary.
for t in failures:
    print(f"--- {t['name']}: {t['result']}, its failed assertions:")
    lines = (t.get("stdout") or "").splitlines()
    printed, blocks = set(), 0
    for i, l in enumerate(lines):
        if blocks < 8 and ": Failure" in l:
            printed.update(range(i, min(i + 14, len(lines))))
            blocks += 1
        elif "[  FAILED  ]" in l and "ms)" in l:
            printed.add(i)
    for i in sorted(printed):
        print("    " + lines[i][:300])
print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
PY
exit $status
