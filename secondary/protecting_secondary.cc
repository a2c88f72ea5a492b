#include "secondary/protecting_secondary.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <optional>

#include "common/error.h"
#include "common/log.h"
#include "eventlog/format.h"
#include "failover/witness.h"
#include "primary/log_header.h"
#include "primary/protocol.h"

#ifndef FTVM_VERSION
#define FTVM_VERSION "unknown"
#endif

namespace ftvm::secondary {

std::string_view SecondaryOutcomeName(SecondaryOutcome o) {
  switch (o) {
    case SecondaryOutcome::kRunning: return "replicating";
    case SecondaryOutcome::kPrimaryEnded: return "primary ended; replica identical";
    case SecondaryOutcome::kWentLive: return "went live";
    case SecondaryOutcome::kStoppedForPeer: return "stopped (the primary kept the VM)";
    case SecondaryOutcome::kDiverged: return "diverged";
    case SecondaryOutcome::kFailed: return "failed";
    case SecondaryOutcome::kVmLost: return "THE VM IS LOST";
    case SecondaryOutcome::kReleased: return "released by the primary";
  }
  return "?";
}

ProtectingSecondary::ProtectingSecondary(SecondaryOptions options, Clock& clock, RandomSource& random)
    : options_(std::move(options)), clock_(clock), random_(random) {
  if (options_.connect.empty()) throw Error("a secondary needs the primary's channel address (--connect)");
  if (options_.arbiter_dir.empty()) throw Error("a secondary needs the arbiter directory (--arbiter)");
  arbiter_ = failover::MakeDirectoryArbiter(options_.arbiter_dir);
}

ProtectingSecondary::~ProtectingSecondary() {
  stopping_ = true;
  if (channel_) channel_->close();
  if (receiver_.joinable()) receiver_.join();
}

void ProtectingSecondary::connect() {
  // The primary may not be listening yet: retry a refused connection until the
  // deadline.
  const uint64_t deadline = clock_.monotonic_ns() + uint64_t(options_.connect_timeout.count());
  for (;;) {
    try {
      channel_ = transport::Connect(options_.connect, std::chrono::seconds(5));
      break;
    } catch (const Error& e) {
      if (clock_.monotonic_ns() >= deadline || stopping_) throw;
      usleep(50000);
    }
  }
  transport::Message msg;
  transport::RecvResult r = channel_->recv(msg, std::chrono::seconds(30));
  if (!r.is_message())
    throw Error("the primary at " + channel_->peer() + " sent no hello: " +
                (r.timed_out() ? std::string("timed out") : r.message));
  replication::Hello hello;
  if (msg.type() != replication::kHello || !hello.ParseFromArray(msg.payload().data(), int(msg.size())))
    throw Error("the peer at " + channel_->peer() + " does not speak the ftvm replication protocol");
  auto refuse = [&](const std::string& why) {
    replication::HelloReply reply;
    reply.set_protocol_version(replication::kProtocolVersion);
    reply.set_accepted(false);
    reply.set_reason(why);
    reply.set_secondary_name(options_.name);
    const std::string bytes = reply.SerializeAsString();
    channel_->send(replication::kHelloReply, {reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()},
                   std::chrono::seconds(5)).ok();
    return Error(why);
  };
  if (options_.require_running && !hello.snapshot())
    throw refuse("the VM at " + channel_->peer() + " has not started yet: it waits for its first secondary, which "
                 "`ftvm secondary` is");
  if (!hello.protected_by().empty() && !options_.handover)
    throw refuse("the VM is protected by " + hello.protected_by() + " already: it has one secondary at a time");
  if (hello.protocol_version() != replication::kProtocolVersion)
    throw refuse("the primary speaks replication protocol " + std::to_string(hello.protocol_version()) +
                 " (ftvm " + hello.ftvm_version() + "), this secondary " +
                 std::to_string(replication::kProtocolVersion) + " (ftvm " FTVM_VERSION ")");
  generation_ = hello.generation();
  primary_name_ = hello.primary_name();
  vmm::VmConfig config;
  try {
    stream_ = std::make_shared<eventlog::ByteStream>();
    stream_->append({reinterpret_cast<const uint8_t*>(hello.log_header().data()), hello.log_header().size()});
    source_ = std::make_unique<StreamSource>(stream_, "stream from " + channel_->peer());
    config = primary::ReplicaConfig(source_->header(), options_.guest_image, options_.disk, options_.console_path,
                                    hello.snapshot());
    if (config.has_nic() && !options_.tap.empty() && options_.tap.size() >= 16)
      throw Error("tap interface name '" + options_.tap + "' is longer than 15 characters");
    CheckHostMemory(config.mem_mib);
    if (!hello.snapshot()) BuildReplica(config);
  } catch (const Error& e) {
    throw refuse(std::string("cannot replicate this VM here: ") + e.what());
  }
  replication::HelloReply reply;
  reply.set_protocol_version(replication::kProtocolVersion);
  reply.set_accepted(true);
  reply.set_secondary_name(options_.name);
  reply.set_take_over(options_.handover);
  // Post-copy needs a VM that runs already; one that starts with its secondary is
  // replayed from its start instead.
  const bool postcopy = options_.handover && options_.postcopy && hello.snapshot();
  if (options_.postcopy && !postcopy) log::warn("secondary.no_postcopy", {{"reason", "the VM is replayed from its start"}});
  reply.set_postcopy(postcopy);
  // Back after an outage with a disk image of the right size: only what differs
  // need come (the primary compares block hashes).
  if (hello.snapshot() && !config.disk.empty()) {
    struct stat st {};
    const uint64_t bytes = source_->header().vm().disk_bytes();
    resync_disk_ = stat(config.disk.c_str(), &st) == 0 && S_ISREG(st.st_mode) && uint64_t(st.st_size) == bytes;
    if (resync_disk_) reply.set_disk_hash_blocks((bytes + vmm::kPageSize - 1) / vmm::kPageSize);
  }
  // Ready to receive before saying yes: a primary with little to copy pauses its VM
  // right after the reply, and would wait for this.
  if (hello.snapshot()) {
    try {
      PrepareLiveState(config, postcopy);
    } catch (const Error& e) {
      throw refuse(std::string("cannot receive this VM here: ") + e.what());
    }
  }
  const std::string bytes = reply.SerializeAsString();
  transport::SendResult s = channel_->send(replication::kHelloReply,
                                           {reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()},
                                           std::chrono::seconds(5));
  if (!s.ok()) throw Error("answering the primary at " + channel_->peer() + ": " + s.message);
  if (resync_disk_) {
    const std::vector<uint64_t> hashes = migration::DiskBlockHashes(config.disk);
    if (std::string why = migration::SendDiskHashes(*channel_, hashes, std::chrono::seconds(60)); !why.empty())
      throw Error(why);
    log::event(log::Level::kInfo, "secondary.disk_resync", {{"path", config.disk}, {"blocks", hashes.size()}});
  }
  live_copy_ = hello.snapshot();
  if (options_.handover) {  // the reply asked for the VM
    std::lock_guard<std::mutex> lock(mu_);
    report_.handover_requested_at_ns = clock_.monotonic_ns();
  }
  if (hello.snapshot()) ReceiveLiveState(config);
  {
    std::lock_guard<std::mutex> lock(mu_);
    report_.generation = generation_;
  }
  // Silence counts from here: the disk transfer above is not the primary's.
  failover::LivenessOptions lo;
  lo.heartbeat_interval_ns = hello.heartbeat_interval_ns();
  lo.failure_timeout_ns = hello.failure_timeout_ns();
  liveness_ = std::make_unique<failover::PeerLiveness>(clock_, lo);
  log::info("secondary.replicating", {{"primary", primary_name_},
                                      {"peer", channel_->peer()},
                                      {"channel", channel_->kind()},
                                      {"generation", generation_},
                                      {"app", source_->header().vm().app()}});
  receiver_ = std::thread([this] { ReceiveLoop(); });
  replicating_.store(true, std::memory_order_release);
}

void ProtectingSecondary::BuildReplica(const vmm::VmConfig& config) {
  if (!machine_) machine_ = std::make_unique<vmm::Machine>(config, clock_, random_);
  ReplayOptions ro;
  // A replica that is handed the VM right after its state arrives (ftvm migrate
  // joining a running VM) never replays: it needs no dirty tracking.
  ro.verify = options_.verify && !(options_.handover && live_copy_);
  ro.go_live = [this](vmm::Machine& m) { return GoLive(m); };
  ro.memory_arrives_later = postcopy_ != nullptr;
  ro.on_diverged = [this](const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    report_.last_divergence = what;
  };
  replayer_ = std::make_unique<Replayer>(*machine_, *source_, ro);
  machine_->set_hooks(replayer_.get());
  // Caught up with the stream: say so now rather than with the next batch's
  // acknowledgement (the vCPU thread must not wait long on a full channel; a
  // skipped one is covered by the next).
  source_->set_on_caught_up([this](uint64_t) {
    // Replaying, not still setting up (a log opening with a checkpoint is consumed
    // before the replica runs its first instruction).
    if (replayer_->replayed_position() != 0) caught_up_.store(true, std::memory_order_release);
    SendAck(std::chrono::milliseconds(2));
  });
}

void ProtectingSecondary::PrepareLiveState(const vmm::VmConfig& config, bool postcopy) {
  // The VM already runs: its memory and disk arrive while it runs, into a replica
  // booted from the same image; then the header of the log that continues it from
  // the pause, whose opening checkpoint completes the state.
  const uint64_t disk_bytes = config.disk.empty() ? 0 : source_->header().vm().disk_bytes();
  if (!config.disk.empty() && !resync_disk_) migration::CreateSparseDisk(config.disk, disk_bytes);
  machine_ = std::make_unique<vmm::Machine>(config, clock_, random_);
  // Post-copy: memory arrives after the switch, into memory emptied now.
  if (postcopy) {
    postcopy_ = std::make_unique<migration::PostcopyReceiver>(machine_->memory(), clock_);
  } else {
    // The memory digest the replica checks is kept as pages arrive, not computed
    // over all of memory in the pause.
    live_digest_ = std::make_unique<vmm::MemoryDigest>(machine_->memory());
  }
}

void ProtectingSecondary::ReceiveLiveState(const vmm::VmConfig& config) {
  const eventlog::LogHeader described = source_->header();  // by the hello
  const uint64_t disk_bytes = config.disk.empty() ? 0 : described.vm().disk_bytes();
  const uint64_t t0 = clock_.monotonic_ns();
  std::unique_ptr<vmm::MemoryDigest> digest = std::move(live_digest_);
  migration::StateReceiver receiver(machine_->memory(), config.disk, disk_bytes, digest.get());
  const migration::StateManifest manifest = receiver.receive(*channel_, std::chrono::seconds(60));
  if (manifest.generation() != 0) generation_ = manifest.generation();
  if (manifest.postcopy() != (postcopy_ != nullptr))
    throw Error(postcopy_ ? "this host asked for post-copy, but the primary sent the VM's memory ahead"
                          : "the primary sent no memory (post-copy), which this host did not ask for");
  if (receiver.pages_received() != manifest.memory_pages_sent() ||
      receiver.disk_bytes_received() != manifest.disk_bytes_sent())
    throw Error("the live copy is incomplete: " + std::to_string(receiver.pages_received()) + " pages and " +
                std::to_string(receiver.disk_bytes_received()) + " disk bytes arrived, the primary sent " +
                std::to_string(manifest.memory_pages_sent()) + " and " + std::to_string(manifest.disk_bytes_sent()));
  stream_ = std::make_shared<eventlog::ByteStream>();
  stream_->append({reinterpret_cast<const uint8_t*>(manifest.log_header().data()), manifest.log_header().size()});
  source_ = std::make_unique<StreamSource>(stream_, "stream from " + channel_->peer());
  // The same VM as the hello described (image, memory, devices), or refuse.
  if (source_->header().guest_image_sha256() != described.guest_image_sha256() ||
      source_->header().vm().SerializeAsString() != described.vm().SerializeAsString())
    throw Error("the state manifest's log header describes another VM than the primary's hello");
  BuildReplica(config);
  if (digest) replayer_->adopt_memory_digest(std::move(digest));
  // Post-copy: whatever faults from here on (the replica setting up its devices, then
  // the VM) asks the primary for its page.
  if (postcopy_) postcopy_->start_requests(*channel_);
  log::info("secondary.state_received", {{"rounds", manifest.rounds()},
                                         {"pages", receiver.pages_received()},
                                         {"disk_kib", receiver.disk_bytes_received() >> 10},
                                         {"ms", (clock_.monotonic_ns() - t0) / 1000000}});
}

namespace {

// A "Key: N kB" line of /proc/meminfo, in KiB.
std::optional<uint64_t> ReadMeminfo(const char* key) {
  std::FILE* f = std::fopen("/proc/meminfo", "re");
  if (f == nullptr) return std::nullopt;
  std::unique_ptr<std::FILE, decltype(&std::fclose)> guard(f, &std::fclose);
  char line[256];
  const size_t n = std::strlen(key);
  while (std::fgets(line, sizeof line, f) != nullptr) {
    unsigned long long kib = 0;
    if (std::strncmp(line, key, n) == 0 && std::sscanf(line + n, " %llu kB", &kib) == 1) return uint64_t(kib);
  }
  return std::nullopt;
}

// A number read from a one-line file; nullopt when absent or "max".
std::optional<uint64_t> ReadNumber(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "re");
  if (f == nullptr) return std::nullopt;
  std::unique_ptr<std::FILE, decltype(&std::fclose)> guard(f, &std::fclose);
  unsigned long long v = 0;
  if (std::fscanf(f, "%llu", &v) != 1) return std::nullopt;
  return uint64_t(v);
}

// What a memory cgroup this process is in (or one above it) still allows, in bytes,
// and which; nullopt when no limit applies. cgroup v2 (memory.max) and v1
// (memory.limit_in_bytes).
std::optional<uint64_t> CgroupMemoryLeft(std::string* which) {
  std::FILE* f = std::fopen("/proc/self/cgroup", "re");
  if (f == nullptr) return std::nullopt;
  std::unique_ptr<std::FILE, decltype(&std::fclose)> guard(f, &std::fclose);
  std::optional<uint64_t> left;
  char line[1024];
  while (std::fgets(line, sizeof line, f) != nullptr) {
    std::string l(line);
    if (!l.empty() && l.back() == '\n') l.pop_back();
    const size_t a = l.find(':'), b = l.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string controllers = l.substr(a + 1, b - a - 1);
    std::string path = l.substr(b + 1);
    const bool v2 = l.substr(0, a) == "0" && controllers.empty();
    if (!v2 && controllers != "memory") continue;
    const std::string root = v2 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/memory";
    const std::string limit_file = v2 ? "memory.max" : "memory.limit_in_bytes";
    const std::string usage_file = v2 ? "memory.current" : "memory.usage_in_bytes";
    for (;;) {
      const std::string dir = root + (path == "/" ? "" : path);
      const std::optional<uint64_t> limit = ReadNumber(dir + "/" + limit_file);
      const std::optional<uint64_t> usage = ReadNumber(dir + "/" + usage_file);
      if (limit && usage && *limit < (uint64_t(1) << 60)) {
        const uint64_t l2 = *limit > *usage ? *limit - *usage : 0;
        if (!left || l2 < *left) {
          left = l2;
          *which = dir + "/" + limit_file;
        }
      }
      if (path.empty() || path == "/") break;
      path = path.substr(0, path.rfind('/'));
      if (path.empty()) path = "/";
    }
  }
  return left;
}

}  // namespace

