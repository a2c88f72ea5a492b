#!/usr/bin/env bash
# Builds everything with AddressSanitizer + UndefinedBehaviorSanitizer in a build
# directory of its own (build-asan, or $FTVM_ASAN_BUILD_DIR) and runs the unit tests:
# every suite but the integration tests (real processes, namespaces, the long pair
# test) and the nested-KVM test (a QEMU boot of 15 minutes), which take too long
# under the sanitizers' slowdown, and the fuzz suite, whose libFuzzer binaries carry
# their own ASan + UBSan anyway. Not in CI yet (its time budget): run it by hand.
# Usage: scripts/test-asan.sh [meson test args...]
#
# The guest image keeps its freestanding flags (-fno-sanitize=all: no runtime to
# report to inside the guest); the host-compiled guest kit (network stack, mail
# store) is instrumented like the rest. DPDK's own libraries are not instrumented
# (Debian builds them without ASan), but our DPDK transport is.
set -uo pipefail
cd "$(dirname "$0")/.."
builddir=${FTVM_ASAN_BUILD_DIR:-build-asan}
if [[ ! -f $builddir/build.ninja ]]; then
  meson setup "$builddir" -Db_sanitize=address,undefined -Db_lundef=false >/dev/null ||
    { echo "meson setup $builddir failed" >&2; exit 1; }
fi
ninja -C "$builddir" || exit 1
supp=$PWD/scripts/sanitizers
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$supp/lsan.supp:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
meson test -C "$builddir" --print-errorlogs --no-suite integration --no-suite kvm --no-suite fuzz \
  --timeout-multiplier 3 "$@"
