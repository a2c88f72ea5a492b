#!/usr/bin/env bash
# The main job: pull the plug on a protected VM. Sets up and builds, then runs the
# drill: host A, host B and a client as network namespaces on this machine, a
# protected mail store (primary on A, secondary on B, each with its own disk copy),
# client workers delivering mail with exactly-once retries; then the primary is
# killed with SIGKILL at a random moment under load, its network link is cut, the
# survivor is protected again and killed in turn, and the mail store is migrated
# live to host B under load. Each round reports the time from the fault to the first
# request answered afterwards, and checks every acknowledged message is there
# exactly once with exactly one live VM.
# Needs root (namespaces, taps). Extra arguments go to every drill (e.g. --channel shm).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
builddir=${FTVM_BUILD_DIR:-build}
[[ -f $builddir/build.ninja ]] || meson setup "$builddir" >/dev/null
ninja -C "$builddir" >/dev/null

ftvm=$PWD/$builddir/tools/ftvm/ftvm
guest=$PWD/$builddir/guest/ftvm-guest.elf
work=$(mktemp -d /tmp/ftvm-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
drill() { "$ftvm" drill --guest "$guest" --workdir "$work/$1" "${@:2}" 2>/dev/null; }

say "pull the plug: SIGKILL the primary under load, 5 times"
drill kill --rounds 5 --fault kill-primary "$@"

say "cut the primary's network link: it finds itself cut off and gives up its VM"
drill cut --rounds 2 --fault cut-link "$@"

say "kill the secondary instead: the primary keeps serving, unprotected, and says so"
drill lose --rounds 1 --fault kill-secondary "$@"

say "restart-safe: host A comes back as the survivor's new secondary, then the survivor dies too"
drill again --rounds 2 --fault kill-primary --reprotect "$@"

say "move it: the mail store migrates live to host B while clients keep delivering"
drill move --rounds 2 --fault migrate "$@"

say "done: no acknowledged message lost, none duplicated, one live VM every time"