void ProtectingSecondary::CheckHostMemory(uint64_t mem_mib) {
  // MemAvailable: what the kernel can give without swapping; less under a memory
  // cgroup's limit (a container).
  std::optional<uint64_t> available_mib;
  if (std::optional<uint64_t> kib = ReadMeminfo("MemAvailable:")) available_mib = *kib / 1024;
  std::string cgroup;
  if (std::optional<uint64_t> left = CgroupMemoryLeft(&cgroup); left && (!available_mib || *left >> 20 < *available_mib))
    available_mib = *left >> 20;
  else
    cgroup.clear();
  if (available_mib && *available_mib < mem_mib)
    throw Error("this host has " + std::to_string(*available_mib) + " MiB of memory available" +
                (cgroup.empty() ? std::string() : " (under the limit in " + cgroup + ")") + ", the VM needs " +
                std::to_string(mem_mib) + " MiB");
}

void ProtectingSecondary::SendAck(std::chrono::nanoseconds timeout) {
  replication::Ack a{stream_->size(), replayer_->consumed_offset(), replayer_->replayed_position()};
  auto bytes = replication::EncodeAck(a);
  // A failed send is the channel's end, which the receive loop reports.
  channel_->send(replication::kAck, bytes, timeout).ok();
}

void ProtectingSecondary::ReceiveLoop() {
  transport::Message msg;
  const auto interval = std::chrono::nanoseconds(liveness_->options().heartbeat_interval_ns);
  uint64_t last_ack = clock_.monotonic_ns();
  while (!stopping_) {
    transport::RecvResult r = channel_->recv(msg, interval);
    if (r.is_message()) {
      liveness_->heard();
      if (msg.type() == replication::kLogData) {
        std::optional<replication::LogDataHeader> h = replication::DecodeLogDataHeader(msg.payload());
        if (!h || h->offset != stream_->size()) {
          // A gap or an overlap: the stream cannot be trusted, and a replica that
          // misses records must never take over.
          const std::string why = "log stream out of order (data for offset " +
                                  std::to_string(h ? h->offset : 0) + ", expected " +
                                  std::to_string(stream_->size()) + ")";
          log::error("secondary.bad_stream", {{"detail", why}});
          primary_said_bye_ = true;  // no takeover on a broken stream
          stream_->finish(why);
          return;
        }
        stream_->append(msg.payload().subspan(replication::kLogDataHeaderBytes));
        stream_->set_complete_below(h->complete_below);
        SendAck();
        last_ack = clock_.monotonic_ns();
      } else if (msg.type() == replication::kMemoryPages && postcopy_) {
        // Pages the replica asked for while it sets up (post-copy).
        if (std::string why = postcopy_->deliver(msg.payload()); !why.empty()) {
          log::error("secondary.bad_pages", {{"detail", why}});
          primary_said_bye_ = true;  // no takeover with memory that cannot be trusted
          stream_->finish(why);
          return;
        }
      } else if (msg.type() == replication::kHandover) {
        // The primary paused its VM with everything acknowledged: replay the rest,
        // then take the VM (GoLive).
        const std::optional<replication::Handover> h = replication::DecodeHandover(msg.payload());
        if (!h) {
          log::error("secondary.bad_handover", {{"bytes", msg.size()}});
          continue;
        }
        log::event(log::Level::kInfo, "secondary.handover", {{"primary_position", h->position}});
        handover_clock_ns_ = h->guest_clock_ns;
        handing_over_ = true;
        stream_->finish("the primary handed the VM over");
        // Post-copy: what comes next (memory) is the post-copy receiver's, from now
        // on: the replica may wait for a page already, setting up its devices.
        if (postcopy_) {
          postcopy_->start(std::max<std::chrono::nanoseconds>(
                               std::chrono::nanoseconds(liveness_->options().failure_timeout_ns), std::chrono::seconds(1)),
                           [this](const std::string& why, const vmm::MemorySum& memory) { PostcopyEnded(why, memory); });
          return;
        }
        // Heartbeats go on: the primary waits, paused, for HandoverDone, and must
        // not mistake the time this replica needs to get there for a loss.
      } else if (msg.type() == replication::kBye) {
        primary_said_bye_ = true;
        // With a reason: the VM goes on elsewhere, and this replica is not needed.
        released_.assign(reinterpret_cast<const char*>(msg.payload().data()), msg.size());
        stream_->finish(released_.empty() ? "the primary ended its log" : "released: " + released_);
        SendAck();
        return;
      } else if (msg.type() != replication::kHeartbeat) {
        log::warn("secondary.unexpected_message", {{"type", int(msg.type())}});
      }
    } else if (r.timed_out()) {
      if (liveness_->expired()) {
        PrimaryLost("no message from the primary for " + std::to_string(liveness_->silent_ns() / 1000000) + " ms");
        return;
      }
    } else {
      // After a handover, the primary hangs up once this replica runs the VM.
      if (stopping_ || handing_over_) return;
      if (r.damaged) {
        // Something on the link broke the stream, and the primary that sent it was
        // alive a moment ago: taking the VM over would race a running primary for
        // nothing. The replica stops with what it had checked; the primary, hearing
        // the channel go, runs on unprotected until a new secondary joins.
        log::error("secondary.bad_stream", {{"detail", r.message}});
        primary_said_bye_ = true;
        stream_->finish("the log stream from the primary is damaged: " + r.message);
        return;
      }
      PrimaryLost(r.message);
      return;
    }
    // A secondary that started with the VM asks once it has caught up (one joining a
    // running VM asked in its hello reply).
    if (options_.handover && !live_copy_ && handover_requested_ns_ == 0 && caught_up_.load(std::memory_order_acquire)) {
      handover_requested_ns_ = clock_.monotonic_ns();
      {
        std::lock_guard<std::mutex> lock(mu_);
        report_.handover_requested_at_ns = handover_requested_ns_;
      }
      log::info("secondary.handover_requested", {{"replayed_position", replayer_->replayed_position()}});
      channel_->send(replication::kHandoverRequest, std::span<const uint8_t>(), std::chrono::seconds(1)).ok();
    }
    // Acks double as heartbeats, and tell the primary how far the replica got (its
    // flow control waits on that).
    if (clock_.monotonic_ns() - last_ack >= liveness_->options().heartbeat_interval_ns) {
      SendAck();
      last_ack = clock_.monotonic_ns();
    }
  }
}

