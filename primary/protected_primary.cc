#include "primary/protected_primary.h"

#include <unistd.h>

#include "common/error.h"
#include "common/log.h"
#include "failover/witness.h"
#include "eventlog/format.h"
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
  config.mode = vmm::ExecutionMode::kRecord;
  machine_ = std::make_unique<vmm::Machine>(config, clock, random);
  recorder_ = std::make_unique<Recorder>(*machine_, options_.recorder);
  machine_->set_hooks(recorder_.get());
  gate_ = std::make_unique<OutputGate>(
      clock_, [this](std::span<const uint8_t> frame) { machine_->send_frame(frame); },
      [this] { machine_->notify_host_event(); },
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

ProtectedPrimary::~ProtectedPrimary() {
  stopping_ = true;
  if (channel_) channel_->close();
  if (monitor_.joinable()) monitor_.join();
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
    log::error("primary.unprotected", {{"reason", why}});
    if (channel_) channel_->close();
    channel_.reset();
    gate_->open();
    SetProtection(Protection::kUnprotected, why);
    return false;
  };
  if (!channel_) return unprotected("no secondary connected in time");

  const std::vector<uint8_t> header = eventlog::EncodeFileHeader(recorder_->header());
  replication::Hello hello;
  hello.set_protocol_version(replication::kProtocolVersion);
  hello.set_ftvm_version(FTVM_VERSION);
  hello.set_log_header(header.data(), header.size());
  hello.set_generation(generation_);
  hello.set_heartbeat_interval_ns(options_.liveness.heartbeat_interval_ns);
  hello.set_failure_timeout_ns(options_.liveness.failure_timeout_ns);
  hello.set_primary_name(options_.name);
  hello.set_strict_outputs(options_.strict_outputs);
  const std::string bytes = hello.SerializeAsString();
  transport::SendResult s = channel_->send(
      replication::kHello, {reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, options_.handshake_timeout);
  if (!s.ok()) return unprotected("sending the hello to " + channel_->peer() + ": " + s.message);
  transport::Message reply;
  transport::RecvResult r = channel_->recv(reply, options_.handshake_timeout);
  if (r.timed_out()) return unprotected("the secondary at " + channel_->peer() + " did not answer the hello");
  if (!r.is_message()) return unprotected("handshake with " + channel_->peer() + ": " + r.message);
  replication::HelloReply hr;
  if (reply.type() != replication::kHelloReply || !hr.ParseFromArray(reply.payload().data(), int(reply.size())))
    return unprotected("the peer at " + channel_->peer() + " does not speak the ftvm replication protocol");
  if (hr.protocol_version() != replication::kProtocolVersion)
    return unprotected("the secondary speaks replication protocol " + std::to_string(hr.protocol_version()) +
                       ", this primary " + std::to_string(replication::kProtocolVersion));
  if (!hr.accepted()) return unprotected("the secondary refused: " + hr.reason());

  streamer_ = std::make_unique<LogStreamer>(*channel_, header.size(), clock_, options_.streamer);
  recorder_->attach(streamer_.get());
  liveness_ = std::make_unique<failover::PeerLiveness>(clock_, options_.liveness);
  SetProtection(Protection::kProtected, "secondary " + hr.secondary_name() + " at " + channel_->peer());
  log::info("primary.protected", {{"secondary", hr.secondary_name()},
                                  {"peer", channel_->peer()},
                                  {"channel", channel_->kind()},
                                  {"generation", generation_}});
  monitor_ = std::thread([this] { MonitorLoop(); });
  return true;
}

int ProtectedPrimary::run() {
  int code = machine_->run();
  stopping_ = true;
  if (monitor_.joinable()) monitor_.join();
  if (channel_) channel_->close();
  return code;
}

void ProtectedPrimary::stop() { machine_->stop(); }

void ProtectedPrimary::MonitorLoop() {
  transport::Message msg;
  const auto interval = std::chrono::nanoseconds(options_.liveness.heartbeat_interval_ns);
  uint64_t last_heartbeat = clock_.monotonic_ns();
  while (!stopping_) {
    transport::RecvResult r = channel_->recv(msg, interval);
    if (r.is_message()) {
      liveness_->heard();
      if (msg.type() == replication::kAck) {
        if (std::optional<replication::Ack> a = replication::DecodeAck(msg.payload())) {
          streamer_->acknowledged(a->received_offset, a->replayed_offset);
          gate_->acknowledged(options_.strict_outputs ? a->replayed_offset : a->received_offset);
        }
      } else if (msg.type() != replication::kHeartbeat) {
        log::warn("primary.unexpected_message", {{"type", int(msg.type())}});
      }
    } else if (r.timed_out()) {
      if (liveness_->expired()) {
        SecondaryLost("no message from the secondary for " + std::to_string(liveness_->silent_ns() / 1000000) +
                          " ms",
                      true);
        return;
      }
    } else {
      if (stopping_) return;
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
  {
    std::lock_guard<std::mutex> lock(mu_);
    report_.lost_at_ns = clock_.monotonic_ns();
  }
  streamer_->abandon(why);
  log::error("primary.secondary_lost", {{"reason", why}, {"by", silent ? "silence" : "channel closed"}});
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
        log::error("primary.isolated", {{"witness", options_.witness}});
        machine_->stop();
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
        log::error("primary.UNPROTECTED", {{"detail", event}});
        return;
      }
      gate_->discard();
      const std::string event = "secondary lost (" + why + "), and " + holder + " holds arbiter generation " +
                                std::to_string(next) + ": stopping this VM";
      SetProtection(Protection::kStoppedForPeer, event);
      log::error("primary.stopping", {{"detail", event}});
      machine_->stop();
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

}  // namespace ftvm::primary
