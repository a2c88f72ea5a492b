#!/usr/bin/env bash
# `meson install` into a scratch DESTDIR: the binary, the guest kit's image, both
# systemd units and the example config land where they belong, the units name the
# installed binary, the installed binary runs the installed guest, and the example
# config passes `ftvm config check` apart from the paths only a real host has.
set -euo pipefail
build=$1
dest=$(mktemp -d)
trap 'rm -rf "$dest"' EXIT
meson install -C "$build" --destdir "$dest" --no-rebuild >/dev/null
prefix=$(meson introspect "$build" --buildoptions | python3 -c 'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"]=="prefix"][0])')
root=$dest$prefix
fail() { echo "install check: $*" >&2; exit 1; }
for f in bin/ftvm share/ftvm/ftvm-guest.elf share/ftvm/example.toml lib/systemd/system/ftvm@.service \
         lib/systemd/system/ftvm-secondary@.service; do
  [[ -e $root/$f ]] || fail "$f was not installed under $root"
done
grep -q "ExecStart=$prefix/bin/ftvm primary --config /etc/ftvm/%i.toml" "$root/lib/systemd/system/ftvm@.service" ||
  fail "ftvm@.service does not run the installed ftvm primary"
grep -q "ExecStart=$prefix/bin/ftvm secondary --config" "$root/lib/systemd/system/ftvm-secondary@.service" ||
  fail "ftvm-secondary@.service does not run the installed ftvm secondary"
out=$("$root/bin/ftvm" run --guest "$root/share/ftvm/ftvm-guest.elf" --app hello 2>/dev/null) ||
  fail "the installed ftvm did not run the installed guest"
[[ $out == *hello* ]] || fail "the installed guest printed: $out"
# The example's paths exist only on a configured host: the check must name them.
check=$("$root/bin/ftvm" config check "$root/share/ftvm/example.toml" 2>&1 || true)
[[ $check == *guest* ]] || fail "config check of the example said: $check"
echo "install check: ok ($root)"