void ProtectingSecondary::PrimaryLost(const std::string& why) {
  if (lost_.exchange(true)) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    report_.primary_lost_at_ns = clock_.monotonic_ns();
    report_.primary_last_heard_ns = report_.primary_lost_at_ns - liveness_->silent_ns();
  }
  log::event(log::Level::kError, "secondary.primary_lost", {{"reason", why}});
  // The replica consumes what arrived, then asks GoLive.
  stream_->finish("the primary was lost: " + why);
}

bool ProtectingSecondary::GoLive(vmm::Machine& m) {
  if (primary_said_bye_) return false;  // a deliberate end (or a broken stream): no takeover
  if (postcopy_ && !handing_over_) {
    // Lost before it handed the VM over: this replica has none of its memory.
    std::lock_guard<std::mutex> lock(mu_);
    report_.outcome = SecondaryOutcome::kFailed;
    report_.detail = "the primary was lost before it handed the VM over, whose memory (post-copy) is not here: "
                     "this replica cannot take over";
    log::event(log::Level::kError, "secondary.not_taking_over", {{"detail", report_.detail}});
    return false;
  }
  // A handover is no failure: the primary is alive and waits for us.
  if (!options_.witness.empty() && !handing_over_) {
    bool reachable = false;
    try {
      reachable = failover::WitnessAnswers(options_.witness, std::chrono::milliseconds(300));
    } catch (const Error& e) {
      log::error("secondary.witness_failed", {{"error", e.what()}});
    }
    if (!reachable) {
      std::lock_guard<std::mutex> lock(mu_);
      report_.outcome = SecondaryOutcome::kStoppedForPeer;
      report_.detail = "the witness " + options_.witness + " does not answer: this host is cut off, it does not take over";
      log::event(log::Level::kError, "secondary.isolated", {{"witness", options_.witness}});
      return false;
    }
  }
  const uint64_t next = generation_ + 1;
  for (;;) {
    try {
      std::string holder;
      if (!arbiter_->try_claim(next, options_.name, &holder)) {
        std::lock_guard<std::mutex> lock(mu_);
        report_.outcome = SecondaryOutcome::kStoppedForPeer;
        report_.detail = holder + " holds arbiter generation " + std::to_string(next) + ": this replica stops";
        log::event(log::Level::kError, "secondary.not_taking_over", {{"detail", report_.detail}});
        return false;
      }
      break;
    } catch (const Error& e) {
      // Cannot prove it won: wait for the arbiter rather than risk two live VMs.
      log::error("secondary.arbiter_unreachable", {{"error", e.what()}});
      usleep(100000);
      if (stopping_) return false;
    }
  }
  // The guest's clock goes on from the last value it read, or from where the primary
  // that handed the VM over left it, whichever is later: never backwards.
  const uint64_t clock_ns = std::max(replayer_->last_monotonic_ns(), handover_clock_ns_.load());
  if (postcopy_ && handing_over_) {
    // The primary stops its VM and serves its memory once it hears this; this VM
    // runs now, each page it touches first fetched on the way. Before go_live: the
    // devices it wakes may read memory already. It is protected once all is here.
    SendHandoverDone();
    postcopy_live_ = true;
    m.go_live(vmm::ExecutionMode::kLive, nullptr, clock_ns, options_.tap);
  } else if (options_.listen.empty()) {
    m.go_live(vmm::ExecutionMode::kLive, nullptr, clock_ns, options_.tap);
  } else {
    // The channel to the old primary goes before this host listens for a new
    // secondary: both may need the same device (a DPDK port on one NIC serves one
    // channel at a time, and a second net_af_packet port on an interface would share
    // its frames with the first). A lost primary's channel is abandoned: nobody is
    // left to receive anything on it, so it is not waited for. A primary that handed
    // the VM over hears HandoverDone first (its VM stays paused until then, so it is
    // sent before this replica runs the VM), and the channel's close delivers what
    // was sent before it goes.
    if (handing_over_) SendHandoverDone();
    ReleaseChannel(/*peer_alive=*/handing_over_);
    // This host is the primary now, ready to be protected again: record from here
    // on, and take a new secondary whenever one connects.
    primary::PrimaryOptions po = ProtectionHere();
    auto recorder = std::make_unique<primary::Recorder>(m, po.recorder);
    primary::Recorder* hooks = recorder.get();
    m.go_live(vmm::ExecutionMode::kRecord, hooks, clock_ns, options_.tap);
    takeover_ = std::make_unique<primary::ProtectedPrimary>(m, std::move(recorder), next, po, clock_);
    takeover_->serve_reprotection();
    takeover_published_.store(takeover_.get(), std::memory_order_release);
  }
  if (handing_over_ && channel_ && !postcopy_) SendHandoverDone();
  std::lock_guard<std::mutex> lock(mu_);
  generation_ = next;
  report_.generation = next;
  report_.live_at_ns = clock_.monotonic_ns();
  if (report_.outcome != SecondaryOutcome::kVmLost) report_.outcome = SecondaryOutcome::kWentLive;
  report_.detail = std::string(handing_over_ ? "the primary handed the VM over; runs here from position "
                                             : "took over at position ") +
                   std::to_string(m.position()) + " in arbiter generation " + std::to_string(next);
  if (handing_over_) {
    // A planned move, not a failure: the pause is the source's to report
    // (primary.handed_over), and no primary was lost.
    log::event(log::Level::kInfo, "secondary.LIVE",
               {{"detail", report_.detail}, {"tap", options_.tap}, {"handover", "yes"}});
    return true;
  }
  log::event(log::Level::kError, "secondary.LIVE",
             {{"detail", report_.detail},
              {"tap", options_.tap},
              {"handover", "no"},
              {"downtime_ms", report_.primary_last_heard_ns == 0
                                  ? 0.0
                                  : double(report_.live_at_ns - report_.primary_last_heard_ns) / 1e6},
              {"takeover_ms", report_.primary_lost_at_ns == 0
                                  ? 0.0
                                  : double(report_.live_at_ns - report_.primary_lost_at_ns) / 1e6}});
  return true;
}

