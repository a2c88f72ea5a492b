#include "vmm/devices/clock_device.h"

#include "vmm/abi/ftvm_abi.h"

namespace ftvm::vmm {

uint64_t ClockDevice::mmio_read(uint64_t offset, unsigned) {
  switch (offset) {
    case FTVM_CLOCK_MONO_NS: return io_.input_value(InputKind::kClockMonotonic, clock_.monotonic_ns() - start_ns_);
    case FTVM_CLOCK_WALL_NS: return io_.input_value(InputKind::kClockWall, clock_.wall_ns());
    default: return 0;
  }
}

}  // namespace ftvm::vmm
