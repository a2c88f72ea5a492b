#include "vmm/devices/power.h"

#include "vmm/abi/ftvm_abi.h"

namespace ftvm::vmm {

void Power::mmio_write(uint64_t offset, unsigned, uint64_t value) {
  if (offset == FTVM_POWER_OFF && !exit_code_) exit_code_ = int(value & 0xff);
}

std::vector<uint16_t> Power::ports() const { return {FTVM_PORT_POWER}; }

void Power::port_write(uint16_t, unsigned, uint32_t value) {
  if (!exit_code_) exit_code_ = int(value & 0xff);
}

}  // namespace ftvm::vmm