void ProtectingSecondary::SendHandoverDone() {
  // The primary keeps its VM paused until it hears this; then it stops it.
  channel_->send(replication::kHandoverDone, std::span<const uint8_t>(), std::chrono::seconds(1)).ok();
}

void ProtectingSecondary::ReleaseChannel(bool peer_alive) {
  if (channel_ && peer_alive) channel_->close();
  if (channel_ && !peer_alive) channel_->abandon();
  if (receiver_.joinable()) receiver_.join();
  channel_.reset();
}

primary::PrimaryOptions ProtectingSecondary::ProtectionHere() const {
  // The same verification, checkpoint, output-rule and failure-detection settings
  // as the pair had.
  const eventlog::LogHeader& was = source_->header();
  primary::PrimaryOptions po;
  po.listen = options_.listen;
  po.arbiter_dir = options_.arbiter_dir;
  po.name = options_.name;
  po.witness = options_.witness;
  po.liveness = liveness_->options();
  po.strict_outputs = was.output_checks();
  po.recorder.output_checks = was.output_checks();
  if (was.verify_interval_ns() != 0) po.recorder.verify_interval_ns = was.verify_interval_ns();
  if (was.checkpoint_after_ns() != 0) po.recorder.checkpoint_after_ns = was.checkpoint_after_ns();
  return po;
}

