#include "vmm/checkpoint.h"

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "common/hex.h"

namespace ftvm::vmm {

std::vector<std::string> CaptureCheckpoint(Machine& m, const PageBitmap& pages, size_t max_part_page_bytes) {
  snapshot::Checkpoint first;
  first.set_position(m.position());
  snapshot::Vcpu* vcpu = first.mutable_vcpu();
  vcpu->set_backend(std::string(m.backend_name()));
  // The canonical registers (snapshot::Vcpu.regs) stay out: the native state has
  // them all, and a timer-driven guest takes a checkpoint per tick.
  std::vector<uint8_t> native = m.backend().save_state();
  vcpu->set_native(native.data(), native.size());
  m.save_devices(*first.mutable_devices());
  first.set_dirty_pages(pages.count());

  // Runs of adjacent pages, cut at the part limit.
  std::vector<snapshot::Checkpoint> parts;
  parts.push_back(std::move(first));
  size_t part_bytes = 0;
  snapshot::MemoryRun* run = nullptr;
  uint64_t run_end = 0;
  const uint8_t* base = m.memory().host_base();
  pages.for_each([&](uint64_t page) {
    if (part_bytes + kPageSize > max_part_page_bytes && part_bytes > 0) {
      parts.emplace_back();
      parts.back().set_position(m.position());
      part_bytes = 0;
      run = nullptr;
    }
    const uint64_t gpa = page * kPageSize;
    if (run == nullptr || gpa != run_end) {
      run = parts.back().add_memory();
      run->set_gpa(gpa);
    }
    run->mutable_data()->append(reinterpret_cast<const char*>(base + gpa), kPageSize);
    run_end = gpa + kPageSize;
    part_bytes += kPageSize;
  });
  std::vector<std::string> out;
  out.reserve(parts.size());
  for (size_t i = 0; i < parts.size(); ++i) {
    parts[i].set_part(uint32_t(i));
    parts[i].set_parts(uint32_t(parts.size()));
    out.push_back(parts[i].SerializeAsString());
  }
  return out;
}

std::string DeviceStateBytes(const Machine& m) {
  snapshot::Devices d;
  m.save_devices(d);
  return d.SerializeAsString();
}

bool CheckpointLoader::add(Machine& m, std::span<const uint8_t> payload) {
  snapshot::Checkpoint part;
  if (!part.ParseFromArray(payload.data(), int(payload.size())))
    throw Error("checkpoint record does not parse as a snapshot");
  if (part.parts() == 0 || part.part() >= part.parts())
    throw Error("checkpoint part " + std::to_string(part.part()) + " of " + std::to_string(part.parts()));
  if (part.position() != m.position())
    throw Error("checkpoint for position " + std::to_string(part.position()) + " arrived at position " +
                std::to_string(m.position()));
  if (part.part() != next_part_)
    throw Error("checkpoint part " + std::to_string(part.part()) + " where part " + std::to_string(next_part_) +
                " was due");
  if (part.part() == 0) {
    if (part.vcpu().backend() != m.backend_name())
      throw Error("checkpoint taken on the " + part.vcpu().backend() + " backend cannot be restored on " +
                  std::string(m.backend_name()));
    expected_parts_ = part.parts();
  } else if (part.parts() != expected_parts_) {
    throw Error("checkpoint parts disagree on their count");
  }
  // Memory first: device queues are re-checked against RAM when restored.
  GuestMemory& mem = m.memory();
  for (const snapshot::MemoryRun& r : part.memory()) {
    if (r.data().size() % kPageSize != 0 || r.gpa() % kPageSize != 0 || !mem.contains(r.gpa(), r.data().size()))
      throw Error("checkpoint memory run at " + Hex(r.gpa()) + " of " + std::to_string(r.data().size()) +
                  " bytes is not whole pages inside guest RAM");
    // Only pages that differ are written: an identical page needs no write (and no
    // dirty-tracking fault) and cannot hold stale translated code.
    for (uint64_t off = 0; off < r.data().size(); off += kPageSize) {
      const uint64_t gpa = r.gpa() + off;
      const char* src = r.data().data() + off;
      if (std::memcmp(mem.ptr(gpa, kPageSize), src, kPageSize) == 0) continue;
      mem.write(gpa, src, kPageSize);
      m.backend().invalidate_code(gpa, kPageSize);
      ++pages_changed_;
    }
    pages_applied_ += r.data().size() / kPageSize;
  }
  if (part.part() == 0) first_ = std::move(part);
  if (++next_part_ < expected_parts_) return false;
  m.restore_devices(first_.devices());
  const std::string& native = first_.vcpu().native();
  m.backend().restore_state({reinterpret_cast<const uint8_t*>(native.data()), native.size()});
  expected_parts_ = 0;
  next_part_ = 0;
  first_.Clear();
  return true;
}

}  // namespace ftvm::vmm
