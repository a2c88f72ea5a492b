#include "primary/recorder.h"

#include <chrono>
#include <thread>
#include <utility>

#include "common/error.h"
#include "common/log.h"
#include "primary/log_header.h"
#include "primary/output_gate.h"
#include "vmm/checkpoint.h"

namespace ftvm::primary {

using eventlog::RecordType;

Recorder::Recorder(vmm::Machine& machine, RecorderOptions options) : m_(machine), options_(std::move(options)) {
  if (m_.config().mode == vmm::ExecutionMode::kLive)
    throw Error("internal: the recorder needs a machine configured for recording");
  // Tracking starts before the initial digest, so no write can fall between them.
  tracker_ = m_.backend().make_dirty_tracker();
  const uint64_t pages = m_.memory().size() / vmm::kPageSize;
  since_verify_ = vmm::PageBitmap(pages);
  since_checkpoint_ = vmm::PageBitmap(pages);
  tracker_->collect(since_verify_);
  since_verify_.clear();
  memory_digest_ = std::make_unique<vmm::MemoryDigest>(m_.memory());

  eventlog::LogHeader header;
  header.set_format_version(eventlog::kFormatVersion);
  *header.mutable_vm() = DescribeVm(m_.config(), m_.backend_name());
  header.set_guest_image_sha256(ImageDigest(m_.config().guest_image));
  const std::vector<uint8_t> regs = m_.backend().regs().encode();
  const std::string devices = vmm::DeviceStateBytes(m_);
  const vmm::Sha256Digest initial = vmm::StateDigest(
      0, regs, {reinterpret_cast<const uint8_t*>(devices.data()), devices.size()}, memory_digest_->value());
  header.set_initial_state_digest(std::string(initial.begin(), initial.end()));
  header.set_verify_interval_ns(options_.verify_interval_ns);
  header.set_checkpoint_after_ns(options_.checkpoint_after_ns);
  header.set_output_checks(options_.output_checks);
  header_ = std::move(header);
  m_.set_forced_exit_after_ns(options_.checkpoint_after_ns);
  log::info("record.started", {{"tracker", tracker_->name()},
                               {"initial_digest", vmm::DigestHex(initial)},
                               {"verify_interval_ms", options_.verify_interval_ns / 1000000},
                               {"checkpoint_after_us", options_.checkpoint_after_ns / 1000}});
}

Recorder::~Recorder() = default;

void Recorder::Append(RecordType type, std::span<const uint8_t> payload, bool compress) {
  if (!error_.empty() || sink_ == nullptr) return;
  eventlog::Status s = sink_->append(type, m_.position(), payload, compress);
  if (!s.ok()) {
    // The writer cut the log back to its last whole record; nothing after this can
    // be replayed, so the run stops here rather than go on unrecorded.
    error_ = s.message();
    log::error("record.log_failed", {{"error", error_}, {"position", m_.position()}});
    m_.stop();
    return;
  }
  ++stats_.records;
}

uint64_t Recorder::input_value(vmm::InputKind kind, uint64_t live) {
  if (kind == vmm::InputKind::kIrqWait) {
    ++stats_.wait_results;
    Append(RecordType::kIrqWaitResult, eventlog::EncodeIrqWaitResult(live));
  } else {
    ++stats_.clock_reads;
    Append(RecordType::kClockRead, eventlog::EncodeClockRead(live));
  }
  return live;
}

bool Recorder::input_bytes(vmm::InputKind, std::span<uint8_t> out, RandomSource& live) {
  bool ok = live.fill(out);
  // Whatever the guest finds in the buffer is what the replica must find too.
  stats_.random_bytes += out.size();
  if (!out.empty()) Append(RecordType::kRngData, out);
  return ok;
}

void Recorder::timer_expired() {
  ++stats_.timer_expiries;
  Append(RecordType::kTimerExpiry, {});
}

void Recorder::frame_received(std::span<const uint8_t> frame) {
  ++stats_.frames;
  stats_.frame_bytes += frame.size();
  Append(RecordType::kPacketRx, frame);
}

int Recorder::disk_request_done(uint16_t head, int host_error) {
  if (host_error != 0) {
    ++stats_.disk_errors;
    Append(RecordType::kDiskError, eventlog::EncodeDiskError({head, uint32_t(host_error)}));
  }
  return host_error;
}

void Recorder::disk_batch_done(uint16_t queue, uint16_t count) {
  if (count == 0) return;
  ++stats_.disk_batches;
  Append(RecordType::kDiskCompletion, eventlog::EncodeDiskCompletion({queue, count}));
}

void Recorder::started(vmm::Machine& m) { last_verify_ns_ = m.clock().monotonic_ns(); }

void Recorder::after_exit(vmm::Machine& m, bool guest_caused) {
  if (!guest_caused) return;
  exit_boundary_ = true;
  if (sink_ != nullptr) sink_->note_position(m.position());
}

uint64_t Recorder::output_mark(vmm::OutputStream stream, uint64_t stream_hash) {
  if (sink_ == nullptr) return 0;
  if (options_.output_checks) {
    ++stats_.output_checks;
    Append(RecordType::kOutputCheck, eventlog::EncodeOutputCheck({uint8_t(stream), stream_hash}));
  }
  // The mark lies past the check: released means the replica also passed it.
  return gate_ == nullptr ? 0 : gate_->mark(sink_->size());
}

bool Recorder::output_released(uint64_t mark) { return gate_ == nullptr || gate_->released(mark); }

bool Recorder::transmit_frame(std::span<const iovec> frame, uint64_t stream_hash) {
  const uint64_t mark = output_mark(vmm::OutputStream::kFrames, stream_hash);
  if (gate_ == nullptr || sink_ == nullptr) return true;
  if (gate_->released(mark)) return true;
  gate_->hold(mark, frame);
  return false;
}

Recorder::SnapshotStart Recorder::snapshot_start(const vmm::PageBitmap* pages,
                                                 std::unique_ptr<vmm::MemoryDigest> memory) {
  CollectDirty();
  if (memory) {
    memory_digest_ = std::move(memory);  // of the same GuestMemory: the sender copied this VM's
  } else {
    memory_digest_->update(since_verify_);
  }
  since_verify_.clear();
  since_checkpoint_.clear();
  SnapshotStart s;
  s.header = header_;
  // The disk as it is now (a disk copied live was checked by its transfer).
  *s.header.mutable_vm() = DescribeVm(m_.config(), m_.backend_name(), pages == nullptr);
  s.header.set_start_position(m_.position());
  s.header.set_continues(true);
  s.header.set_created_unix_ns(0);
  s.header.clear_ftvm_version();
  const std::vector<uint8_t> regs = m_.backend().regs().encode();
  const std::string devices = vmm::DeviceStateBytes(m_);
  const vmm::Sha256Digest d = vmm::StateDigest(
      m_.position(), regs, {reinterpret_cast<const uint8_t*>(devices.data()), devices.size()}, memory_digest_->value());
  s.header.set_initial_state_digest(std::string(d.begin(), d.end()));
  log::info("record.snapshot_start",
            {{"position", m_.position()},
             {"regs", vmm::DigestHex(vmm::Sha256(regs)).substr(0, 16)},
             {"devices", vmm::DigestHex(vmm::Sha256({reinterpret_cast<const uint8_t*>(devices.data()), devices.size()})).substr(0, 16)},
             {"memory", vmm::DigestHex(memory_digest_->value())}});
  if (pages != nullptr) {
    s.checkpoint_parts = vmm::CaptureCheckpoint(m_, *pages);
  } else {
    vmm::PageBitmap all(m_.memory().size() / vmm::kPageSize);
    for (uint64_t p = 0; p < all.pages(); ++p) all.set(p);
    s.checkpoint_parts = vmm::CaptureCheckpoint(m_, all);
  }
  last_verify_ns_ = m_.clock().monotonic_ns();
  // The new log starts here: the replica has no exit at this position, so the
  // next verification belongs to the next exit.
  exit_boundary_ = false;
  return s;
}

bool Recorder::boundary(vmm::Machine& m, bool exact) {
  if (const unsigned throttle = throttle_percent_.load(std::memory_order_relaxed); throttle != 0) {
    // Sleep in proportion to how long the guest ran since the last sleep, so it runs
    // (100 - throttle)% of the time.
    const uint64_t now = m.clock().monotonic_ns();
    if (throttle_mark_ns_ == 0) throttle_mark_ns_ = now;
    const uint64_t ran = now - throttle_mark_ns_;
    if (ran >= 1'000'000) {
      std::this_thread::sleep_for(std::chrono::nanoseconds(ran * throttle / (100 - throttle)));
      throttle_mark_ns_ = m.clock().monotonic_ns();
    }
  } else {
    throttle_mark_ns_ = 0;
  }
  if (exact) {
    // Verification only at the first boundary after an exit: the replica finds that
    // one by the position alone.
    if (std::exchange(exit_boundary_, false) &&
        m.clock().monotonic_ns() - last_verify_ns_ >= options_.verify_interval_ns)
      WriteVerify();
    return false;
  }
  const uint64_t since = m.host_events_waiting_since_ns();
  if (since == 0 || m.clock().monotonic_ns() - since < options_.checkpoint_after_ns) return false;
  // Input has waited too long for an exit: this point becomes the anchor.
  WriteCheckpoint();
  return error_.empty();
}

void Recorder::vector_injected(vmm::Machine&, uint8_t vector) {
  ++stats_.interrupts;
  Append(RecordType::kInterrupt, eventlog::EncodeInterrupt(vector));
}

void Recorder::guest_reset(vmm::Machine& m) {
  ++stats_.guest_resets;
  Append(RecordType::kGuestReset, {});
  // The rebooted guest's first boundary is no verification point (the replica
  // resets inside its boundary hook, after its first-after-exit mark is spent).
  exit_boundary_ = false;
  log::info("record.guest_reset", {{"position", m.position()}});
}

void Recorder::wait_cut(vmm::Machine&) {
  ++stats_.wait_cuts;
  Append(RecordType::kWaitCut, {});
}

void Recorder::CollectDirty() {
  vmm::PageBitmap fresh(since_verify_.pages());
  tracker_->collect(fresh);
  since_verify_.merge(fresh);
  since_checkpoint_.merge(fresh);
  if (written_) written_->merge(fresh);
}

void Recorder::start_write_tracking() {
  // Whatever the tracker holds now predates the copy, which reads every page anyway.
  CollectDirty();
  written_.emplace(since_verify_.pages());
}

vmm::PageBitmap Recorder::take_written_pages() {
  if (!written_) throw Error("internal: take_written_pages without start_write_tracking");
  CollectDirty();
  vmm::PageBitmap out(written_->pages());
  std::swap(out, *written_);
  return out;
}

void Recorder::WriteVerify() {
  const uint64_t t0 = m_.clock().monotonic_ns();
  CollectDirty();
  memory_digest_->update(since_verify_);
  eventlog::Verify v;
  v.regs = m_.backend().regs().encode();
  const std::string devices = vmm::DeviceStateBytes(m_);
  const std::span<const uint8_t> device_bytes(reinterpret_cast<const uint8_t*>(devices.data()), devices.size());
  v.devices = vmm::Sha256(device_bytes);
  v.memory = memory_digest_->value();
  v.digest = vmm::StateDigest(m_.position(), v.regs, device_bytes, v.memory);
  v.dirty_pages = since_verify_.count();
  v.pages.reserve(v.dirty_pages);
  since_verify_.for_each([&](uint64_t p) { v.pages.push_back({uint32_t(p), uint16_t(memory_digest_->page_hash32(p))}); });
  Append(RecordType::kVerify, eventlog::EncodeVerify(v), /*compress=*/true);
  stats_.verify_pages += v.dirty_pages;
  ++stats_.verifications;
  verifications_published_.store(stats_.verifications, std::memory_order_relaxed);
  since_verify_.clear();
  since_checkpoint_.clear();
  // A recorder killed outright loses at most one interval of log.
  if (sink_ != nullptr) {
    if (eventlog::Status s = sink_->flush(); !s.ok() && error_.empty()) {
      error_ = s.message();
      m_.stop();
    }
  }
  last_verify_ns_ = m_.clock().monotonic_ns();
  stats_.verify_ns += last_verify_ns_ - t0;
}

void Recorder::WriteCheckpoint() {
  const uint64_t t0 = m_.clock().monotonic_ns();
  CollectDirty();
  std::vector<std::string> parts = vmm::CaptureCheckpoint(m_, since_checkpoint_);
  for (const std::string& p : parts)
    Append(RecordType::kCheckpoint, {reinterpret_cast<const uint8_t*>(p.data()), p.size()}, /*compress=*/true);
  stats_.checkpoint_pages += since_checkpoint_.count();
  ++stats_.checkpoints;
  checkpoints_published_.store(stats_.checkpoints, std::memory_order_relaxed);
  since_checkpoint_.clear();
  stats_.checkpoint_ns += m_.clock().monotonic_ns() - t0;
  log::debug("record.checkpoint", {{"position", m_.position()}, {"parts", parts.size()}});
}

void Recorder::finished(vmm::Machine& m, bool exact, bool completed) {
  stats_.final_position = m.position();
  if (completed && error_.empty()) {
    // A stop the replica cannot find by position (a signal while the guest
    // computed) is anchored like any other: with a checkpoint.
    if (!exact) WriteCheckpoint();
    CollectDirty();
    memory_digest_->update(since_verify_);
    const std::vector<uint8_t> regs = m.backend().regs().encode();
    const std::string devices = vmm::DeviceStateBytes(m);
    final_digest_ = vmm::StateDigest(m.position(), regs,
                                     {reinterpret_cast<const uint8_t*>(devices.data()), devices.size()},
                                     memory_digest_->value());
    log_ended_.store(true, std::memory_order_release);
    Append(RecordType::kEnd, eventlog::EncodeEnd(*final_digest_));
  }
  if (sink_ != nullptr) {
    if (eventlog::Status s = sink_->close(); !s.ok() && error_.empty()) error_ = s.message();
    stats_.log_bytes = sink_->size();
  }
  log::info("record.finished", {{"position", m.position()},
                                {"records", stats_.records},
                                {"log_bytes", stats_.log_bytes},
                                {"checkpoints", stats_.checkpoints},
                                {"verifications", stats_.verifications},
                                {"final_digest", final_digest_ ? vmm::DigestHex(*final_digest_) : "-"}});
}

}  // namespace ftvm::primary