void ProtectingSecondary::PostcopyEnded(const std::string& failed, const vmm::MemorySum& memory) {
  std::string why = failed.empty() ? replayer_->check_initial_memory(memory) : failed;
  const migration::PostcopyReceiverStats st = postcopy_->stats();
  if (!why.empty() && !postcopy_live_) {
    // The VM never ran here: it is still the primary's.
    log::error("secondary.postcopy_failed", {{"reason", why}, {"the_vm", "stays with the primary"}});
    machine_->stop();
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    report_.postcopy = st;
    if (!why.empty()) {
      report_.outcome = SecondaryOutcome::kVmLost;
      report_.detail = "post-copy did not complete: " + why;
    }
  }
  if (!why.empty()) {
    // Never run on with memory that is not the VM's.
    log::event(log::Level::kError, "secondary.VM_LOST", {{"reason", why}});
    machine_->abort("the VM is lost: " + why);
    return;
  }
  log::event(log::Level::kInfo, "migration.postcopy_complete", {{"pages", st.pages},
                                            {"faults", st.faults},
                                            {"zero_pages", st.zero_pages},
                                            {"fault_wait_p50_us", st.fault_wait_p50_ns / 1000},
                                            {"fault_wait_p99_us", st.fault_wait_p99_ns / 1000},
                                            {"ms", st.complete_ns / 1'000'000},
                                            {"memory", "verified"}});
  if (options_.listen.empty()) return;
  // The old primary's channel goes first (its device may be the one a new secondary
  // needs); nothing more comes on it.
  ReleaseChannel(/*peer_alive=*/true);
  // All of it here: this host protects the VM from now on, like after a takeover.
  try {
    machine_->run_at_boundary([&] {
    primary::PrimaryOptions po = ProtectionHere();
    auto recorder = std::make_unique<primary::Recorder>(*machine_, po.recorder);
    machine_->record_from_here(recorder.get());
    uint64_t generation;
    {
      std::lock_guard<std::mutex> lock(mu_);
      generation = generation_;
    }
    takeover_ = std::make_unique<primary::ProtectedPrimary>(*machine_, std::move(recorder), generation, po, clock_);
    takeover_->serve_reprotection();
    takeover_published_.store(takeover_.get(), std::memory_order_release);
    });
  } catch (const Error& e) {
    // The VM runs on here, but nothing can protect it.
    log::error("secondary.cannot_protect", {{"error", e.what()}});
  }
}

