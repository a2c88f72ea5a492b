#include "primary/protected_primary.h"

#include <unistd.h>

#include <cstring>
#include <optional>
#include <utility>

#include "common/error.h"
#include "common/log.h"
#include "failover/witness.h"
#include "migration/postcopy.h"
#include "eventlog/format.h"
#include "primary/log_header.h"
#include "primary/protocol.h"

#ifndef FTVM_VERSION
#define FTVM_VERSION "unknown"
#endif

namespace ftvm::primary {

std::string_view ProtectionName(Protection p) {
  switch (p) {
    case Protection::kWaiting: return "waiting for a secondary";
    case Protection::kProtected: return "protected";
    case Protection::kUnprotected: return "UNPROTECTED";
    case Protection::kStoppedForPeer: return "stopped (the secondary took over)";
  }
  return "?";
}

ProtectedPrimary::ProtectedPrimary(vmm::VmConfig config, PrimaryOptions options, Clock& clock, RandomSource& random)
    : options_(std::move(options)), clock_(clock) {
  if (options_.listen.empty()) throw Error("a protected primary needs a channel address to listen on (--listen)");
  if (options_.arbiter_dir.empty()) throw Error("a protected primary needs an arbiter directory (--arbiter)");
  arbiter_ = failover::MakeDirectoryArbiter(options_.arbiter_dir);
  // Strict: the replica checks every output against the log before acknowledging it.
  options_.recorder.output_checks = options_.strict_outputs;
  config.mode = vmm::ExecutionMode::kRecord;
  owned_machine_ = std::make_unique<vmm::Machine>(config, clock, random);
  m_ = owned_machine_.get();
  recorder_ = std::make_unique<Recorder>(*m_, options_.recorder);
  m_->set_hooks(recorder_.get());
  gate_ = std::make_unique<OutputGate>(
      clock_, [this](std::span<const uint8_t> frame) { m_->send_frame(frame); }, [this] { m_->notify_host_event(); },
      [this] {
        if (streamer_) streamer_->flush().ok();
      });
  recorder_->set_output_gate(gate_.get());
  // This primary's own generation: a pair that meets later runs in it, and whichever
  // side survives the other claims the next.
  generation_ = arbiter_->current_generation() + 1;
  for (int tries = 0; !arbiter_->try_claim(generation_, options_.name); ++tries) {
    if (tries == 100) throw Error("arbiter " + arbiter_->describe() + ": cannot claim a new generation");
    ++generation_;
  }
  listener_ = transport::Listen(options_.listen);
  report_.generation = generation_;
  log::info("primary.ready", {{"listen", listener_->address()},
                              {"arbiter", arbiter_->describe()},
                              {"generation", generation_}});
}

ProtectedPrimary::ProtectedPrimary(vmm::Machine& machine, std::unique_ptr<Recorder> recorder, uint64_t generation,
                                   PrimaryOptions options, Clock& clock)
    : options_(std::move(options)), clock_(clock), m_(&machine), recorder_(std::move(recorder)),
      generation_(generation) {
  if (options_.listen.empty()) throw Error("re-protection needs a channel address to listen on (--listen)");
  arbiter_ = failover::MakeDirectoryArbiter(options_.arbiter_dir);
  gate_ = std::make_unique<OutputGate>(
      clock_, [this](std::span<const uint8_t> frame) { m_->send_frame(frame); }, [this] { m_->notify_host_event(); },
      [this] {
        if (streamer_) streamer_->flush().ok();
      });
  gate_->open();  // nobody to wait for yet
  recorder_->set_output_gate(gate_.get());
  listener_ = transport::Listen(options_.listen);
  report_.generation = generation_;
  report_.protection = Protection::kUnprotected;
  report_.event = "took over the VM; waiting for a new secondary on " + listener_->address();
  log::info("primary.ready", {{"listen", listener_->address()}, {"generation", generation_}, {"taken_over", true}});
}

ProtectedPrimary::~ProtectedPrimary() {
  stopping_ = true;
  if (channel_) channel_->close();
  if (monitor_.joinable()) monitor_.join();
  if (acceptor_.joinable()) acceptor_.join();
  std::lock_guard<std::mutex> lock(handover_mu_);
  if (handover_.joinable()) handover_.join();
}

void ProtectedPrimary::SetProtection(Protection p, const std::string& event) {
  std::lock_guard<std::mutex> lock(mu_);
  report_.protection = p;
  report_.event = event;
}

bool ProtectedPrimary::accept_secondary() {
  log::info("primary.waiting", {{"listen", listener_->address()}});
  channel_ = listener_->accept(options_.wait_for_secondary);
  auto unprotected = [&](const std::string& why) {
    log::event(log::Level::kError, "primary.unprotected", {{"reason", why}});
    if (channel_) channel_->close();
    channel_.reset();
    gate_->open();
    SetProtection(Protection::kUnprotected, why);
    return false;
  };
  if (!channel_) return unprotected("no secondary connected in time");

  const std::vector<uint8_t> header = eventlog::EncodeFileHeader(recorder_->header());
  replication::HelloReply reply;
  if (std::string why = Handshake(*channel_, header, false, reply); !why.empty()) return unprotected(why);
  const std::string& name = reply.secondary_name();
  auto streamer = std::make_unique<LogStreamer>(*channel_, header.size(), clock_, options_.streamer);
  recorder_->attach(streamer.get());
  std::unique_ptr<transport::Channel> ch = std::move(channel_);
  StartProtection(std::move(ch), std::move(streamer), name, true);
  return true;
}

std::string ProtectedPrimary::Handshake(transport::Channel& channel, const std::vector<uint8_t>& header, bool snapshot,
                                        replication::HelloReply& hr) {
  replication::Hello hello;
  hello.set_protocol_version(replication::kProtocolVersion);
  hello.set_ftvm_version(FTVM_VERSION);
  hello.set_log_header(header.data(), header.size());
  hello.set_generation(generation_);
  hello.set_heartbeat_interval_ns(options_.liveness.heartbeat_interval_ns);
  hello.set_failure_timeout_ns(options_.liveness.failure_timeout_ns);
  hello.set_primary_name(options_.name);
  hello.set_strict_outputs(options_.strict_outputs);
  hello.set_snapshot(snapshot);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (protected_) hello.set_protected_by(secondary_name_);
  }
  const std::string bytes = hello.SerializeAsString();
  transport::SendResult s = channel.send(
      replication::kHello, {reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, options_.handshake_timeout);
  if (!s.ok()) return "sending the hello to " + channel.peer() + ": " + s.message;
  transport::Message reply;
  transport::RecvResult r = channel.recv(reply, options_.handshake_timeout);
  if (r.timed_out()) return "the secondary at " + channel.peer() + " did not answer the hello";
  if (!r.is_message()) return "handshake with " + channel.peer() + ": " + r.message;
  if (reply.type() != replication::kHelloReply || !hr.ParseFromArray(reply.payload().data(), int(reply.size())))
    return "the peer at " + channel.peer() + " does not speak the ftvm replication protocol";
  if (hr.protocol_version() != replication::kProtocolVersion)
    return "the secondary speaks replication protocol " + std::to_string(hr.protocol_version()) + ", this primary " +
           std::to_string(replication::kProtocolVersion);
  if (!hr.accepted()) return "the secondary refused: " + hr.reason();
  return "";
}

void ProtectedPrimary::StartProtection(std::unique_ptr<transport::Channel> channel,
                                       std::unique_ptr<LogStreamer> streamer, const std::string& name,
                                       bool start_monitor) {
  // The previous secondary's monitor has ended (it declared it lost).
  if (monitor_.joinable()) monitor_.join();
  old_channel_ = std::move(channel_);
  channel_ = std::move(channel);
  {
    // status() reads these from the control thread.
    std::lock_guard<std::mutex> lock(mu_);
    old_streamer_ = std::move(streamer_);
    streamer_ = std::move(streamer);
    liveness_ = std::make_unique<failover::PeerLiveness>(clock_, options_.liveness);
  }
  lost_ = false;
  protected_ = true;
  SetProtection(Protection::kProtected, "secondary " + name + " at " + channel_->peer());
  {
    std::lock_guard<std::mutex> lock(mu_);
    secondary_name_ = name;
  }
  log::event(log::Level::kInfo, "primary.protected", {{"secondary", name},
                                  {"peer", channel_->peer()},
                                  {"channel", channel_->kind()},
                                  {"generation", generation_}});
  if (start_monitor) monitor_ = std::thread([this] { MonitorLoop(); });
}

void ProtectedPrimary::serve_reprotection() {
  if (!acceptor_.joinable()) acceptor_ = std::thread([this] { AcceptLoop(); });
}

void ProtectedPrimary::AcceptLoop() {
  while (!stopping_) {
    // A protected VM still hears newcomers: one that would move the VM may (the hello
    // tells the others it is protected, and they decline).
    if (lost_ && report().protection == Protection::kStoppedForPeer) {
      usleep(50000);
      continue;
    }
    std::unique_ptr<transport::Channel> ch;
    try {
      ch = listener_->accept(std::chrono::milliseconds(200));
    } catch (const Error& e) {
      log::error("primary.accept_failed", {{"error", e.what()}});
      usleep(200000);
      continue;
    }
    if (ch && !stopping_) AttachLive(std::move(ch));
  }
}

namespace {

// The running VM as a live copy sees it: the recorder runs tasks at its boundaries
// and notes the pages it writes; the machine notes disk writes.
class RecordingVm final : public migration::RunningVm {
 public:
  RecordingVm(vmm::Machine& m, Recorder& r) : m_(m), r_(r) {}
  vmm::GuestMemory& memory() override { return m_.memory(); }
  const std::string& disk_path() const override { return m_.config().disk; }
  bool at_boundary(const std::function<void()>& task) override {
    return m_.run_at_boundary(task);
  }
  void start_write_tracking(vmm::PageBitmap* disk_blocks) override {
    r_.start_write_tracking();
    m_.track_disk_writes(disk_blocks);
  }
  vmm::PageBitmap take_written_pages() override { return r_.take_written_pages(); }
  void stop_write_tracking() override {
    r_.stop_write_tracking();
    m_.track_disk_writes(nullptr);
  }
  void set_throttle_percent(unsigned percent) override { r_.set_throttle_percent(percent); }
  bool copy_memory_digest(vmm::MemoryDigest& into) override {
    r_.copy_memory_digest(into);
    return true;
  }

