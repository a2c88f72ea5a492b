#!/usr/bin/env bash
# The main job, for now: set up, build, boot the mail-store guest on a tap inside a
# network namespace, deliver and fetch mail from the host side, restart the VM from
# the same disk and show the mail survived. Needs root (namespaces, tap).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
builddir=${FTVM_BUILD_DIR:-build}
[[ -f $builddir/build.ninja ]] || meson setup "$builddir" >/dev/null
ninja -C "$builddir" >/dev/null

ftvm=$PWD/$builddir/tools/ftvm/ftvm
guest=$PWD/$builddir/guest/ftvm-guest.elf
ns=ftvm-demo-$$
tap=ftvmdemo0
work=$(mktemp -d /tmp/ftvm-demo.XXXXXX)
disk=$work/mail.img
vm_pid=

cleanup() {
  set +e  # clean up everything, whatever failed
  [[ -n $vm_pid ]] && kill "$vm_pid" 2>/dev/null && wait "$vm_pid" 2>/dev/null
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
in_ns() { ip netns exec "$ns" "$@"; }
mail() { in_ns "$ftvm" mail "$@" --to 10.0.0.2 --timeout-ms 2000; }

boot() {
  : >"$work/console.txt"
  # exec form (not the in_ns function): $! must be the VMM itself, so SIGTERM reaches it
  ip netns exec "$ns" "$ftvm" run --guest "$guest" --app mailstore --disk "$disk" --tap "$tap" \
    --ip 10.0.0.2/24 --console "$work/console.txt" 2>"$work/vmm.log" &
  vm_pid=$!
  for _ in $(seq 1 600); do
    grep -q "mailstore: ready" "$work/console.txt" 2>/dev/null && break
    kill -0 "$vm_pid" 2>/dev/null || { cat "$work/vmm.log" "$work/console.txt"; exit 1; }
    sleep 0.1
  done
  grep -q "mailstore: ready" "$work/console.txt" || { echo "guest did not come up"; cat "$work/vmm.log"; exit 1; }
  sed 's/^/  guest| /' "$work/console.txt"
  grep -E "vm.created" "$work/vmm.log" | sed 's/^/  vmm| /'
}

stop_vm() {
  kill -TERM "$vm_pid"
  wait "$vm_pid" || true
  vm_pid=
  grep -E "vm.stopped" "$work/vmm.log" | sed 's/^/  vmm| /'
}

say "host A: network namespace $ns with tap $tap (10.0.0.1/24), 32 MiB disk"
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" tuntap add dev "$tap" mode tap
ip -n "$ns" addr add 10.0.0.1/24 dev "$tap"
ip -n "$ns" link set "$tap" up
truncate -s 32M "$disk"

say "boot the mail-store guest"
boot

say "ping the guest and deliver three messages"
in_ns ping -c 1 -W 5 10.0.0.2 | sed -n 2p
mail ping
mail deliver --id msg-1 --mailbox alice --body "Hello Alice, the replica is coming."
mail deliver --id msg-2 --mailbox alice --body "Second message for Alice."
mail deliver --id msg-3 --mailbox bob --body "Bob: lunch at noon?"
echo "retrying msg-1 (a client that lost the ack):"
mail deliver --id msg-1 --mailbox alice --body "Hello Alice, the replica is coming."

say "read them back"
echo "alice has $(mail count --mailbox alice) messages, bob has $(mail count --mailbox bob)"
echo "alice[1]: $(mail fetch --mailbox alice --index 1)"

say "a short load run"
mail load --rate 50 --duration 3 --window 8

say "power off the VM, boot a new one from the same disk"
stop_vm
boot
echo "alice[0] after restart: $(mail fetch --mailbox alice --index 0)"
echo "bob[0] after restart:   $(mail fetch --mailbox bob --index 0)"
stop_vm
say "done: every acknowledged message survived the restart"
