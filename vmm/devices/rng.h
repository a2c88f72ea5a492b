// Random numbers from the RandomSource interface (getrandom in production).
#pragma once

#include "common/clock.h"
#include "vmm/devices/device.h"
#include "vmm/devices/device_io.h"
#include "vmm/guest_memory.h"

namespace ftvm::vmm {

class Rng final : public Device {
 public:
  Rng(GuestMemory& memory, RandomSource& source, DeviceIo& io) : memory_(memory), source_(source), io_(io) {}
  std::string_view name() const override { return "rng"; }
  uint64_t mmio_read(uint64_t offset, unsigned size) override;
  void mmio_write(uint64_t offset, unsigned size, uint64_t value) override;

 private:
  GuestMemory& memory_;
  RandomSource& source_;
  DeviceIo& io_;
};

}  // namespace ftvm::vmm
