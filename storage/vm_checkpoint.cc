#include "storage/vm_checkpoint.h"

#include <cstring>

#include "common/error.h"
#include "migration/state_transfer.h"
#include "storage/storage.pb.h"
#include "vmm/checkpoint.h"
#include "vmm/page_bitmap.h"
#include "vmm/snapshot.pb.h"

namespace ftvm::storage {

using vmm::kPageSize;

VmStateCapture::Stats VmStateCapture::capture(vmm::Machine& m, uint64_t disk_seq) {
  Stats st;
  Clock& clock = m.clock();
  const uint64_t t0 = clock.monotonic_ns();
  // RAM pages that were ever written (the memfd's data extents): a hole is zeros,
  // and a restore clears what its fresh VM has there (ResumeVmState).
  const vmm::PageBitmap pages = vmm::FileDataPages(m.memory().fd(), m.memory().size());
  const uint64_t t1 = clock.monotonic_ns();
  disk_seq_ = disk_seq;
  position_ = m.position();
  guest_clock_ns_ = m.guest_clock_ns();
  memory_bytes_ = m.memory().size();
  app_ = m.config().app;
  backend_ = std::string(m.backend_name());
  native_ = m.backend().save_state();
  vmm::snapshot::Devices devices;
  m.save_devices(devices);
  devices_ = devices.SerializeAsString();
  pages_.clear();
  pages.for_each([&](uint64_t p) { pages_.push_back(p); });
  // Room to grow, so that a guest writing a few more pages does not make the next
  // capture copy into fresh memory again.
  if (data_.capacity() < pages_.size() * kPageSize) data_.reserve((pages_.size() + pages_.size() / 4 + 64) * kPageSize);
  data_.resize(pages_.size() * kPageSize);
  const uint8_t* base = m.memory().host_base();
  for (size_t i = 0; i < pages_.size(); ++i)
    std::memcpy(data_.data() + i * kPageSize, base + pages_[i] * kPageSize, kPageSize);
  st.pages = pages_.size();
  st.find_ns = t1 - t0;
  st.copy_ns = clock.monotonic_ns() - t1;
  return st;
}

std::string VmStateCapture::serialize() const {
  vmm::snapshot::Checkpoint cp;
  cp.set_position(position_);
  cp.set_part(0);
  cp.set_parts(1);
  cp.mutable_vcpu()->set_backend(backend_);
  cp.mutable_vcpu()->set_native(native_.data(), native_.size());
  if (!cp.mutable_devices()->ParseFromString(devices_)) throw Error("internal: captured device state does not parse");
  cp.set_dirty_pages(pages_.size());
  vmm::snapshot::MemoryRun* run = nullptr;
  uint64_t run_end = 0;
  for (size_t i = 0; i < pages_.size(); ++i) {
    const uint64_t gpa = pages_[i] * kPageSize;
    if (run == nullptr || gpa != run_end) {
      run = cp.add_memory();
      run->set_gpa(gpa);
    }
    run->mutable_data()->append(reinterpret_cast<const char*>(data_.data() + i * kPageSize), kPageSize);
    run_end = gpa + kPageSize;
  }
  DrCheckpoint c;
  c.set_format_version(migration::kStateFormatVersion);
  c.set_memory_bytes(memory_bytes_);
  c.set_app(app_);
  c.set_guest_clock_ns(guest_clock_ns_);
  c.set_disk_seq(disk_seq_);
  c.set_checkpoint(cp.SerializeAsString());
  return c.SerializeAsString();
}

std::string CaptureVmState(vmm::Machine& m, uint64_t disk_seq) {
  VmStateCapture c;
  c.capture(m, disk_seq);
  return c.serialize();
}

namespace {

struct CheckedState {
  DrCheckpoint wrapper;
  vmm::snapshot::Checkpoint checkpoint;
  VmStateInfo info;
};

// Parses `raw` and checks it against `m`, changing nothing. Throws ftvm::Error.
CheckedState Check(vmm::Machine& m, std::span<const uint8_t> raw) {
  CheckedState s;
  DrCheckpoint& c = s.wrapper;
  if (!c.ParseFromArray(raw.data(), int(raw.size()))) throw Error("the checkpoint's VM state does not parse");
  if (c.format_version() != migration::kStateFormatVersion)
    throw Error("the checkpoint's VM state is in state format " + std::to_string(c.format_version()) +
                "; this build restores format " + std::to_string(migration::kStateFormatVersion));
  if (c.memory_bytes() != m.memory().size())
    throw Error("the checkpoint is of a VM with " + std::to_string(c.memory_bytes() >> 20) + " MiB of RAM; this VM has " +
                std::to_string(m.memory().size() >> 20) + " MiB (give --mem " + std::to_string(c.memory_bytes() >> 20) + ")");
  if (c.app() != m.config().app)
    throw Error("the checkpoint is of a VM running app '" + c.app() + "', not '" + m.config().app + "'");
  vmm::snapshot::Checkpoint& cp = s.checkpoint;
  if (!cp.ParseFromString(c.checkpoint())) throw Error("the checkpoint's vCPU and memory state does not parse");
  if (cp.parts() != 1 || cp.part() != 0) throw Error("the checkpoint's state is not one whole part");
  if (cp.vcpu().backend() != m.backend_name())
    throw Error("the checkpoint was taken on the " + cp.vcpu().backend() + " backend and cannot be restored on " +
                std::string(m.backend_name()) + " (give --backend " + cp.vcpu().backend() + ")");
  // The same devices (a NIC needs --tap, a disk is always there): named, rather
  // than restore_devices' count after memory has been loaded.
  vmm::snapshot::Devices mine;
  m.save_devices(mine);
  auto names = [](const vmm::snapshot::Devices& d) {
    std::string out;
    for (const vmm::snapshot::Device& x : d.devices()) out += (out.empty() ? "" : ", ") + x.name();
    return out;
  };
  if (names(mine) != names(cp.devices()))
    throw Error("the checkpoint's VM has the devices [" + names(cp.devices()) + "], this VM [" + names(mine) +
                "]: start it with the source's device options (a NIC needs --tap)");
  s.info.disk_seq = c.disk_seq();
  s.info.memory_bytes = c.memory_bytes();
  s.info.guest_clock_ns = c.guest_clock_ns();
  s.info.app = c.app();
  s.info.position = cp.position();
  return s;
}

}  // namespace

VmStateInfo CheckVmState(vmm::Machine& m, std::span<const uint8_t> raw) { return Check(m, raw).info; }

void ResumeVmState(vmm::Machine& m, std::span<const uint8_t> raw, const std::string& tap,
                   const std::function<void()>& before_live) {
  const CheckedState s = Check(m, raw);
  // Pages the fresh VM has (its loaded image) that the checkpoint does not carry
  // were zeros at the capture.
  vmm::PageBitmap carried(m.memory().size() / kPageSize);
  for (const vmm::snapshot::MemoryRun& r : s.checkpoint.memory()) carried.set_range(r.gpa(), r.data().size());
  const vmm::PageBitmap fresh = vmm::FileDataPages(m.memory().fd(), m.memory().size());
  static constexpr uint8_t kZeros[kPageSize] = {};
  fresh.for_each([&](uint64_t page) {
    if (carried.test(page)) return;
    uint8_t* p = m.memory().host_base() + page * kPageSize;
    if (std::memcmp(p, kZeros, kPageSize) == 0) return;
    std::memset(p, 0, kPageSize);
    m.backend().invalidate_code(page * kPageSize, kPageSize);
  });
  m.set_position(s.info.position);
  vmm::CheckpointLoader loader;
  const std::string& bytes = s.wrapper.checkpoint();
  if (!loader.add(m, std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size())))
    throw Error("the checkpoint's state is incomplete");
  if (before_live) before_live();
  m.go_live(vmm::ExecutionMode::kLive, nullptr, s.info.guest_clock_ns, tap);
}

}  // namespace ftvm::storage
