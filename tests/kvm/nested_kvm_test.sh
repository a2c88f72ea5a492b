#!/usr/bin/env bash
# Runs the KVM backend on a real /dev/kvm even on hosts that have none (such as our
# build machines, whose kernel is itself a PVM guest): Debian's kernel boots under
# QEMU with pure software emulation (TCG, -cpu max exposes SVM with nested paging),
# loads kvm_amd, and runs `ftvm run --backend kvm` on the real guest images inside,
# then `ftvm record`/`ftvm replay --verify` on KVM (compute, timers with epoch
# checkpoints, dirty pages, disk, the mail store on a tap, damaged logs).
# Every check prints "CHECK <name> PASS|FAIL <detail>"; the script fails if any
# check fails or is missing.
#
# usage: nested_kvm_test.sh FTVM GUEST_ELF MINIMAL_ELF
set -euo pipefail
ftvm=$1 guest=$2 minimal=$3

kernel=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n1 || true)
[[ -n $kernel ]] || { echo "nested_kvm_test: no kernel in /boot (scripts/setup.sh installs linux-image-amd64)" >&2; exit 1; }
kver=${kernel#/boot/vmlinuz-}
moddir=/lib/modules/$kver
for tool in qemu-system-x86_64 busybox cpio gzip; do
  command -v "$tool" >/dev/null || { echo "nested_kvm_test: $tool is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/ftvm-nested.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,proc,sys,dev,tmp,modules}

# busybox applets (its --list includes "busybox" itself: skip that self-link)
cp "$(command -v busybox)" "$root/bin/busybox"
for applet in $(busybox --list); do
  [[ $applet == busybox ]] || ln -s busybox "$root/bin/$applet"
done

# kvm_amd (and tun for the mail store's tap) with what they depend on, in load
# order: modules.dep lists a module's dependencies last-first.
order=()
for wanted in kernel/arch/x86/kvm/kvm-amd.ko kernel/drivers/net/tun.ko; do
  deps=$(awk -F': ' -v m="$wanted" '$1 == m || $1 == m".xz" || $1 == m".zst" {print $2}' "$moddir/modules.dep")
  rev=()
  for d in $deps; do rev=("$d" "${rev[@]}"); done
  for m in "${rev[@]}" "$wanted"; do
    [[ " ${order[*]} " == *" $m "* ]] || order+=("$m")
  done
done
for m in "${order[@]}"; do
  f=$moddir/$m
  case $f in
    *.ko) cp "$f" "$root/modules/" ;;
    *.ko.xz) xz -dc "$f" > "$root/modules/$(basename "${f%.xz}")" ;;
    *.ko.zst) zstd -dqc "$f" > "$root/modules/$(basename "${f%.zst}")" ;;
  esac
  echo "$(basename "${m%%.ko*}").ko" >> "$root/modules/order"
done

