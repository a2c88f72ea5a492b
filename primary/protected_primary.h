// A protected primary: the VM runs here in record mode and streams its log to a
// secondary over the logging channel, under the output rule, with failure detection
// and the arbiter deciding who goes on when the two lose each other.
//
//   ProtectedPrimary p(config, options, clock, random);  // builds the VM, claims a generation
//   p.accept_secondary();                                  // waits for one and shakes hands
//   p.serve_reprotection();                                // later secondaries join a running VM
//   int code = p.run();                                    // runs the VM to its end
//
// A replica that took over becomes a ProtectedPrimary too (the second constructor):
// unprotected at first, it takes a new secondary whenever one connects. A secondary
// joining a running VM gets its memory and disk copied while it runs (migration/),
// then, after a short pause for what the VM wrote during the last round, the log.
//
// When the secondary is lost (its channel closes, or it is silent for the failure
// timeout), the primary claims the next arbiter generation: won, it goes on
// unprotected (held outputs are released, and it says so loudly); lost, the
// secondary has taken over, so it stops its VM without releasing anything more.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "common/clock.h"
#include "failover/arbiter.h"
#include "failover/liveness.h"
#include "migration/postcopy.h"
#include "migration/state_transfer.h"
#include "primary/log_streamer.h"
#include "primary/protocol.pb.h"
#include "primary/output_gate.h"
#include "primary/recorder.h"
#include "transport/channel.h"
#include "vmm/machine.h"

namespace ftvm::primary {

struct PrimaryOptions {
  std::string listen;        // channel address the secondary connects to
  std::string arbiter_dir;   // directory both hosts see
  std::string witness;       // IPv4 address on the clients' side (failover/witness.h)
  std::string name = "primary";
  failover::LivenessOptions liveness;
  StreamerOptions streamer;
  RecorderOptions recorder;
  bool strict_outputs = false;  // release outputs once replayed, not only received
  std::chrono::nanoseconds handshake_timeout = std::chrono::seconds(60);
  std::chrono::nanoseconds wait_for_secondary = std::chrono::nanoseconds::max();
  // A handover may keep the VM paused this long waiting for the secondary to catch
  // up and then to confirm; past it, the secondary counts as lost.
  std::chrono::nanoseconds handover_timeout = std::chrono::seconds(10);
  migration::PrecopyOptions precopy;  // a secondary joining the running VM
};

enum class Protection { kWaiting, kProtected, kUnprotected, kStoppedForPeer };
std::string_view ProtectionName(Protection p);

struct PrimaryReport {
  Protection protection = Protection::kWaiting;
  std::string event;               // what changed the protection last, if anything
  uint64_t generation = 0;
  uint64_t lost_at_ns = 0;         // monotonic time the secondary was declared lost
  uint64_t max_silence_ns = 0;     // longest gap between the secondary's messages
  StreamerStats streamer;
  OutputGateStats gate;
  RecorderStats recorder;
  migration::PrecopyStats last_attach;  // the last secondary that joined the running VM
  uint64_t last_attach_pause_ns = 0;    // how long the VM paused for it
  // ftvm status: a secondary is joining the running VM (its live copy runs), and the
  // current secondary's name.
  bool syncing = false;
  std::string secondary;
};

class ProtectedPrimary {
 public:
  // Throws ftvm::Error naming the problem (bad config, arbiter, listen address).
  ProtectedPrimary(vmm::VmConfig config, PrimaryOptions options, Clock& clock, RandomSource& random);
  // A VM already running here in record mode with `recorder` as its hooks (a
  // replica that went live), holding arbiter generation `generation`. Unprotected.
  ProtectedPrimary(vmm::Machine& machine, std::unique_ptr<Recorder> recorder, uint64_t generation,
                   PrimaryOptions options, Clock& clock);
  ~ProtectedPrimary();

