#include "vmm/devices/rng.h"

#include "common/log.h"
#include "vmm/abi/ftvm_abi.h"

namespace ftvm::vmm {

uint64_t Rng::mmio_read(uint64_t offset, unsigned) {
  if (offset != FTVM_RNG_DATA) return 0;
  uint64_t v = 0;
  if (!io_.input_bytes(InputKind::kRandom, {reinterpret_cast<uint8_t*>(&v), sizeof v}, source_))
    log::error("rng.source_failed");
  return v;
}

void Rng::mmio_write(uint64_t offset, unsigned, uint64_t value) {
  if (offset != FTVM_RNG_FILL_IOV) return;
  ftvm_iovec iov{};
  if (!memory_.read_obj(value, iov) || iov.len > FTVM_RNG_MAX_FILL || !memory_.contains(iov.gpa, iov.len)) {
    log::warn("rng.bad_iovec", {{"iovec_gpa", value}, {"gpa", iov.gpa}, {"len", iov.len}});
    return;
  }
  memory_.note_write(iov.gpa, iov.len);
  if (!io_.input_bytes(InputKind::kRandom, {memory_.ptr(iov.gpa, iov.len), iov.len}, source_))
    log::error("rng.source_failed");
}

}  // namespace ftvm::vmm
