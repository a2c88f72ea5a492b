// The secondary of a protected pair: it connects to the primary, builds a replica
// of its VM from the log header, replays the log as it streams in (acknowledging
// what arrived, so the primary may release its outputs) and, when the primary is
// lost, replays what is left, claims the next arbiter generation and, having won,
// goes live as the VM: real clock, host timer, the tap, a gratuitous ARP.
//
//   ProtectingSecondary s(options, clock, random);
//   s.connect();        // handshake; throws (and tells the primary) on a mismatch
//   int code = s.run(); // replica until the primary ends or is lost, then the VM
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "common/clock.h"
#include "eventlog/stream.h"
#include "failover/arbiter.h"
#include "failover/liveness.h"
#include "migration/postcopy.h"
#include "primary/protected_primary.h"
#include "secondary/record_source.h"
#include "secondary/replayer.h"
#include "transport/channel.h"
#include "vmm/machine.h"

namespace ftvm::secondary {

struct SecondaryOptions {
  std::string connect;      // the primary's channel address
  std::string arbiter_dir;  // the directory the primary uses too
  std::string witness;      // IPv4 address on the clients' side (failover/witness.h)
  // After a takeover, accept a new secondary here (re-protection); empty: the VM
  // just runs live, unprotected.
  std::string listen;
  std::string name = "secondary";
  std::string guest_image;  // empty: the path the primary's log names
  std::string disk;         // this host's copy of the VM's disk
  std::string tap;          // where the VM's network lives on this host after a takeover
  std::string console_path;
  bool verify = true;       // check every Verify record: a proven replica
  // ftvm migrate: once caught up, ask the primary to hand the VM over, and run it
  // here (a planned move, not a failover).
  bool handover = false;
  // With handover, joining a VM that already runs: post-copy. The VM runs here as
  // soon as its registers, devices and disk have arrived; its memory follows while
  // it runs (migration/postcopy.h).
  bool postcopy = false;
  // ftvm protect --attach: only a VM that runs already (joined by a live copy).
  bool require_running = false;
  std::chrono::nanoseconds connect_timeout = std::chrono::seconds(60);
};

enum class SecondaryOutcome {
  kRunning,
  kPrimaryEnded,    // the primary stopped its VM cleanly; the replica ended identical
  kWentLive,        // the primary was lost; this host runs the VM now
  kStoppedForPeer,  // the primary was lost, but it (or another) won the arbiter
  kDiverged,        // the replica left the recorded execution: it must not take over
  kFailed,          // the log or channel broke in a way that proves nothing
  kVmLost,          // post-copy: the VM ran here, and its memory could not be completed
  kReleased,        // the primary released this secondary (its VM moved to another host)
};
std::string_view SecondaryOutcomeName(SecondaryOutcome o);

struct SecondaryReport {
  SecondaryOutcome outcome = SecondaryOutcome::kRunning;
  std::string detail;
  uint64_t generation = 0;
  uint64_t primary_lost_at_ns = 0;  // monotonic, when the primary was declared lost
  uint64_t live_at_ns = 0;          // when this replica went live
  uint64_t handover_requested_at_ns = 0;  // ftvm migrate: when it asked for the VM
  migration::PostcopyReceiverStats postcopy;  // post-copy: once complete (or failed)
  uint64_t max_silence_ns = 0;
  ReplayStats replay;
  uint64_t primary_last_heard_ns = 0;  // monotonic, the lost primary's last message
  std::string last_divergence;         // what differed, when the replica diverged
};

// What ftvm status shows of a secondary (any thread, while it runs).
struct SecondaryStatus {
  bool replicating = false;  // the replica is built and replays (false: still syncing)
  SecondaryReport report;    // replay counts from what the replayer publishes
  std::string primary;       // its name
  std::string app;           // the guest's app, as the primary's log header names it
  uint64_t received_offset = 0;   // log bytes that arrived
  uint64_t consumed_offset = 0;   // log bytes the replica consumed
  uint64_t replica_position = 0;  // guest exits replayed
  // After a takeover with --listen: this host protects the VM as its primary.
  std::optional<primary::PrimaryReport> protecting;
};

class ProtectingSecondary {
 public:
  ProtectingSecondary(SecondaryOptions options, Clock& clock, RandomSource& random);
  ~ProtectingSecondary();