  // Waits for a secondary and shakes hands. Returns false (and logs why) when none
  // came in time or it refused: the VM then runs unprotected.
  bool accept_secondary();
  // From now on, whenever the VM is unprotected, accepts a secondary in the
  // background and brings it in with a snapshot of the running VM.
  void serve_reprotection();
  // Runs the VM until it powers off or stop(); returns like Machine::run. (Only
  // for a primary built from a config: a taken-over VM is run by its owner.)
  int run();
  // Thread-safe.
  void stop();
  // A planned switchover this side starts (the dashboard's Migrate, ftvm
  // switchover): the handover a secondary asks for with ftvm migrate, started here.
  // Any thread; "" once it started, else why not (no secondary protects the VM, or
  // a handover is under way). The VM stops once the secondary runs it.
  std::string hand_over();

  vmm::Machine& machine() { return *m_; }
  PrimaryReport report() const;
  // report() from any thread while the VM runs (ftvm status): the recorder's
  // counts from what it publishes for other threads, not its own statistics.
  PrimaryReport status() const;
  std::string listen_address() const { return listener_ ? listener_->address() : ""; }

 private:
  void MonitorLoop();
  // What the secondary says (acknowledgements, handover), from the monitor or, before
  // it runs, from a handover in the pause.
  void HandleMessage(const transport::Message& msg);
  void AcceptLoop();
  // Brings the secondary on `channel` in with a live copy of the VM; false (logged)
  // if it refused or failed, and the VM runs on as it was.
  bool AttachLive(std::unique_ptr<transport::Channel> channel);
  // Sends the hello and checks the reply; "" or why it failed.
  std::string Handshake(transport::Channel& channel, const std::vector<uint8_t>& header, bool snapshot,
                        replication::HelloReply& reply);
  // In the pause (vCPU thread, VM paused): tells the secondary to take the VM at
  // `position` once it has the log up to here, and waits for it to say it runs the
  // VM. True: it does, and this VM stops. False: it failed or was lost, and the
  // arbiter has decided who runs the VM (SecondaryLost).
  bool HandOverNow(uint64_t position, std::string* why);
  void StartProtection(std::unique_ptr<transport::Channel> channel, std::unique_ptr<LogStreamer> streamer,
                       const std::string& secondary_name, bool start_monitor);
  // `silent`: lost by the failure timeout (either side may be the cut-off one), not
  // because its channel closed (its process is gone).
  void SecondaryLost(const std::string& why, bool silent);
  void SetProtection(Protection p, const std::string& event);
  // A planned handover the secondary asked for (handover thread).
  void HandOver();
  // After a post-copy handover: sends the paused VM's memory to where it runs now,
  // the working set first. Failure means the VM is lost; it is logged as such.
  void ServePostcopy();
  // A protected VM that moves (vCPU thread, in the pause): tells its secondary why it
  // is no longer needed, then fences it off with the arbiter like a lost one. False
  // when the secondary had claimed the VM first (this VM then stops).
  bool ReleaseSecondary(const std::string& why);

  PrimaryOptions options_;
  Clock& clock_;
  std::unique_ptr<vmm::Machine> owned_machine_;
  vmm::Machine* m_ = nullptr;
  std::unique_ptr<Recorder> recorder_;
  std::unique_ptr<failover::Arbiter> arbiter_;
  uint64_t generation_ = 0;
  std::unique_ptr<transport::Listener> listener_;
  std::unique_ptr<transport::Channel> channel_;
  std::unique_ptr<LogStreamer> streamer_;
  std::unique_ptr<LogStreamer> old_streamer_;  // a lost secondary's, kept until replaced
  std::unique_ptr<OutputGate> gate_;
  std::unique_ptr<failover::PeerLiveness> liveness_;
  std::thread monitor_;
  std::thread acceptor_;
  std::thread handover_;  // started once (under handover_mu_): the monitor or hand_over()
  std::mutex handover_mu_;
  std::atomic<uint64_t> acked_offset_{0};  // what the output rule counts as acknowledged
  std::atomic<bool> handed_over_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<bool> lost_{false};
  std::atomic<bool> protected_{false};
  std::atomic<bool> syncing_{false};  // AttachLive is copying the VM to a secondary
  std::string secondary_name_;  // the current secondary's (under mu_)
  // Post-copy: from the pause on, the moved VM's memory goes out through this.
  std::unique_ptr<migration::PostcopySender> postcopy_;
  std::unique_ptr<transport::Channel> old_channel_;  // kept until its monitor is joined
  mutable std::mutex mu_;
  PrimaryReport report_;
};

}  // namespace ftvm::primary