int ProtectingSecondary::run() {
  int code = 0;
  try {
    code = machine_->run();
  } catch (const Error&) {
    std::lock_guard<std::mutex> lock(mu_);
    if (report_.outcome != SecondaryOutcome::kVmLost) throw;  // already said why
  }
  // A VM that ended before all its memory arrived needs no more of it; and the
  // receiver's threads (which may be releasing the channel) are done before the
  // channel is touched here.
  if (postcopy_) {
    postcopy_->stop();
    postcopy_->join();
  }
  stopping_ = true;
  if (channel_) channel_->close();
  if (receiver_.joinable()) receiver_.join();
  std::lock_guard<std::mutex> lock(mu_);
  if (report_.outcome == SecondaryOutcome::kRunning && !released_.empty() &&
      replayer_->outcome() != ReplayOutcome::kDiverged) {
    report_.outcome = SecondaryOutcome::kReleased;
    report_.detail = released_;
  }
  if (report_.outcome == SecondaryOutcome::kRunning) {
    switch (replayer_->outcome()) {
      case ReplayOutcome::kIdentical:
        report_.outcome = SecondaryOutcome::kPrimaryEnded;
        break;
      case ReplayOutcome::kDiverged:
        report_.outcome = SecondaryOutcome::kDiverged;
        break;
      default:
        report_.outcome = SecondaryOutcome::kFailed;
        break;
    }
    report_.detail = replayer_->message();
  }
  return report_.outcome == SecondaryOutcome::kWentLive && code > 0 ? code : 0;
}