# ftvm with its shared libraries at their host paths
cp "$ftvm" "$root/ftvm"
for lib in $(ldd "$ftvm" | grep -o '/[^ ]*\.so[^ ]*'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp "$guest" "$root/guest.elf"
cp "$minimal" "$root/minimal.elf"

# The expected compute checksum comes from this host's software CPU.
expected_compute=$("$ftvm" run --backend emulated --guest "$guest" --app compute --arg iters=1000000 2>/dev/null \
  | grep '^compute:')
echo "$expected_compute" > "$root/expected_compute"

cat > "$root/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Each check line ends with the guest's uptime, to see where the time goes.
check() {
  t="[t=$(cut -d' ' -f1 /proc/uptime)s]"
  if [ "$2" = 0 ]; then echo "CHECK $1 PASS $3 $t"; else echo "CHECK $1 FAIL $3 $t"; fi
}
for m in $(cat /modules/order); do insmod /modules/$m || echo "insmod $m failed"; done
[ -c /dev/kvm ]; check dev_kvm $? "$(ls -l /dev/kvm 2>&1)"

out=$(timeout -s KILL 60 /ftvm run --backend kvm --guest /minimal.elf --app minimal 2>&1); rc=$?
echo "$out"
[ $rc = 42 ] && echo "$out" | grep -q '^PMok$'; check minimal $? "rc=$rc"
echo "$out" | grep -q 'backend=kvm'; check backend_is_kvm $? ""

out=$(timeout -s KILL 120 /ftvm run --backend kvm --guest /guest.elf --app compute --arg iters=1000000 2>&1); rc=$?
echo "$out"
echo "$out" | grep -qxF "$(cat /expected_compute)"; check compute_matches_software_cpu $? "rc=$rc"

out=$(timeout -s KILL 120 /ftvm run --backend kvm --guest /guest.elf --app timers --arg ticks=20 --arg period_us=2000 2>&1); rc=$?
echo "$out"
[ $rc = 0 ] && echo "$out" | grep -q 'ticks=20 fired=20'; check timers $? "rc=$rc"

dd if=/dev/zero of=/tmp/disk.img bs=1M count=16 2>/dev/null
out=$(timeout -s KILL 120 /ftvm run --backend kvm --guest /guest.elf --app disk --disk /tmp/disk.img --arg ops=100 2>&1); rc=$?
echo "$out"
[ $rc = 0 ] && echo "$out" | grep -q 'errors=0'; check disk $? "rc=$rc"

# The mail store on a tap: deliver, fetch, restart from the same disk, fetch again.
ip link set lo up
tunctl -t ftvm0 >/dev/null && ip addr add 10.0.0.1/24 dev ftvm0 && ip link set ftvm0 up
dd if=/dev/zero of=/tmp/mail.img bs=1M count=16 2>/dev/null
boot_store() {
  : > /tmp/console.txt
  /ftvm run --backend kvm --guest /guest.elf --app mailstore --disk /tmp/mail.img --tap ftvm0 \
    --ip 10.0.0.2/24 --console /tmp/console.txt 2>/tmp/vmm.txt &
  vm=$!
  i=0
  while [ $i -lt 300 ] && ! grep -q 'mailstore: ready' /tmp/console.txt; do sleep 0.1; i=$((i + 1)); done
  cat /tmp/console.txt
}
mail() { timeout -s KILL 60 /ftvm mail "$@" --to 10.0.0.2 --timeout-ms 2000 --retries 5; }
boot_store
grep -q 'mailstore: ready' /tmp/console.txt; check mailstore_ready $? ""
ping -c 1 -W 5 10.0.0.2 >/dev/null; check mailstore_ping $? ""
[ "$(mail deliver --id m1 --mailbox alice --body 'hello from kvm')" = "OK m1" ] &&
  [ "$(mail deliver --id m1 --mailbox alice --body 'hello from kvm')" = "DUP m1" ] &&
  [ "$(mail count --mailbox alice)" = "1" ]; check mailstore_deliver $? ""
kill -TERM $vm; wait $vm; check mailstore_stop $? "$(tail -n 1 /tmp/vmm.txt)"
boot_store
[ "$(mail fetch --mailbox alice --index 0)" = "hello from kvm" ]; check mailstore_durable $? ""
kill -TERM $vm; wait $vm

out=$(timeout -s KILL 60 /ftvm run --backend kvm --guest /guest.elf --app crash --arg kind=pf 2>&1); rc=$?
echo "$out"
[ $rc = 174 ] && echo "$out" | grep -q 'guest exception #14 (page fault)'; check page_fault_report $? "rc=$rc"

# A kernel hung at ring 0 with interrupts off: the health monitor still stops the
# vCPU (a kick does not depend on the guest's IF) and acts (restart: exit 124).
out=$(timeout -s KILL 120 /ftvm run --backend kvm --guest /guest.elf --app hang --arg beat_ms=100 \
  --arg hang_after_ms=300 --arg mode=kernel --health-grace-ms 1000 --health-action restart 2>&1); rc=$?
echo "$out" | tail -n 3
[ $rc = 124 ] && echo "$out" | grep -q 'hanging the kernel now'; check kernel_hang_restart $? "rc=$rc"

# ---- Record/replay on KVM: every replay runs with --verify (digests compared at
# each Verify record) and must end "identical" with the same console output.
# Under TCG, hashing guest RAM dominates each run: all but compute use --mem 16.
rr_record() {  # NAME, then ftvm record options
  name=$1; shift
  timeout -s KILL 120 /ftvm record --log /tmp/$name.log --backend kvm --guest /guest.elf \
    --console /tmp/$name.rec.txt "$@" 2>/tmp/$name.rec.err
}
rr_replay() {  # NAME, then ftvm replay options
  name=$1; shift
  timeout -s KILL 120 /ftvm replay --log /tmp/$name.log --verify --console /tmp/$name.rep.txt "$@" \
    >/tmp/$name.rep.out 2>/tmp/$name.rep.err
}
rr_show() {  # NAME: what the recorder and the replayer said
  grep -v ' INFO ' /tmp/$1.rec.err | tail -n 4
  grep -v ' INFO ' /tmp/$1.rep.err | tail -n 3
  cat /tmp/$1.rep.out
}
rr_identical() { [ "$(tail -n 1 /tmp/$1.rep.out)" = identical ] && grep -q '^final digest ' /tmp/$1.rep.out; }
rr_same_console() { [ -s /tmp/$1.rec.txt ] && cmp /tmp/$1.rec.txt /tmp/$1.rep.txt; }

rr_record compute --app compute --arg iters=1000000; rc=$?
rr_replay compute; rrc=$?
rr_show compute
[ $rc = 0 ] && [ $rrc = 0 ] && rr_identical compute; check rr_compute_identical $? "record rc=$rc replay rc=$rrc"
rr_same_console compute && grep -qxF "$(cat /expected_compute)" /tmp/compute.rep.txt; check rr_compute_console $? ""

# The timer fires while the app computes without exits: epoch checkpoints.
rr_record timers --mem 16 --app timers --arg ticks=20 --arg period_us=2000; rc=$?
rr_replay timers; rrc=$?
rr_show timers
cps=$(sed -n 's/.* checkpoints \([0-9]*\),.*/\1/p' /tmp/timers.rec.err)
[ $rc = 0 ] && [ $rrc = 0 ] && rr_identical timers && grep -q 'ticks=20 fired=20' /tmp/timers.rep.txt
check rr_timers_identical $? "record rc=$rc replay rc=$rrc"
[ "${cps:-0}" -gt 0 ] && grep -q " ${cps} checkpoints" /tmp/timers.rep.err; check rr_timers_checkpoints $? "checkpoints=${cps:-none}"

# KVM's dirty log: the app writes thousands of pages between its exits. Replayed
# without --verify, the replica hashes all of its RAM at the end, which equals the
# recorder's digest (kept up to date from the dirty log) only if the log missed
# no page the guest wrote.
rr_record dirty --mem 16 --app dirty --arg mib=2 --arg mib_per_s=8 --arg seconds=1 --arg slice_us=5000; rc=$?
rr_replay dirty; rrc=$?
rr_show dirty
[ $rc = 0 ] && [ $rrc = 0 ] && rr_identical dirty && rr_same_console dirty; check rr_dirty_identical $? "record rc=$rc replay rc=$rrc"
timeout -s KILL 120 /ftvm replay --log /tmp/dirty.log --console /tmp/dirty.full.txt >/tmp/dirty.full.out 2>/tmp/dirty.full.err; rc=$?
cat /tmp/dirty.full.out
[ $rc = 0 ] && [ "$(tail -n 1 /tmp/dirty.full.out)" = identical ]; check rr_dirty_log_complete $? "rc=$rc"

dd if=/dev/zero of=/tmp/rrdisk.img bs=1M count=16 2>/dev/null
cp /tmp/rrdisk.img /tmp/rrdisk.replica.img
rr_record disk --mem 16 --app disk --disk /tmp/rrdisk.img --arg ops=100; rc=$?
rr_replay disk --disk /tmp/rrdisk.replica.img; rrc=$?
rr_show disk
[ $rc = 0 ] && [ $rrc = 0 ] && rr_identical disk && grep -q 'errors=0' /tmp/disk.rep.txt && rr_same_console disk
check rr_disk_identical $? "record rc=$rc replay rc=$rrc"
cmp /tmp/rrdisk.img /tmp/rrdisk.replica.img; check rr_disk_images_equal $? ""

# The mail store on the tap, recorded while mail is delivered; stopped by SIGTERM.
dd if=/dev/zero of=/tmp/rrmail.img bs=1M count=16 2>/dev/null
cp /tmp/rrmail.img /tmp/rrmail.replica.img
: > /tmp/mail.rec.txt
timeout -s KILL 120 /ftvm record --log /tmp/mail.log --backend kvm --guest /guest.elf --mem 16 --app mailstore \
  --disk /tmp/rrmail.img --tap ftvm0 --ip 10.0.0.2/24 --console /tmp/mail.rec.txt 2>/tmp/mail.rec.err &
vm=$!
i=0
while [ $i -lt 300 ] && ! grep -q 'mailstore: ready' /tmp/mail.rec.txt; do sleep 0.1; i=$((i + 1)); done
[ "$(mail deliver --id r1 --mailbox bob --body 'first recorded')" = "OK r1" ] &&
  [ "$(mail deliver --id r2 --mailbox bob --body 'second recorded')" = "OK r2" ] &&
  [ "$(mail deliver --id r1 --mailbox bob --body 'first recorded')" = "DUP r1" ] &&
  [ "$(mail deliver --id r3 --mailbox carol --body 'third recorded')" = "OK r3" ] &&
  [ "$(mail count --mailbox bob)" = "2" ] &&
  [ "$(mail fetch --mailbox bob --index 1)" = "second recorded" ]; check rr_mail_served $? ""
kill -TERM $vm; wait $vm; rc=$?
rr_replay mail --disk /tmp/rrmail.replica.img; rrc=$?
rr_show mail
[ $rc = 0 ] && [ $rrc = 0 ] && rr_identical mail && rr_same_console mail; check rr_mail_identical $? "record rc=$rc replay rc=$rrc"

# A damaged log is refused, a cut one reported as cut short: never "identical".
size=$(stat -c %s /tmp/timers.log)
cp /tmp/timers.log /tmp/tampered.log
printf '\377' | dd of=/tmp/tampered.log bs=1 seek=$((size - 100)) conv=notrunc 2>/dev/null
timeout -s KILL 60 /ftvm replay --log /tmp/tampered.log --verify --console /tmp/tampered.txt >/tmp/tampered.out 2>&1; rc=$?
tail -n 2 /tmp/tampered.out
[ $rc -ne 0 ] && grep -q 'CRC' /tmp/tampered.out && ! grep -qx identical /tmp/tampered.out; check rr_tampered_log $? "rc=$rc"
head -c $((size - 10)) /tmp/timers.log > /tmp/cut.log
timeout -s KILL 60 /ftvm replay --log /tmp/cut.log --verify --console /tmp/cut.txt >/tmp/cut.out 2>&1; rc=$?
tail -n 2 /tmp/cut.out
[ $rc = 3 ] && grep -q 'truncated' /tmp/cut.out; check rr_truncated_log $? "rc=$rc"
echo "NESTED DONE"
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initrd.gz"

echo "nested_kvm_test: booting $kernel under QEMU TCG"
start=$(date +%s)
timeout -s KILL 600 qemu-system-x86_64 -accel tcg -cpu max -m 1024 -smp 1 \
  -kernel "$kernel" -initrd "$work/initrd.gz" \
  -append "console=ttyS0 quiet panic=-1" -nographic -no-reboot > "$work/console.log" 2>&1 || true
echo "nested_kvm_test: QEMU ran $(( $(date +%s) - start )) s"
sed -e 's/\r$//' "$work/console.log" | grep -v '^\s*$' | grep -vE 'SeaBIOS|iPXE|Booting from' || true

expected=(dev_kvm minimal backend_is_kvm compute_matches_software_cpu timers disk mailstore_ready mailstore_ping
          mailstore_deliver mailstore_stop mailstore_durable page_fault_report
          rr_compute_identical rr_compute_console rr_timers_identical rr_timers_checkpoints
          rr_dirty_identical rr_dirty_log_complete rr_disk_identical rr_disk_images_equal rr_mail_served rr_mail_identical
          rr_tampered_log rr_truncated_log)
passed=0 failed=0
for name in "${expected[@]}"; do
  if grep -q "CHECK $name PASS" "$work/console.log"; then passed=$((passed + 1))
  else echo "nested_kvm_test: check $name failed or did not run" >&2; failed=$((failed + 1)); fi
done
echo "nested_kvm_test: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
