#include "vmm/devices/irq_controller.h"

#include "common/error.h"
#include "vmm/abi/ftvm_abi.h"
#include "vmm/snapshot.pb.h"

namespace ftvm::vmm {

uint64_t InterruptController::mmio_read(uint64_t offset, unsigned) {
  switch (offset) {
    case FTVM_IRQ_PENDING: return pending_;
    case FTVM_IRQ_MASK: return mask_;
    case FTVM_IRQ_WAIT:
      wait_until_deliverable();
      // Which lines arrived during the wait depends on host timing: an input.
      return io_.input_value(InputKind::kIrqWait, pending_);
    case FTVM_IRQ_DELIVERED: return delivered_;
    default: return 0;
  }
}

void InterruptController::mmio_write(uint64_t offset, unsigned, uint64_t value) {
  switch (offset) {
    case FTVM_IRQ_ACK: pending_ &= ~uint32_t(value); break;
    case FTVM_IRQ_MASK: mask_ = uint32_t(value); break;
    case FTVM_IRQ_WAIT_IF:
      if (value == delivered_) wait_until_deliverable();
      break;
    default: break;
  }
}

bool InterruptController::save(snapshot::Device& out) const {
  auto* s = out.mutable_irq();
  s->set_pending(pending_);
  s->set_mask(mask_);
  s->set_delivered(delivered_);
  return true;
}

void InterruptController::restore(const snapshot::Device& in) {
  if (!in.has_irq()) throw Error("snapshot for device 'irq' holds another device's state");
  pending_ = in.irq().pending();
  mask_ = in.irq().mask();
  delivered_ = in.irq().delivered();
}

void InterruptController::raise(unsigned line) {
  if (line < FTVM_IRQ_LINES) pending_ |= 1u << line;
}

std::optional<uint8_t> InterruptController::next_vector() const {
  uint32_t ready = pending_ & ~mask_;
  if (ready == 0) return std::nullopt;
  return uint8_t(FTVM_IRQ_VECTOR_BASE + unsigned(__builtin_ctz(ready)));
}

void InterruptController::delivered(uint8_t vector) {
  unsigned line = unsigned(vector) - FTVM_IRQ_VECTOR_BASE;
  if (line < FTVM_IRQ_LINES) pending_ &= ~(1u << line);
  ++delivered_;
}

bool InterruptController::wait_until_deliverable() {
  while (!has_deliverable()) {
    if (!wait_()) return false;
  }
  return true;
}

}  // namespace ftvm::vmm
