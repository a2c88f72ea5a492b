// Guest health monitoring: when a guest that heartbeats (FTVM_SLOT_HEALTH) stops
// beating for a grace period while the VMM and its host are fine (a hung kernel
// or app), the VM is reset in place or the VMM exits for its supervisor to restart.
//
// "The host is fine" is what this process can see of it: the monitor's own ticks
// come on time (a stalled host, a stopped process or a suspended machine makes
// them late, and then the grace period starts over instead of blaming the guest),
// and the VM is not paused by the VMM (a boundary task: a handover, a checkpoint
// send). A hung guest is the guest's own fault: on a protected VM the primary
// resets it as a logged event (the replica resets at the same position), never by
// failing over, since the replica would replay the same hang.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

namespace ftvm::vmm {

class Machine;

enum class HealthAction {
  kReset,    // reset the VM in place (RAM cleared, image reloaded, disk kept)
  kRestart,  // stop the VM; the VMM exits with kExitGuestHung for its supervisor
};
std::optional<HealthAction> ParseHealthAction(std::string_view text);
std::string_view HealthActionName(HealthAction action);

// What a VMM exits with when a hung guest made it stop (HealthAction::kRestart).
inline constexpr int kExitGuestHung = 124;

struct HealthOptions {
  uint64_t grace_ns = 0;  // 0: no monitoring
  HealthAction action = HealthAction::kReset;
};

struct HealthStatus {
  bool enabled = false;
  uint64_t beats = 0;            // since the guest's last (re)boot
  uint64_t last_beat_age_ns = 0; // 0: no beat yet since then
  uint64_t hangs = 0;            // hangs noticed
  uint64_t resets = 0;           // resets done (Machine::guest_resets)
};

class HealthMonitor {
 public:
  // Watches `machine` (which must outlive this) from its own thread when
  // options.grace_ns is set; otherwise does nothing but answer status().
  HealthMonitor(Machine& machine, HealthOptions options);
  ~HealthMonitor();
  HealthMonitor(const HealthMonitor&) = delete;
  HealthMonitor& operator=(const HealthMonitor&) = delete;

  // Any thread.
  HealthStatus status() const;
  // The guest hung and the action was kRestart: the VM was stopped, and the VMM
  // should exit with kExitGuestHung.
  bool restart_requested() const { return restart_.load(std::memory_order_acquire); }
  // Stops watching (also done by the destructor). A reset under way finishes first.
  void stop();

 private:
  void Loop();

  Machine& m_;
  const HealthOptions options_;
  std::atomic<bool> restart_{false};
  std::atomic<uint64_t> hangs_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace ftvm::vmm