  // Connects (retrying until connect_timeout), receives the hello, checks the VM
  // can be replicated here, answers, and builds the replica. Throws ftvm::Error
  // naming the problem; the primary is told why when the channel allows.
  void connect();
  // Replays, then (after a takeover) runs the VM until it powers off or stop().
  // Returns the guest's exit code when it ran live to power-off, otherwise 0.
  int run();
  void stop();

  SecondaryReport report() const;
  SecondaryStatus status() const;
  vmm::Machine* machine() { return machine_.get(); }

 private:
  void ReceiveLoop();
  void PrimaryLost(const std::string& why);
  bool GoLive(vmm::Machine& m);
  void SendAck(std::chrono::nanoseconds timeout = std::chrono::milliseconds(100));
  void SendHandoverDone();
  // Closes the channel to the primary (after what was sent on it arrived, when the
  // primary is alive), ends the receive loop and frees the channel's device.
  void ReleaseChannel(bool peer_alive);
  // A secondary joining a running VM: the disk's contents come first.
  // A VM that already runs: its state copied live (migration/), then the replica.
  void PrepareLiveState(const vmm::VmConfig& config, bool postcopy);
  void ReceiveLiveState(const vmm::VmConfig& config);
  // Throws ftvm::Error when this host cannot give the VM `mem_mib` of memory.
  static void CheckHostMemory(uint64_t mem_mib);
  // Builds the replica (unless the live copy already did) and its replayer.
  void BuildReplica(const vmm::VmConfig& config);
  // How this host protects the VM once it runs it: as the pair did.
  primary::PrimaryOptions ProtectionHere() const;
  // Post-copy ended (a thread of the receiver): every page here, or the VM lost.
  void PostcopyEnded(const std::string& why, const vmm::MemorySum& memory);

  SecondaryOptions options_;
  Clock& clock_;
  RandomSource& random_;
  std::unique_ptr<failover::Arbiter> arbiter_;
  std::unique_ptr<transport::Channel> channel_;
  std::shared_ptr<eventlog::ByteStream> stream_;
  std::unique_ptr<StreamSource> source_;
  std::unique_ptr<vmm::Machine> machine_;
  std::unique_ptr<Replayer> replayer_;
  // After a takeover with re-protection: this host is the primary now.
  std::unique_ptr<primary::ProtectedPrimary> takeover_;
  std::unique_ptr<failover::PeerLiveness> liveness_;
  uint64_t generation_ = 0;
  std::string primary_name_;
  std::thread receiver_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> primary_said_bye_{false};
  std::string released_;  // why the primary released this secondary (receive thread, then run())
  std::atomic<bool> lost_{false};
  bool live_copy_ = false;                 // the VM was running when this replica joined
  std::unique_ptr<vmm::MemoryDigest> live_digest_;  // of the replica's memory as the live copy fills it
  bool resync_disk_ = false;               // ... and this host kept a disk to bring up to date
  std::atomic<bool> replicating_{false};  // connect() is done: stream_, source_, replayer_ stay
  std::atomic<primary::ProtectedPrimary*> takeover_published_{nullptr};  // takeover_, once built
  std::atomic<bool> caught_up_{false};     // the replica has replayed all that arrived, once
  std::atomic<bool> handing_over_{false};  // the primary said Handover
  std::atomic<uint64_t> handover_clock_ns_{0};  // the guest's clock there
  uint64_t handover_requested_ns_ = 0;     // receive thread
  mutable std::mutex mu_;
  SecondaryReport report_;
  // Last: its threads use the members above.
  std::atomic<bool> postcopy_live_{false};  // the VM runs here, memory or not
  std::unique_ptr<migration::PostcopyReceiver> postcopy_;
};

}  // namespace ftvm::secondary
