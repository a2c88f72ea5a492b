// Console: guest text to a host file descriptor (stdout or a file). Whole buffers per
// exit (WRITE_IOV); single characters from ring-0 port I/O for panic paths.
#pragma once

#include <string>

#include "common/unique_fd.h"
#include "vmm/devices/device.h"
#include "vmm/guest_memory.h"

namespace ftvm::vmm {

class Console final : public Device {
 public:
  // Writes to `fd` (not owned when `owned` is invalid: stdout).
  Console(GuestMemory& memory, int out_fd, UniqueFd owned = UniqueFd());
  // Opens (creates/truncates) `path`; throws ftvm::Error naming it.
  static UniqueFd OpenOutput(const std::string& path);

  std::string_view name() const override { return "console"; }
  uint64_t mmio_read(uint64_t offset, unsigned size) override;
  void mmio_write(uint64_t offset, unsigned size, uint64_t value) override;
  std::vector<uint16_t> ports() const override;
  void port_write(uint16_t port, unsigned size, uint32_t value) override;
  bool save(snapshot::Device& out) const override;
  void restore(const snapshot::Device& in) override;

  uint64_t bytes_written() const { return bytes_; }
  // A running hash of every byte printed: compared between primary and replica.
  uint64_t output_hash() const { return hash_; }

 private:
  void Emit(const uint8_t* data, size_t len);

  GuestMemory& memory_;
  int fd_;
  UniqueFd owned_;
  uint64_t bytes_ = 0;
  uint64_t hash_ = 0;
  bool write_failed_ = false;
};

}  // namespace ftvm::vmm
