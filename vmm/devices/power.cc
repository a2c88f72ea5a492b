#include "vmm/devices/power.h"

#include "common/error.h"
#include "vmm/abi/ftvm_abi.h"
#include "vmm/snapshot.pb.h"

namespace ftvm::vmm {

void Power::mmio_write(uint64_t offset, unsigned, uint64_t value) {
  if (offset == FTVM_POWER_OFF && !exit_code_) exit_code_ = int(value & 0xff);
}

std::vector<uint16_t> Power::ports() const { return {FTVM_PORT_POWER}; }

bool Power::save(snapshot::Device& out) const {
  auto* s = out.mutable_power();
  s->set_off(exit_code_.has_value());
  s->set_exit_code(exit_code_.value_or(0));
  return true;
}

void Power::restore(const snapshot::Device& in) {
  if (!in.has_power()) throw Error("snapshot for device 'power' holds another device's state");
  exit_code_.reset();
  if (in.power().off()) exit_code_ = in.power().exit_code();
}

void Power::port_write(uint16_t, unsigned, uint32_t value) {
  if (!exit_code_) exit_code_ = int(value & 0xff);
}

}  // namespace ftvm::vmm
