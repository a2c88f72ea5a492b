// Power-off: the guest's exit code ends the VM. MMIO for ring 3, a port for ring 0.
#pragma once

#include <optional>

#include "vmm/devices/device.h"

namespace ftvm::vmm {

class Power final : public Device {
 public:
  std::string_view name() const override { return "power"; }
  uint64_t mmio_read(uint64_t, unsigned) override { return 0; }
  void mmio_write(uint64_t offset, unsigned, uint64_t value) override;
  std::vector<uint16_t> ports() const override;
  void port_write(uint16_t port, unsigned size, uint32_t value) override;
  bool save(snapshot::Device& out) const override;
  void restore(const snapshot::Device& in) override;

  std::optional<int> exit_code() const { return exit_code_; }
  void reset() override { exit_code_.reset(); }

 private:
  std::optional<int> exit_code_;
};

}  // namespace ftvm::vmm
