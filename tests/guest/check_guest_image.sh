#!/bin/sh
# Static checks on the guest image (ftvm-guest.elf):
#  1. No RDTSC/RDTSCP/RDRAND/RDSEED anywhere: under PVM they run natively with
#     host values and cannot be trapped, which would make the guest
#     nondeterministic (see DESIGN.md).
#  2. Privileged or ring-3-broken instructions (port I/O, hlt, cli/sti, syscall,
#     int N, descriptor-table and control-register loads) only in .ktext, the
#     ring-0 code. Ring-3 code reaches devices through MMIO only.
# Usage: check_guest_image.sh OBJDUMP ELF
set -eu
objdump=$1
elf=$2
dis=$(mktemp)
trap 'rm -f "$dis"' EXIT
"$objdump" -d --no-show-raw-insn "$elf" >"$dis"

status=0
if grep -E '\s(rdtsc|rdtscp|rdrand|rdseed)\b' "$dis"; then
  echo "FAIL: forbidden nondeterministic instruction(s) above" >&2
  status=1
fi

# Instructions outside .ktext (objdump prints "Disassembly of section X:").
outside=$(awk '/^Disassembly of section /{sec=$4} sec != ".ktext:" {print}' "$dis" |
  grep -E '\s(in|out|ins|outs)[bwl]?\s|\s(hlt|cli|sti|syscall|sysenter|sysret[lq]?|iretq|lgdt|lidt|ltr|wrmsr|rdmsr|invlpg)\b|\sint\s+\$|\smov\s+%[a-z0-9]+,%cr[0-9]' || true)
if [ -n "$outside" ]; then
  echo "$outside"
  echo "FAIL: privileged instruction(s) above outside .ktext (ring-0 code)" >&2
  status=1
fi

if ! grep -q '^Disassembly of section .ktext:' "$dis"; then
  echo "FAIL: no .ktext section found (wrong file?)" >&2
  status=1
fi
[ $status -eq 0 ] && echo "ok: $(grep -c '^ *[0-9a-f]*:' "$dis") instructions checked"
exit $status