void ProtectingSecondary::stop() {
  stopping_ = true;
  if (replayer_) replayer_->interrupt();
  if (machine_) machine_->stop();
}

SecondaryReport ProtectingSecondary::report() const {
  SecondaryReport r;
  {
    std::lock_guard<std::mutex> lock(mu_);
    r = report_;
  }
  if (replayer_) r.replay = replayer_->stats();
  if (liveness_) r.max_silence_ns = liveness_->max_gap_ns();
  return r;
}

SecondaryStatus ProtectingSecondary::status() const {
  SecondaryStatus st;
  {
    std::lock_guard<std::mutex> lock(mu_);
    st.report = report_;
  }
  st.replicating = replicating_.load(std::memory_order_acquire);
  if (st.replicating) {
    st.primary = primary_name_;  // set by connect(), before replicating_
    st.app = source_->header().vm().app();
    st.received_offset = stream_->size();
    st.consumed_offset = replayer_->consumed_offset();
    st.replica_position = replayer_->replayed_position();
    st.report.replay.checkpoints = replayer_->checkpoint_count();
    st.report.replay.verifications = replayer_->verification_count();
  }
  if (const primary::ProtectedPrimary* p = takeover_published_.load(std::memory_order_acquire)) st.protecting = p->status();
  return st;
}

}  // namespace ftvm::secondary
