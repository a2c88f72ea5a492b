#include "secondary/replayer.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <unordered_set>
#include <utility>

#include "common/error.h"
#include "common/hex.h"
#include "common/log.h"

namespace ftvm::secondary {

namespace {
// A log of a VM that was already running when it started.
bool OpensWithCheckpoint(const eventlog::LogHeader& h) { return h.continues() || h.start_position() != 0; }
}  // namespace

using eventlog::Record;
using eventlog::RecordType;

std::string_view ReplayOutcomeName(ReplayOutcome outcome) {
  switch (outcome) {
    case ReplayOutcome::kIdentical: return "identical";
    case ReplayOutcome::kDiverged: return "diverged";
    case ReplayOutcome::kIncomplete: return "incomplete";
    case ReplayOutcome::kBadLog: return "bad log";
    case ReplayOutcome::kWentLive: return "went live";
  }
  return "?";
}

Replayer::Replayer(vmm::Machine& machine, RecordSource& source, ReplayOptions options)
    : m_(machine), source_(source), options_(std::move(options)) {
  if (m_.config().mode != vmm::ExecutionMode::kReplay)
    throw Error("internal: the replayer needs a machine configured for replay");
  const uint64_t pages = m_.memory().size() / vmm::kPageSize;
  since_verify_ = vmm::PageBitmap(pages);
  if (options_.verify) {
    tracker_ = m_.backend().make_dirty_tracker();
    tracker_->collect(since_verify_);
    since_verify_.clear();
  }
  // A log that opens with a checkpoint rewrites memory first and hashes it then.
  if (!OpensWithCheckpoint(source_.header())) memory_digest_ = std::make_unique<vmm::MemoryDigest>(m_.memory());
}

Replayer::~Replayer() = default;

void Replayer::adopt_memory_digest(std::unique_ptr<vmm::MemoryDigest> digest) {
  memory_digest_ = std::move(digest);
  // Without a dirty tracker, the checkpoint's writes are found where the VMM notes
  // its own writes.
  if (!tracker_) m_.memory().track_vmm_writes(true);
}

// ---- The log cursor ---------------------------------------------------------------

const Record* Replayer::Peek() {
  if (have_head_) return &head_;
  if (log_done_ || live_) return nullptr;
  eventlog::ReadResult r;
  switch (source_.next(head_, m_.position(), r)) {
    case RecordSource::Next::kRecord: have_head_ = true; return &head_;
    case RecordSource::Next::kNotYet: return nullptr;
    case RecordSource::Next::kEnd: break;
  }
  log_done_ = true;
  if (!r.is_error()) return nullptr;
  // Nothing after a damaged or cut record can be trusted: stop here.
  Fail(r.code == eventlog::ReadCode::kTruncated ? ReplayOutcome::kIncomplete : ReplayOutcome::kBadLog,
       r.message + "; the replica reached position " + std::to_string(m_.position()));
  return nullptr;
}

const Record* Replayer::HeadHere() {
  const Record* h = Peek();
  return h != nullptr && h->position == m_.position() ? h : nullptr;
}

void Replayer::Consume() {
  if (!have_head_) return;
  last_replayed_ = Describe(head_);
  have_head_ = false;
  ++stats_.records;
  consumed_.store(head_.offset + head_.stored_bytes, std::memory_order_release);
}

std::string Replayer::Describe(const Record& r) const {
  return eventlog::RecordTypeName(r.type) + " at position " + std::to_string(r.position) + " (log offset " +
         std::to_string(r.offset) + ")";
}

const Record* Replayer::Expect(RecordType type, const char* doing) {
  if (stopped_) return nullptr;
  const Record* h = Peek();
  if (h != nullptr && h->type == type && h->position == m_.position()) return h;
  if (stopped_) return nullptr;
  if (h == nullptr) {
    Exhausted(std::string("where the replica ") + doing + " at position " + std::to_string(m_.position()));
  } else {
    Diverge(std::string("the replica ") + doing + ", but the log has " + Describe(*h));
  }
  return nullptr;
}

void Replayer::interrupt() {
  source_.interrupt();
  m_.stop();
}

void Replayer::Exhausted(const std::string& where) {
  if (stopped_ || live_) return;
  const std::string what = "the log ends without an End record (last record at position " +
                           std::to_string(source_.last_position()) + ") " + where;
  if (!options_.go_live) {
    Fail(ReplayOutcome::kIncomplete, what + ": the recording was cut short");
    return;
  }
  // Nothing outside this replica can hold the dirty-page tracking now. Outputs not
  // yet checked were never released by the primary: this replica's are the real ones.
  tracker_.reset();
  unchecked_.clear();
  stats_.final_position = m_.position();
  if (options_.go_live(m_)) {
    live_ = true;
    stopped_ = true;
    outcome_ = ReplayOutcome::kWentLive;
    message_ = "went live at position " + std::to_string(m_.position()) + ": " + what;
    log::warn("replay.went_live", {{"position", m_.position()}, {"records", stats_.records}});
  } else {
    Fail(ReplayOutcome::kIncomplete, what + ": the replica stops (it must not take over)");
  }
}

void Replayer::Fail(ReplayOutcome outcome, const std::string& message) {
  if (stopped_) return;
  stopped_ = true;
  outcome_ = outcome;
  message_ = message;
  stats_.final_position = m_.position();
  if (outcome == ReplayOutcome::kDiverged)
    Diverged();
  else
    log::error("replay.stopped", {{"outcome", ReplayOutcomeName(outcome)}, {"detail", message}});
  m_.stop();
}

void Replayer::Diverged() {
  log::event(log::Level::kError, "replay.diverged", {{"position", m_.position()}, {"detail", message_}});
  if (options_.on_diverged) options_.on_diverged(message_);
}

void Replayer::Diverge(const std::string& what) {
  Fail(ReplayOutcome::kDiverged, "diverged at position " + std::to_string(m_.position()) + ": " + what +
                                     "; last replayed: " + last_replayed_);
}

// ---- Inputs during exits ------------------------------------------------------------

uint64_t Replayer::input_value(vmm::InputKind kind, uint64_t live) {
  const bool wait = kind == vmm::InputKind::kIrqWait;
  const Record* r = Expect(wait ? RecordType::kIrqWaitResult : RecordType::kClockRead,
                           wait ? "returned from WAIT" : "read the clock");
  if (r == nullptr) return live;  // stopping, or gone live: the host's value it is
  std::optional<uint64_t> v =
      wait ? eventlog::DecodeIrqWaitResult(r->payload) : eventlog::DecodeClockRead(r->payload);
  if (!wait && v) last_clock_[kind == vmm::InputKind::kClockWall ? 1 : 0] = *v;
  Consume();
  return v.value_or(live);  // the reader checked the size: always present
}

bool Replayer::input_bytes(vmm::InputKind, std::span<uint8_t> out, RandomSource& live) {
  const Record* r = Expect(RecordType::kRngData, "read random bytes");
  if (r == nullptr) return live_ ? live.fill(out) : true;
  if (r->payload.size() != out.size()) {
    Diverge("the replica read " + std::to_string(out.size()) + " random bytes, the primary " +
            std::to_string(r->payload.size()));
    return true;
  }
  std::memcpy(out.data(), r->payload.data(), out.size());
  Consume();
  return true;
}

int Replayer::disk_request_done(uint16_t head, int host_error) {
  const Record* h = HeadHere();
  if (h != nullptr && h->type == RecordType::kDiskError) {
    std::optional<eventlog::DiskError> e = eventlog::DecodeDiskError(h->payload);
    if (e && e->head == head) {
      Consume();
      return int(e->error);  // the primary's disk failed this request: so does the replica's guest
    }
  }
  if (host_error != 0) {
    Fail(ReplayOutcome::kDiverged, "the replica's own disk failed a request at position " +
                                       std::to_string(m_.position()) + " (" + std::strerror(host_error) +
                                       ") that succeeded on the primary");
  }
  return host_error;
}

uint64_t Replayer::output_mark(vmm::OutputStream stream, uint64_t stream_hash) {
  if (!source_.header().output_checks() || stopped_ || live_) return 0;
  unchecked_.push_back({stream, stream_hash});
  MatchOutputChecks();
  return 0;
}

namespace {
std::string OutputName(vmm::OutputStream stream) {
  return stream == vmm::OutputStream::kFrames ? "transmitted frames" : "disk writes";
}
}  // namespace

void Replayer::MatchOutputChecks() {
  while (!unchecked_.empty() && !stopped_) {
    const Record* h = HeadHere();
    if (h == nullptr || h->type != RecordType::kOutputCheck) return;
    const UncheckedOutput mine = unchecked_.front();
    const std::optional<eventlog::OutputCheck> c = eventlog::DecodeOutputCheck(h->payload);
    if (!c || c->stream != uint8_t(mine.stream)) {
      Diverge("the replica's next output is of its " + OutputName(mine.stream) + ", but the log checks " +
              (c && c->stream == uint8_t(vmm::OutputStream::kFrames) ? "a transmitted frame" : "a disk write") +
              " (" + Describe(*h) + ")");
      return;
    }
    if (c->hash != mine.hash) {
      Diverge("the replica's " + OutputName(mine.stream) + " hash " + Hex(mine.hash) + ", the primary's " +
              Hex(c->hash) + " (" + Describe(*h) + "): the outputs differ");
      return;
    }
    unchecked_.pop_front();
    ++stats_.output_checks;
    Consume();
  }
}

// ---- The run loop -------------------------------------------------------------------

void Replayer::started(vmm::Machine& m) {
  if (OpensWithCheckpoint(source_.header())) {
    const uint64_t start = source_.header().start_position();
    // A log of a VM that was already running: it opens with a checkpoint of all of
    // it, which this replica (booted from the image) takes on before it runs.
    m.set_position(start);
    bool complete = false;
    while (!complete && !stopped_) {
      const Record* h = Peek();
      if (h == nullptr || h->type != RecordType::kCheckpoint || h->position != start) {
        Fail(ReplayOutcome::kBadLog, "a log starting at position " + std::to_string(start) +
                                         " must open with a checkpoint there, not " +
                                         (h == nullptr ? std::string("nothing") : Describe(*h)));
        return;
      }
      try {
        complete = checkpoints_.add(m, h->payload);
      } catch (const Error& e) {
        Fail(ReplayOutcome::kBadLog, "cannot apply the opening " + Describe(*h) + ": " + e.what());
        return;
      }
      Consume();
    }
    if (stopped_) return;
    ++stats_.checkpoints;
    checkpoints_published_.store(stats_.checkpoints, std::memory_order_relaxed);
    if (options_.memory_arrives_later) {
      // Nothing may read memory now: it is not here yet.
      initial_position_ = m.position();
      initial_regs_ = m.backend().regs().encode();
      initial_devices_ = vmm::DeviceStateBytes(m);
      // Nor may the replica run a single instruction: it waits here for the log's
      // end (the handover, or the primary lost), and then goes live or stops.
      while (!stopped_ && !log_done_) {
        if (const Record* h = Peek(); h != nullptr) {
          Fail(ReplayOutcome::kBadLog, "a post-copy log holds nothing after its opening checkpoint, not " + Describe(*h));
          return;
        }
        usleep(100);
      }
      return;
    }
    const uint64_t t0 = m.clock().monotonic_ns();
    // The pages the checkpoint rewrote.
    if (tracker_) {
      tracker_->collect(since_verify_);
    } else {
      m.memory().take_vmm_writes(since_verify_);
    }
    if (memory_digest_) {
      memory_digest_->update(since_verify_);  // adopted: current but for those pages
    } else {
      memory_digest_ = std::make_unique<vmm::MemoryDigest>(m.memory());
    }
    since_verify_.clear();
    log::debug("replay.opening_checkpoint", {{"digest_ms", double(m.clock().monotonic_ns() - t0) / 1e6}});
  }
  std::vector<uint8_t> regs = m.backend().regs().encode();
  const std::string devices = vmm::DeviceStateBytes(m);
  vmm::Sha256Digest initial = vmm::StateDigest(
      m.position(), regs, {reinterpret_cast<const uint8_t*>(devices.data()), devices.size()}, memory_digest_->value());
  log::info("replay.initial_state",
            {{"position", m.position()},
             {"regs", vmm::DigestHex(vmm::Sha256(regs)).substr(0, 16)},
             {"devices", vmm::DigestHex(vmm::Sha256({reinterpret_cast<const uint8_t*>(devices.data()), devices.size()})).substr(0, 16)},
             {"memory", vmm::DigestHex(memory_digest_->value())}});
  const std::string& logged = source_.header().initial_state_digest();
  if (logged.size() != initial.size() || std::memcmp(logged.data(), initial.data(), initial.size()) != 0) {
    Fail(ReplayOutcome::kBadLog, "the replica's initial state differs from the recorded VM's (digest " +
                                     vmm::DigestHex(initial) + ", log " +
                                     vmm::DigestHex({reinterpret_cast<const uint8_t*>(logged.data()), logged.size()}) +
                                     "): another guest image, configuration or ftvm build?");
  }
}

std::string Replayer::check_initial_memory(const vmm::MemorySum& memory) const {
  const vmm::Sha256Digest initial = vmm::StateDigest(
      initial_position_, initial_regs_,
      {reinterpret_cast<const uint8_t*>(initial_devices_.data()), initial_devices_.size()}, memory);
  const std::string& logged = source_.header().initial_state_digest();
  if (logged.size() == initial.size() && std::memcmp(logged.data(), initial.data(), initial.size()) == 0) return "";
  return "the VM's state as it arrived (digest " + vmm::DigestHex(initial) + ", memory " + vmm::DigestHex(memory) +
         ") is not the state it left (" +
         vmm::DigestHex({reinterpret_cast<const uint8_t*>(logged.data()), logged.size()}) + ")";
}

void Replayer::after_exit(vmm::Machine& m, bool guest_caused) {
  if (!guest_caused) return;
  replayed_position_.store(m.position(), std::memory_order_release);
  exit_boundary_ = true;
  const Record* h = Peek();
  if (h != nullptr && h->position < m.position())
    Diverge("the replica is past position " + std::to_string(h->position) + ", but the log still has " + Describe(*h) +
            " there");
}

bool Replayer::apply_device_events(vmm::Machine& m, bool one) {
  bool applied = false;
  while (!stopped_) {
    const Record* h = HeadHere();
    if (h != nullptr && h->type == RecordType::kOutputCheck && !unchecked_.empty()) {
      MatchOutputChecks();
      continue;
    }
    if (one && !applied && h != nullptr && h->type == RecordType::kWaitCut) {
      // The primary ended this wait for a task of its VMM: so does the replica.
      Consume();
      ++stats_.wait_cuts;
      return false;
    }
    if (h == nullptr || (h->type != RecordType::kTimerExpiry && h->type != RecordType::kPacketRx &&
                         h->type != RecordType::kDiskCompletion))
      break;
    std::string why;
    bool ok = false;
    if (h->type == RecordType::kTimerExpiry) {
      ok = m.replay_timer_expiry(why);
    } else if (h->type == RecordType::kPacketRx) {
      ok = m.replay_frame(h->payload, why);
    } else {
      std::optional<eventlog::DiskCompletion> c = eventlog::DecodeDiskCompletion(h->payload);
      ok = c && m.replay_disk_completion(c->queue, c->count, why);
    }
    if (!ok) {
      Diverge(why);
      return false;
    }
    if (h->type == RecordType::kPacketRx) ++stats_.frames;
    Consume();
    applied = true;
    if (one) break;
  }
  if (!applied && one && !stopped_ && !live_) {
    // The guest blocks for an interrupt here; on the primary something woke it.
    const Record* h = Peek();
    if (h == nullptr) {
      if (!stopped_) Exhausted("where the replica waits for input at position " + std::to_string(m.position()));
    } else if (h->type == RecordType::kEnd && h->position == m.position()) {
      m.stop();  // the primary was stopped while it waited here
    } else {
      Diverge("the replica waits for an interrupt, but the log has " + Describe(*h));
    }
  }
  return applied;
}

bool Replayer::boundary(vmm::Machine& m, bool exact) {
  const bool first_after_exit = std::exchange(exit_boundary_, false);
  if (!unchecked_.empty() && !stopped_) {
    MatchOutputChecks();
    const Record* h = Peek();
    if (!unchecked_.empty() && !stopped_ && !(h == nullptr && log_done_)) {
      Diverge("the replica produced an output of its " + OutputName(unchecked_.front().stream) + " (hash " +
              Hex(unchecked_.front().hash) + ") that the primary did not log at this position; the log has " +
              (h == nullptr ? std::string("nothing more here") : Describe(*h)));
    }
  }
  bool restored = false;
  while (!stopped_) {
    const Record* h = Peek();
    if (h == nullptr && log_done_ && !stopped_) {
      // The log ends without an End record (a recorder that crashed or was cut
      // off): past its last record the replica would be guessing.
      Exhausted("at position " + std::to_string(m.position()));
      break;
    }
    if (h == nullptr || h->position > m.position()) break;
    if (h->position < m.position()) {
      Diverge("the log still has " + Describe(*h) + ", a position the replica has passed");
      break;
    }
    if (h->type == RecordType::kCheckpoint) {
      try {
        if (checkpoints_.add(m, h->payload)) {
          restored = true;
          ++stats_.checkpoints;
          checkpoints_published_.store(stats_.checkpoints, std::memory_order_relaxed);
        }
      } catch (const Error& e) {
        Fail(ReplayOutcome::kBadLog, "cannot apply " + Describe(*h) + ": " + e.what());
        break;
      }
      Consume();
      // Applied: the machine now services its devices (the events logged after the
      // checkpoint) and injects, as the primary did at that point.
      if (restored) break;
      continue;
    }
    if (checkpoints_.in_progress()) {
      Fail(ReplayOutcome::kBadLog, "a checkpoint's parts are interrupted by " + Describe(*h));
      break;
    }
    if (h->type == RecordType::kGuestReset) {
      // The primary reset its hung guest here: so does the replica, which then
      // boots again in lockstep (the reset state depends on nothing but the image).
      Consume();
      try {
        m.reset_guest("the primary reset its hung guest at this position");
      } catch (const Error& e) {
        Fail(ReplayOutcome::kDiverged, "cannot reset the replica's guest at position " +
                                           std::to_string(m.position()) + ": " + e.what());
        break;
      }
      ++stats_.guest_resets;
      restored = true;
      break;
    }
    if (h->type == RecordType::kVerify) {
      if (!exact || !first_after_exit) {
        Diverge("the log has " + Describe(*h) + " but the replica is not at the first boundary after that exit");
        break;
      }
      Record r = *h;
      Consume();
      if (options_.verify) Verify(r);
      continue;
    }
    if (h->type == RecordType::kEnd) m.stop();
    else if (h->type != RecordType::kInterrupt)
      Diverge("the log has " + Describe(*h) + ", which the replica should have consumed during that exit");
    break;  // an Interrupt is taken when the replica injects it
  }
  if (restored) stats_.checkpoint_pages = checkpoints_.pages_applied();
  return restored;
}

void Replayer::vector_injected(vmm::Machine&, uint8_t vector) {
  const std::string doing = "injected vector " + std::to_string(vector);
  const Record* r = Expect(RecordType::kInterrupt, doing.c_str());
  if (r == nullptr) return;
  std::optional<uint8_t> logged = eventlog::DecodeInterrupt(r->payload);
  if (logged != vector) {
    Diverge("the replica injected vector " + std::to_string(vector) + ", the primary vector " +
            std::to_string(logged.value_or(0)));
    return;
  }
  ++stats_.interrupts;
  Consume();
}

// ---- Digests ------------------------------------------------------------------------

vmm::Sha256Digest Replayer::CurrentDigest(vmm::MemorySum* memory) {
  if (tracker_ && memory_digest_) {
    tracker_->collect(since_verify_);
    memory_digest_->update(since_verify_);
  } else {
    memory_digest_ = std::make_unique<vmm::MemoryDigest>(m_.memory());  // no tracking: hash it all
  }
  const std::vector<uint8_t> regs = m_.backend().regs().encode();
  const std::string devices = vmm::DeviceStateBytes(m_);
  vmm::MemorySum sum = memory_digest_->value();
  if (memory != nullptr) *memory = sum;
  return vmm::StateDigest(m_.position(), regs, {reinterpret_cast<const uint8_t*>(devices.data()), devices.size()},
                          sum);
}

void Replayer::Verify(const Record& r) {
  const uint64_t t0 = m_.clock().monotonic_ns();
  std::optional<eventlog::Verify> v = eventlog::DecodeVerify(r.payload);
  if (!v) {
    Fail(ReplayOutcome::kBadLog, Describe(r) + " does not decode");
    return;
  }
  vmm::MemorySum memory;
  vmm::Sha256Digest mine = CurrentDigest(&memory);
  stats_.verify_pages += since_verify_.count();
  stats_.verify_ns += m_.clock().monotonic_ns() - t0;
  if (mine == v->digest) {
    ++stats_.verifications;
    verifications_published_.store(stats_.verifications, std::memory_order_relaxed);
    since_verify_.clear();
    return;
  }
  // Name the first thing that differs: a register, the device state, or a page.
  std::string what;
  const vmm::VcpuRegs regs = m_.backend().regs();
  std::optional<vmm::VcpuRegs> theirs = vmm::VcpuRegs::decode(v->regs);
  const std::string devices = vmm::DeviceStateBytes(m_);
  if (!theirs) {
    what = "the vCPU registers differ (the log's are in another layout)";
  } else if (!(regs == *theirs)) {
    what = "register " + vmm::VcpuRegs::first_difference(regs, *theirs);
  } else if (vmm::Sha256({reinterpret_cast<const uint8_t*>(devices.data()), devices.size()}) != v->devices) {
    what = "the device state differs";
  } else if (memory != v->memory) {
    std::unordered_set<uint32_t> theirs_pages;
    for (const eventlog::PageHash& p : v->pages) {
      theirs_pages.insert(p.page);
      if (what.empty() && uint16_t(memory_digest_->page_hash32(p.page)) != p.hash)
        what = "memory page " + std::to_string(p.page) + " (gpa " + Hex(uint64_t(p.page) * vmm::kPageSize) + ") differs";
    }
    if (what.empty()) {
      since_verify_.for_each([&](uint64_t p) {
        if (what.empty() && !theirs_pages.count(uint32_t(p)))
          what = "memory page " + std::to_string(p) + " (gpa " + Hex(p * vmm::kPageSize) +
                 ") was written on the replica only";
      });
    }
    if (what.empty()) what = "memory differs in a page neither side wrote since the last verification";
  } else {
    what = "the state digest differs";
  }
  Diverge("verification failed: " + what + " (replica digest " + vmm::DigestHex(mine).substr(0, 16) + ", primary " +
          vmm::DigestHex(v->digest).substr(0, 16) + ")");
}

void Replayer::finished(vmm::Machine& m, bool, bool completed) {
  if (stats_.final_position == 0) stats_.final_position = m.position();
  if (stopped_) return;
  if (!completed) {
    Fail(ReplayOutcome::kDiverged, "the replica's VM failed at position " + std::to_string(m.position()));
    return;
  }
  const Record* h = Peek();
  if (stopped_) return;
  if (h == nullptr) {
    outcome_ = ReplayOutcome::kIncomplete;
    message_ = "the log ends without an End record (the recording was cut short); the replica ran to position " +
               std::to_string(m.position());
    final_digest_ = CurrentDigest();
    return;
  }
  if (h->type != RecordType::kEnd || h->position != m.position()) {
    outcome_ = ReplayOutcome::kDiverged;
    message_ = "diverged at position " + std::to_string(m.position()) + ": the replica stopped there, but the log "
               "continues with " + Describe(*h) + "; last replayed: " + last_replayed_;
    Diverged();
    return;
  }
  std::optional<eventlog::Digest> logged = eventlog::DecodeEnd(h->payload);
  Consume();
  final_digest_ = CurrentDigest();
  if (logged && *logged == *final_digest_) {
    outcome_ = ReplayOutcome::kIdentical;
    message_ = "identical";
  } else {
    outcome_ = ReplayOutcome::kDiverged;
    message_ = "diverged at position " + std::to_string(m.position()) + ": the final state differs (replica " +
               vmm::DigestHex(*final_digest_) + ", primary " + (logged ? vmm::DigestHex(*logged) : "?") + ")";
    Diverged();
  }
  // A record after End is refused by the reader itself.
  Peek();
}

}  // namespace ftvm::secondary
