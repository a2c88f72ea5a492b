#!/usr/bin/env bash
# Installs what ftvm needs to build, test and run, from Debian packages. Idempotent:
# it only calls apt-get when a package is missing.
set -euo pipefail
packages=(
  build-essential meson ninja-build pkg-config
  libunicorn-dev            # software CPU backend for hosts without /dev/kvm
  libgtest-dev libgmock-dev
  libboost-dev libboost-program-options-dev
  libtomlplusplus-dev       # per-VM configuration files (ftvm --config)
  iproute2 iputils-ping nftables
  libprotobuf-dev protobuf-compiler libzstd-dev   # event log: header protobuf, checkpoint compression
  libibverbs-dev            # RDMA logging channel (always built; runs where a device exists)
  clang libclang-rt-dev     # libFuzzer build of the event-log reader (fuzz/)
  libdpdk-dev               # DPDK logging channel (transport/dpdk_channel.cc; virtual devices in tests)
  qemu-system-x86 linux-image-amd64 busybox-static cpio   # tests/kvm: real KVM, nested under QEMU TCG
  chromium chromium-driver  # tests/integration/dashboard_browser_test.py: the dashboard in headless Chromium
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
