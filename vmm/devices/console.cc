#include "vmm/devices/console.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"
#include "common/log.h"
#include "vmm/abi/ftvm_abi.h"
#include "vmm/output_hash.h"
#include "vmm/snapshot.pb.h"

namespace ftvm::vmm {

Console::Console(GuestMemory& memory, int out_fd, UniqueFd owned)
    : memory_(memory), fd_(owned ? owned.get() : out_fd), owned_(std::move(owned)) {}

UniqueFd Console::OpenOutput(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd) throw SysError("console output " + path);
  return fd;
}

uint64_t Console::mmio_read(uint64_t, unsigned) { return 0; }

void Console::mmio_write(uint64_t offset, unsigned, uint64_t value) {
  if (offset == FTVM_CONSOLE_PUTC) {
    uint8_t c = uint8_t(value);
    Emit(&c, 1);
  } else if (offset == FTVM_CONSOLE_WRITE_IOV) {
    ftvm_iovec iov{};
    if (!memory_.read_obj(value, iov) || iov.len > FTVM_CONSOLE_MAX_WRITE || !memory_.contains(iov.gpa, iov.len)) {
      log::warn("console.bad_iovec", {{"iovec_gpa", value}, {"gpa", iov.gpa}, {"len", iov.len}});
      return;
    }
    Emit(memory_.ptr(iov.gpa, iov.len), iov.len);
  }
}

std::vector<uint16_t> Console::ports() const { return {FTVM_PORT_CONSOLE}; }

void Console::port_write(uint16_t, unsigned, uint32_t value) {
  uint8_t c = uint8_t(value);
  Emit(&c, 1);
}

bool Console::save(snapshot::Device& out) const {
  auto* s = out.mutable_console();
  s->set_bytes(bytes_);
  s->set_output_hash(hash_);
  return true;
}

void Console::restore(const snapshot::Device& in) {
  if (!in.has_console()) throw Error("snapshot for device 'console' holds another device's state");
  bytes_ = in.console().bytes();
  hash_ = in.console().output_hash();
}

void Console::Emit(const uint8_t* data, size_t len) {
  bytes_ += len;
  hash_ = OutputHash(hash_, {data, len});
  while (len > 0) {
    ssize_t n = write(fd_, data, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      // Report once: a full disk or closed pipe must not flood the log on every line.
      if (!write_failed_) log::error("console.write_failed", {{"error", strerror(errno)}});
      write_failed_ = true;
      return;
    }
    data += n;
    len -= size_t(n);
  }
}

}  // namespace ftvm::vmm
