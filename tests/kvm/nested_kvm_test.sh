#!/usr/bin/env bash
# Runs the KVM backend on a real /dev/kvm even on hosts that have none (such as our
# build machines, whose kernel is itself a PVM guest): Debian's kernel boots under
# QEMU with pure software emulation (TCG, -cpu max exposes SVM with nested paging),
# loads kvm_amd, and runs `ftvm run --backend kvm` on the real guest images inside.
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
check() { if [ "$2" = 0 ]; then echo "CHECK $1 PASS $3"; else echo "CHECK $1 FAIL $3"; fi; }
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
          mailstore_deliver mailstore_stop mailstore_durable page_fault_report)
passed=0 failed=0
for name in "${expected[@]}"; do
  if grep -q "CHECK $name PASS" "$work/console.log"; then passed=$((passed + 1))
  else echo "nested_kvm_test: check $name failed or did not run" >&2; failed=$((failed + 1)); fi
done
echo "nested_kvm_test: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
