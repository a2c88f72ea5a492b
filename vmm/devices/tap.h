// A Linux tap interface (layer 2), as the host side of virtio-net.
//
// IFF_TAP | IFF_NO_PI and no vnet header: the fd carries bare Ethernet frames, one
// per read/write. Non-blocking, so the vCPU thread never sleeps on the network.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "common/unique_fd.h"

namespace ftvm::vmm {

class Tap {
 public:
  // Attaches to tap `ifname`, creating it if it does not exist (needs
  // CAP_NET_ADMIN). Throws ftvm::Error naming the interface and the failing step,
  // e.g. "tap tap0: TUNSETIFF: Operation not permitted".
  explicit Tap(std::string_view ifname);

  Tap(Tap&&) noexcept = default;
  Tap& operator=(Tap&&) noexcept = default;
  Tap(const Tap&) = delete;
  Tap& operator=(const Tap&) = delete;

  // The name the kernel gave the interface.
  const std::string& name() const { return name_; }
  int fd() const { return fd_.get(); }

  enum class Status { kOk, kWouldBlock, kError };
  struct Result {
    Status status;
    size_t bytes = 0;  // frame length on kOk
    int err = 0;       // errno on kError
  };
  // Reads one frame into `buf`. A frame longer than `buf` is truncated by the
  // kernel; pass a buffer of at least the interface MTU + 14.
  Result read(std::span<uint8_t> buf);
  // Writes one frame gathered from `frame`.
  Result write(std::span<const iovec> frame) const;  // thread-safe: one writev

 private:
  UniqueFd fd_;
  std::string name_;
};

}  // namespace ftvm::vmm
