#!/usr/bin/env bash
# ThreadSanitizer over the threaded parts: the unit test programs whose code runs
# threads (the channels' receive and sender threads, the metrics server, the image
# stream's fetcher, the sync gate, the disk mirror, post-copy's fault thread, the
# VMM's vCPU and monitor threads, the logger, the mail client's workers), built with
# -fsanitize=thread in a build directory of its own (build-tsan, or
# $FTVM_TSAN_BUILD_DIR) and run under it.
#
# Not the DPDK transport (its lcore and interrupt threads live in DPDK's libraries,
# which are not instrumented, so TSan cannot see their synchronisation) nor the
# integration tests (whole VMMs as processes; ASan covers them, scripts/test-asan.sh).
# Usage: scripts/test-tsan.sh [meson test args...]
set -uo pipefail
cd "$(dirname "$0")/.."
builddir=${FTVM_TSAN_BUILD_DIR:-build-tsan}
tests=(log command metrics control transport migration storage_disk_mirror storage_image_stream
       storage_sync_gate storage_write_stream storage_dr_checkpoint vmm_unit checkpoint mail_client)
if [[ ! -f $builddir/build.ninja ]]; then
  meson setup "$builddir" -Db_sanitize=thread -Db_lundef=false -Doptimization=1 -Ddebug=false \
    -Dcpp_args=-g1 -Dc_args=-g1 >/dev/null ||
    { echo "meson setup $builddir failed" >&2; exit 1; }
fi
targets=$(scripts/test-targets.py "$builddir" "${tests[@]}") || exit 1
ninja -C "$builddir" $targets || exit 1
# halt_on_error: a race report fails its test, it is never a warning scrolled past.
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/scripts/sanitizers/tsan.supp}
meson test -C "$builddir" --no-rebuild --print-errorlogs --timeout-multiplier 4 --logbase tsan "${tests[@]}" "$@"
