#!/usr/bin/env bash
# The sanitizer stage of the test run: everything the chosen tests need, built with
# AddressSanitizer + UndefinedBehaviorSanitizer (meson's b_sanitize option) in a build
# directory of its own (build-asan, or $FTVM_ASAN_BUILD_DIR), and those tests run under
# them. scripts/test.sh runs it after the plain suite, so CI runs it.
#
#   scripts/test-asan.sh          the CI selection: every suite but the fuzz suite (the
#                                 libFuzzer binaries carry ASan + UBSan of their own), the
#                                 nested-KVM test (a QEMU boot, none of our code in it) and
#                                 `chaos`; a part of `pair` (below), since all of it would
#                                 take most of an hour under the sanitizers here
#   scripts/test-asan.sh --all    all of it: `pair` over every channel, `chaos` with 30 faults
#
# Other arguments go to `meson test`. The guest image keeps its freestanding flags
# (-fno-sanitize=all: no runtime to report to inside the guest); the host-compiled
# guest kit (network stack, mail store), the DPDK transport and the rest are
# instrumented (DPDK's own libraries are not: Debian builds them without ASan).
# Compiled at -O1 with line tables only (-g1): the sanitizers' usual level, and reports
# still name file and line; a file compiles in 0.6x the time of -O1 -g (measured on
# eventlog/records.cc), and the stage's build is its biggest cost.
# Ends with a testlog per part in $builddir/meson-logs (asan-*.json).
set -uo pipefail
cd "$(dirname "$0")/.."
builddir=${FTVM_ASAN_BUILD_DIR:-build-asan}
all=0
if [[ ${1:-} == --all ]]; then all=1; shift; fi
if [[ ! -f $builddir/build.ninja ]]; then
  meson setup "$builddir" -Db_sanitize=address,undefined -Db_lundef=false -Doptimization=1 -Ddebug=false \
    -Dcpp_args=-g1 -Dc_args=-g1 >/dev/null ||
    { echo "meson setup $builddir failed" >&2; exit 1; }
fi
skipped=(fuzz kvm)  # never run here (see above): not built either
no_suites=() skip_suites=()
for s in "${skipped[@]}"; do no_suites+=(--no-suite "$s"); skip_suites+=(--skip-suite "$s"); done
# Build just what these tests run (with what they depend on: the ftvm binary, the
# guest image): the libFuzzer binaries and the benchmarks are not needed here.
targets=$(scripts/test-targets.py "$builddir" "${skip_suites[@]}") || { echo "meson introspect $builddir failed" >&2; exit 1; }
ninja -C "$builddir" $targets || exit 1

supp=$PWD/scripts/sanitizers
# abort_on_error: a report kills the process (a test then fails, never passes quietly).
# allow_user_segv_handler=1 (the default, said aloud): the DPDK transport's memif fault
# guard (transport/dpdk_channel.cc) installs its own SIGSEGV handler, which ASan must
# leave in place.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:allow_user_segv_handler=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$supp/lsan.supp:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0
# The sanitizers' slowdown: the per-test timeouts stretched 3x.
run() { meson test -C "$builddir" --no-rebuild --print-errorlogs --timeout-multiplier 3 "$@" || status=1; }
run --logbase asan-suites "${no_suites[@]}" --no-suite pair --no-suite chaos "$@"
if [[ $all == 1 ]]; then
  run --logbase asan-pair --suite pair "$@"
  FTVM_CHAOS_ROUNDS=30 run --logbase asan-chaos --suite chaos "$@"
else
  # From the pair test: the protocol-version and bad-peer tests, migration and
  # post-copy, and over TCP a killed secondary, re-protection, live attach and resync.
  # Not the drills with a fixed window for the survivor's first answer, nor a 2 s
  # dirtying app that must be migrated before it ends: under the sanitizers on this
  # host they miss those windows (see the README), which says nothing about memory.
  run --logbase asan-pair --suite pair \
    --test-args='--gtest_filter=Pair.*:PrimaryWithBadPeer.*:SecondaryWithBadPeer.*:*SecondaryKilledThePrimaryKeepsServing/tcp:*SurvivorIsProtectedAgainAndSurvivesASecondFailover/tcp:*LiveAttach.SecondaryJoinsARunningVmByALiveCopy/tcp:*Resync.*/tcp' "$@"
fi
exit $status