 private:
  vmm::Machine& m_;
  Recorder& r_;
};

}  // namespace

bool ProtectedPrimary::AttachLive(std::unique_ptr<transport::Channel> channel) {
  const uint64_t t0 = clock_.monotonic_ns();
  const std::string peer = channel->peer();
  syncing_ = true;
  struct SyncingEnds {
    std::atomic<bool>& flag;
    ~SyncingEnds() { flag = false; }
  } syncing_ends{syncing_};
  auto failed = [&](const std::string& why) {
    log::error("primary.reprotection_failed", {{"peer", peer}, {"reason", why}});
    return false;
  };
  std::string why, name;
  bool take_over = false, postcopy = false;
  RecordingVm vm(*m_, *recorder_);
  std::optional<migration::PrecopySender> sender;
  try {
    // The hello describes the VM; the header of the log that continues it comes
    // with the state, from the pause.
    eventlog::LogHeader described = recorder_->header();
    *described.mutable_vm() = DescribeVm(m_->config(), m_->backend_name(), false);
    replication::HelloReply reply;
    if (why = Handshake(*channel, eventlog::EncodeFileHeader(described), true, reply); !why.empty())
      return failed(why);
    name = reply.secondary_name();
    take_over = reply.take_over();
    // Post-copy: the VM moves first and its memory after (migration/postcopy.h);
    // only a VM that moves can run ahead of its memory.
    postcopy = reply.postcopy();
    if (postcopy && !take_over) return failed("the secondary asked for post-copy without taking the VM over");
    migration::PrecopyOptions precopy = options_.precopy;
    precopy.copy_memory = !postcopy;
    sender.emplace(vm, *channel, clock_, precopy);
    // A secondary back with its old disk: send only what differs.
    if (reply.disk_hash_blocks() != 0)
      sender->set_receiver_disk(
          migration::ReceiveDiskHashes(*channel, reply.disk_hash_blocks(), options_.handshake_timeout));
    log::info("primary.copying_state", {{"secondary", name}, {"peer", peer}});
    if (why = sender->copy_while_running(); !why.empty()) return failed(why);
  } catch (const Error& e) {
    return failed(e.what());
  }
  uint64_t position = 0, pause_ns = 0, snapshot_ns = 0, final_copy_ns = 0;
  // On the vCPU thread, at a boundary: the VM pauses while the rest of the state
  // goes out, so the checkpoint and the log's header describe the same instant.
  auto task = [&] {
    const uint64_t p0 = clock_.monotonic_ns();
    vmm::PageBitmap final_pages;
    if (why = sender->finish_at_boundary(final_pages); !why.empty()) return;
    const uint64_t p1 = clock_.monotonic_ns();
    final_copy_ns = p1 - p0;
    // The checkpoint carries no memory: the last pages went with the state, and
    // post-copy sends them (the pages the VM wrote while the disk was copied) first
    // after the switch.
    const vmm::PageBitmap none(final_pages.pages());
    // A protected VM that moves: its secondary goes first (this snapshot starts a new
    // log, which the old one's stream cannot follow).
    if (take_over && protected_ && !ReleaseSecondary("the VM moves to " + name + " at " + peer)) {
      why = "the old secondary took the VM over first";
      return;
    }
    Recorder::SnapshotStart snap = recorder_->snapshot_start(&none, sender->take_memory_digest());
    // From here memory stays as it is: the destination may ask for pages already
    // while it sets up (HandleMessage answers them in the pause).
    if (postcopy)
      postcopy_ = std::make_unique<migration::PostcopySender>(m_->memory(), *channel, clock_, std::move(final_pages));
    snapshot_ns = clock_.monotonic_ns() - p1;
    position = snap.header.start_position();
    const std::vector<uint8_t> header = eventlog::EncodeFileHeader(snap.header);
    migration::StateManifest manifest;
    manifest.set_log_header(header.data(), header.size());
    manifest.set_postcopy(postcopy);
    manifest.set_generation(generation_);
    if (why = sender->send_manifest(std::move(manifest)); !why.empty()) return;
    auto streamer = std::make_unique<LogStreamer>(*channel, header.size(), clock_, options_.streamer);
    for (const std::string& part : snap.checkpoint_parts) {
      eventlog::Status s = streamer->append(eventlog::RecordType::kCheckpoint, position,
                                            {reinterpret_cast<const uint8_t*>(part.data()), part.size()}, true);
      if (!s.ok()) {
        why = s.message();
        return;
      }
    }
    gate_->protect(header.size());
    recorder_->attach(streamer.get());
    // Here, on the vCPU thread, which reads channel_ and streamer_ (output marks).
    StartProtection(std::move(channel), std::move(streamer), name, false);
    pause_ns = clock_.monotonic_ns() - p0;
    // ftvm migrate: the VM moves in this same pause.
    if (take_over && !HandOverNow(position, &why) && why.empty()) why = "the secondary was lost";
    pause_ns = clock_.monotonic_ns() - p0;
  };
  if (!m_->run_at_boundary(task)) return false;
  if (take_over) {
    if (handed_over_) {
      log::event(log::Level::kInfo, "primary.handed_over", {{"position", position},
                                        {"paused_ms", double(pause_ns) / 1e6},
                                        {"of_which_last_round_ms", double(final_copy_ns) / 1e6},
                                        {"of_which_checkpoint_ms", double(snapshot_ns) / 1e6},
                                        {"copy_rounds", sender->stats().rounds},
                                        {"final_pages", sender->stats().final_pages},
                                        {"sent_mib", double(sender->stats().bytes_sent) / double(1u << 20)},
                                        {"total_ms", (clock_.monotonic_ns() - t0) / 1000000}});
    } else {
      log::event(log::Level::kError, "primary.handover_failed", {{"reason", why}});
    }
    if (handed_over_ && postcopy) ServePostcopy();
    return handed_over_;
  }
  if (!why.empty()) {
    gate_->open();
    return failed(why);
  }
  monitor_ = std::thread([this] { MonitorLoop(); });
  const migration::PrecopyStats& st = sender->stats();
  {
    std::lock_guard<std::mutex> lock(mu_);
    report_.last_attach = st;
    report_.last_attach_pause_ns = pause_ns;
  }
  log::event(log::Level::kInfo, "primary.reprotected", {{"position", position},
                                    {"rounds", st.rounds},
                                    {"sent_mib", double(st.bytes_sent) / double(1u << 20)},
                                    {"final_pages", st.final_pages},
                                    {"final_disk_kib", st.final_disk_bytes >> 10},
                                    {"disk_blocks_resynced", st.disk_blocks_resynced},
                                    {"of_blocks", st.disk_blocks_compared},
                                    {"paused_ms", double(pause_ns) / 1e6},
                                    {"of_which_last_round_ms", double(final_copy_ns) / 1e6},
                                    {"of_which_checkpoint_ms", double(snapshot_ns) / 1e6},
                                    {"total_ms", (clock_.monotonic_ns() - t0) / 1000000}});
  return true;
}

bool ProtectedPrimary::ReleaseSecondary(const std::string& why) {
  // All of the log first, then the reason: it replays to here and stops instead of
  // taking over.
  streamer_->flush().ok();
  channel_->send(replication::kBye, {reinterpret_cast<const uint8_t*>(why.data()), why.size()},
                 std::chrono::milliseconds(100)).ok();
  log::event(log::Level::kInfo, "primary.releasing_secondary", {{"reason", why}});
  SecondaryLost("released: " + why, false);
  // The monitor may have found it gone first and be claiming the arbiter right now:
  // wait for whichever claim settles it.
  for (int i = 0; i < 5000 && report().protection == Protection::kProtected; ++i) usleep(1000);
  return report().protection == Protection::kUnprotected;
}

void ProtectedPrimary::ServePostcopy() {
  // The VM runs on the destination now; its memory is here, paused for good.
  migration::PostcopySender& sender = *postcopy_;
  log::info("primary.postcopy", {{"pages", sender.stats().pages}, {"peer", channel_->peer()}});
  const std::string why =
      sender.serve(std::max<std::chrono::nanoseconds>(std::chrono::nanoseconds(options_.liveness.failure_timeout_ns),
                                                      std::chrono::seconds(1)));
  const migration::PostcopySenderStats& st = sender.stats();
  if (!why.empty()) {
    SetProtection(Protection::kStoppedForPeer, "post-copy failed, the VM is lost: " + why);
    log::event(log::Level::kError, "primary.postcopy_failed", {{"reason", why}, {"the_vm", "lost"}});
    return;
  }
  log::event(log::Level::kInfo, "primary.postcopy_done", {{"pages", st.pages},
                                      {"requested", st.requested_pages},
                                      {"zero", st.zero_pages},
                                      {"sent_mib", double(st.bytes_sent) / double(1u << 20)},
                                      {"ms", double(st.ns) / 1e6},
                                      {"vm_ended_first", st.ended_early}});
}

int ProtectedPrimary::run() {
  if (!owned_machine_) throw Error("internal: a taken-over VM is run by its owner");
  int code = m_->run();
  stopping_ = true;
  if (monitor_.joinable()) monitor_.join();
  if (acceptor_.joinable()) acceptor_.join();
  {
    std::lock_guard<std::mutex> lock(handover_mu_);
    if (handover_.joinable()) handover_.join();
  }
  if (channel_) channel_->close();
  return code;
}

void ProtectedPrimary::stop() {
  stopping_ = true;
  m_->stop();
}

namespace {
// How far (in time) the replica may trail while a handover approaches.
constexpr uint64_t kHandoverLagNs = 1'000'000;
}  // namespace

bool ProtectedPrimary::HandOverNow(uint64_t position, std::string* why) {
  const uint64_t limit = uint64_t(options_.handover_timeout.count());
  const uint64_t start = clock_.monotonic_ns();
  auto give_up = [&](const std::string& reason) {
    *why = reason;
    // The secondary may have claimed the VM already: the arbiter decides, before
    // this VM runs another instruction.
    channel_->close();
    SecondaryLost("handover: " + reason, false);
    return false;
  };
  // Waits for `done`. A secondary that joined in this very pause has no monitor
  // reading its messages yet: read them here.
  auto wait_until = [&](const auto& done, const char* late) {
    while (!done() && !lost_) {
      if (!monitor_.joinable()) {
        transport::Message msg;
        transport::RecvResult r = channel_->recv(msg, std::chrono::milliseconds(10));
        if (r.is_message()) {
          HandleMessage(msg);
        } else if (!r.timed_out()) {
          return give_up("the secondary went away: " + r.message);
        }
      } else {
        usleep(200);
      }
      if (!done() && clock_.monotonic_ns() - start > limit) return give_up(late);
    }
    return !lost_;
  };
  if (eventlog::Status s = streamer_->flush(); !s.ok()) return give_up("flushing the log: " + s.message());
  // Everything acknowledged: every held output has gone out.
  const uint64_t end = streamer_->size();
  if (!wait_until([&] { return acked_offset_.load(std::memory_order_acquire) >= end; },
                  "the secondary did not acknowledge the log in time"))
    return false;
  auto at = replication::EncodeHandover({position, m_->guest_clock_ns()});
  if (transport::SendResult s = channel_->send(replication::kHandover, at, std::chrono::seconds(1)); !s.ok())
    return give_up("sending the handover: " + s.message);
  if (!wait_until([&] { return handed_over_.load(); }, "the secondary did not confirm it runs the VM")) return false;
  SetProtection(Protection::kStoppedForPeer, "handed the VM over to the secondary at " + channel_->peer());
  // Nothing this VM does from here on counts: log nothing more, wait for nobody.
  streamer_->abandon("the VM was handed over");
  recorder_->attach(nullptr);
  m_->stop();
  return true;
}

std::string ProtectedPrimary::hand_over() {
  std::lock_guard<std::mutex> lock(handover_mu_);
  // Under the lock: run() sets stopping_ before it joins the handover thread.
  if (!protected_ || lost_ || stopping_) return "no secondary protects the VM: there is nobody to hand it to";
  if (handover_.joinable()) return "a handover was started already";
  handover_ = std::thread([this] { HandOver(); });
  return "";
}

void ProtectedPrimary::HandOver() {
  const uint64_t t0 = clock_.monotonic_ns();
  log::event(log::Level::kInfo, "primary.handover_requested", {{"peer", channel_->peer()}});
  // Let the VM run only a little ahead of the replica first, so that the pause
  // below waits for a short catch-up instead of one of up to max_lag_ns.
  streamer_->set_max_lag_ns(kHandoverLagNs);
  usleep(useconds_t(std::min<uint64_t>(options_.streamer.max_lag_ns, 100'000'000) / 1000 + 5000));
  std::string failed;
  uint64_t paused_at = 0;
  // On the vCPU thread: the VM stays paused until the secondary runs it, or is lost.
  auto task = [&] {
    paused_at = clock_.monotonic_ns();
    HandOverNow(m_->position(), &failed);
  };
  if (!m_->run_at_boundary(task)) return;
  streamer_->set_max_lag_ns(options_.streamer.max_lag_ns);
  if (handed_over_) {
    log::event(log::Level::kInfo, "primary.handed_over", {{"position", m_->position()},
                                      {"paused_ms", double(clock_.monotonic_ns() - paused_at) / 1e6},
                                      {"total_ms", (clock_.monotonic_ns() - t0) / 1000000}});
  } else {
    log::event(log::Level::kError, "primary.handover_failed", {{"reason", failed.empty() ? "the secondary was lost" : failed}});
  }
}

void ProtectedPrimary::HandleMessage(const transport::Message& msg) {
  if (msg.type() == replication::kAck) {
    if (std::optional<replication::Ack> a = replication::DecodeAck(msg.payload())) {
      streamer_->acknowledged(a->received_offset, a->replayed_offset);
      const uint64_t acked = options_.strict_outputs ? a->replayed_offset : a->received_offset;
      gate_->acknowledged(acked);
      acked_offset_.store(acked, std::memory_order_release);
    }
  } else if (msg.type() == replication::kHandoverRequest) {
    std::lock_guard<std::mutex> lock(handover_mu_);
    if (!handover_.joinable()) handover_ = std::thread([this] { HandOver(); });
  } else if (msg.type() == replication::kHandoverDone) {
    handed_over_ = true;
  } else if (msg.type() == migration::kMsgCopyProgress) {
    // The live copy's last progress reports, from the pause.
  } else if (msg.type() == replication::kPageRequest && postcopy_) {
    // In the pause of a post-copy handover: the destination's replica is setting up.
    if (std::string why = postcopy_->answer(msg); !why.empty())
      log::error("primary.postcopy_request_failed", {{"reason", why}});
  } else if (msg.type() != replication::kHeartbeat) {
    log::warn("primary.unexpected_message", {{"type", int(msg.type())}});
  }
}

void ProtectedPrimary::MonitorLoop() {
  transport::Message msg;
  const auto interval = std::chrono::nanoseconds(options_.liveness.heartbeat_interval_ns);
  uint64_t last_heartbeat = clock_.monotonic_ns();
  // A secondary's first message says its replica is built, which for a large VM
  // joining live takes a while after the state arrived (the whole-memory digest,
  // write protection of all of it): until then, only the handshake's limit counts.
  bool ready = false;
  while (!stopping_ && !lost_) {  // lost_: declared lost or released elsewhere
    transport::RecvResult r = channel_->recv(msg, interval);
    if (r.is_message()) {
      if (!std::exchange(ready, true))
        liveness_->restart();
      else
        liveness_->heard();
      HandleMessage(msg);
    } else if (r.timed_out()) {
      const bool silent = ready ? liveness_->expired()
                                : liveness_->silent_ns() > uint64_t(options_.handshake_timeout.count());
      if (silent && !recorder_->log_ended()) {
        SecondaryLost("no message from the secondary for " + std::to_string(liveness_->silent_ns() / 1000000) +
                          " ms",
                      true);
        return;
      }
    } else {
      // After the End record, the secondary finishes and closes: not a loss; nor
      // after it took the VM over.
      if (stopping_ || recorder_->log_ended() || handed_over_) return;
      SecondaryLost(r.message, false);
      return;
    }
    const uint64_t now = clock_.monotonic_ns();
    if (now - last_heartbeat >= options_.liveness.heartbeat_interval_ns) {
      last_heartbeat = now;
      auto hb = replication::EncodeHeartbeat(0);
      channel_->send(replication::kHeartbeat, hb, std::chrono::milliseconds(1)).ok();
    }
  }
}

void ProtectedPrimary::SecondaryLost(const std::string& why, bool silent) {
  if (lost_.exchange(true)) return;
  protected_ = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    report_.lost_at_ns = clock_.monotonic_ns();
  }
  streamer_->abandon(why);
  // Nothing more goes to it. Its channel is kept until a new secondary replaces it,
  // but lets go of what it holds now: a DPDK channel would otherwise keep the port
  // that the next secondary is accepted on until its own keepalive gave up on the
  // peer (2 s), and a VM that ends meanwhile never gets its new secondary.
  channel_->abandon();
  log::event(log::Level::kError, "primary.secondary_lost", {{"reason", why}, {"by", silent ? "silence" : "channel closed"}});
  if (silent) {
    // Silence does not say who was cut off. With a witness, find out; without one,
    // let the secondary claim first: when it is alive it takes over (its host still
    // reaches the arbiter and, likely, the clients), and this side then stops.
    if (!options_.witness.empty()) {
      bool reachable = false;
      try {
        reachable = failover::WitnessAnswers(options_.witness, std::chrono::milliseconds(300));
      } catch (const Error& e) {
        log::error("primary.witness_failed", {{"error", e.what()}});
      }
      if (!reachable) {
        gate_->discard();
        SetProtection(Protection::kStoppedForPeer, "secondary lost (" + why + ") and the witness " + options_.witness +
                                                       " does not answer: this host is cut off; stopping this VM");
        log::event(log::Level::kError, "primary.isolated", {{"witness", options_.witness}});
        m_->stop();
        return;
      }
    } else {
      usleep(useconds_t(options_.liveness.failure_timeout_ns / 1000));
    }
  }
  // Only the arbiter's winner may let anything held go out: if the secondary took
  // over, those outputs are its to produce.
  for (;;) {
    try {
      std::string holder;
      const uint64_t next = generation_ + 1;
      if (arbiter_->try_claim(next, options_.name, &holder)) {
        generation_ = next;
        gate_->open();
        const std::string event = "secondary lost (" + why + "); won arbiter generation " + std::to_string(next) +
                                  ": the VM runs UNPROTECTED";
        {
          std::lock_guard<std::mutex> lock(mu_);
          report_.generation = next;
        }
        SetProtection(Protection::kUnprotected, event);
        log::event(log::Level::kError, "primary.UNPROTECTED", {{"detail", event}});
        return;
      }
      gate_->discard();
      const std::string event = "secondary lost (" + why + "), and " + holder + " holds arbiter generation " +
                                std::to_string(next) + ": stopping this VM";
      SetProtection(Protection::kStoppedForPeer, event);
      log::event(log::Level::kError, "primary.stopping", {{"detail", event}});
      m_->stop();
      return;
    } catch (const Error& e) {
      // Unreachable arbiter: cannot prove it won, so nothing is released meanwhile.
      log::error("primary.arbiter_unreachable", {{"error", e.what()}});
      usleep(100000);
      if (stopping_) return;
    }
  }
}

PrimaryReport ProtectedPrimary::report() const {
  PrimaryReport r;
  {
    std::lock_guard<std::mutex> lock(mu_);
    r = report_;
  }
  if (streamer_) r.streamer = streamer_->stats();
  r.gate = gate_->stats();
  r.recorder = recorder_->stats();
  if (liveness_) r.max_silence_ns = liveness_->max_gap_ns();
  return r;
}

PrimaryReport ProtectedPrimary::status() const {
  // p50/p99 of the most recent samples; a bounded copy under the streamer's and
  // the gate's locks, which the vCPU thread takes too.
  constexpr size_t kStatusSamples = 10000;
  PrimaryReport r;
  {
    std::lock_guard<std::mutex> lock(mu_);
    r = report_;
    r.secondary = secondary_name_;
    if (streamer_) r.streamer = streamer_->stats(kStatusSamples);
    if (liveness_) r.max_silence_ns = liveness_->max_gap_ns();
  }
  r.gate = gate_->stats(kStatusSamples);
  r.recorder.checkpoints = recorder_->checkpoint_count();
  r.recorder.verifications = recorder_->verification_count();
  r.syncing = syncing_.load();
  return r;
}

}  // namespace ftvm::primary
