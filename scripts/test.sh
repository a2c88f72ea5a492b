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
try:
    for line in open(sys.argv[1]):
        r = json.loads(line)["result"]
        key = {"OK": "passed", "EXPECTEDFAIL": "passed", "SKIP": "skipped"}.get(r, "failed")
        counts[key] += 1
except FileNotFoundError:
    pass
print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
PY
exit $status
