#!/usr/bin/env bash
# The long chaos run: `ftvm drill --fault random` for ROUNDS faults (default 1000;
# 4-8 s each here: two runs of 500 side by side took 66 min on this 2-core host)
# over CHANNEL (default tcp), then the table by
# fault type: count, failovers, recovery p50/p99, acknowledged messages lost,
# duplicates, split brain. Usage: bench/chaos.sh [ROUNDS] [CHANNEL] (as root, after
# scripts/test.sh or a build in build/).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-1000}
channel=${2:-tcp}
exec build/tools/ftvm/ftvm drill --guest build/guest/ftvm-guest.elf --fault random --rounds "$rounds" \
  --channel "$channel" --after-s 1 --json "/tmp/ftvm-chaos-$$.json" --workdir "/tmp/ftvm-chaos-$$"
