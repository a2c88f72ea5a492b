#include "vmm/devices/tap.h"

#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace ftvm::vmm {

Tap::Tap(std::string_view ifname) {
  const std::string who = "tap " + std::string(ifname);
  if (ifname.empty()) throw Error("tap: empty interface name");
  if (ifname.size() >= IFNAMSIZ)
    throw Error(who + ": interface name longer than " + std::to_string(IFNAMSIZ - 1) + " characters");
  fd_.reset(::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC));
  if (!fd_) throw SysError(who + ": cannot open /dev/net/tun");
  ifreq ifr{};
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
  std::memcpy(ifr.ifr_name, ifname.data(), ifname.size());
  if (::ioctl(fd_.get(), TUNSETIFF, &ifr) != 0) throw SysError(who + ": TUNSETIFF");
  name_.assign(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ));
}

Tap::Result Tap::read(std::span<uint8_t> buf) {
  for (;;) {
    const ssize_t n = ::read(fd_.get(), buf.data(), buf.size());
    if (n >= 0) return {Status::kOk, size_t(n), 0};
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return {Status::kWouldBlock, 0, 0};
    return {Status::kError, 0, errno};
  }
}

Tap::Result Tap::write(std::span<const iovec> frame) const {
  for (;;) {
    const ssize_t n = ::writev(fd_.get(), frame.data(), int(frame.size()));
    if (n >= 0) return {Status::kOk, size_t(n), 0};
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return {Status::kWouldBlock, 0, 0};
    return {Status::kError, 0, errno};
  }
}

}  // namespace ftvm::vmm
