#include "vmm/health_monitor.h"

#include <algorithm>
#include <chrono>

#include "common/error.h"
#include "common/log.h"
#include "vmm/devices/health.h"
#include "vmm/machine.h"

namespace ftvm::vmm {

std::optional<HealthAction> ParseHealthAction(std::string_view text) {
  if (text == "reset") return HealthAction::kReset;
  if (text == "restart") return HealthAction::kRestart;
  return std::nullopt;
}

std::string_view HealthActionName(HealthAction action) {
  return action == HealthAction::kReset ? "reset" : "restart";
}

HealthMonitor::HealthMonitor(Machine& machine, HealthOptions options) : m_(machine), options_(options) {
  if (options_.grace_ns == 0) return;
  log::info("health.watching", {{"grace_ms", options_.grace_ns / 1000000}, {"action", HealthActionName(options_.action)}});
  thread_ = std::thread([this] { Loop(); });
}

HealthMonitor::~HealthMonitor() { stop(); }

void HealthMonitor::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

HealthStatus HealthMonitor::status() const {
  HealthStatus s;
  s.enabled = options_.grace_ns != 0;
  const HealthDevice& h = m_.health();
  s.beats = h.beats();
  if (const uint64_t last = h.last_beat_ns(); s.beats != 0 && last != 0) {
    const uint64_t now = m_.clock().monotonic_ns();
    s.last_beat_age_ns = now > last ? now - last : 1;
  }
  s.hangs = hangs_.load(std::memory_order_relaxed);
  s.resets = m_.guest_resets();
  return s;
}

void HealthMonitor::Loop() {
  Clock& clock = m_.clock();
  using std::chrono::nanoseconds;
  // A few looks per grace period, but not so often that the monitor costs anything.
  const uint64_t tick = std::clamp<uint64_t>(options_.grace_ns / 4, 10'000'000, 250'000'000);
  // A tick this late means this process did not run (host overload, SIGSTOP, a
  // suspended machine): neither did the guest, so its silence proves nothing.
  const uint64_t late = std::max<uint64_t>(options_.grace_ns / 2, 1'000'000'000);
  uint64_t due = clock.monotonic_ns() + tick;
  uint64_t counts_from = 0;  // the silence counts from here at the earliest
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (cv_.wait_for(lock, nanoseconds(tick), [this] { return stopping_; })) return;
    }
    const uint64_t now = clock.monotonic_ns();
    if (now > due + late) {
      log::warn("health.host_stalled", {{"late_ms", (now - due) / 1000000}});
      counts_from = now;
    }
    // Paused by the VMM itself (a handover, a checkpoint being sent): not the guest's doing.
    if (m_.boundary_task_pending()) counts_from = now;
    due = now + tick;
    const HealthDevice& h = m_.health();
    const uint64_t beats = h.beats();
    if (beats == 0) continue;  // not (yet) a guest that beats: never judged
    const uint64_t last = h.last_beat_ns();
    const uint64_t since = std::max(last, counts_from);
    if (now <= since || now - since < options_.grace_ns) continue;

    hangs_.fetch_add(1, std::memory_order_relaxed);
    log::event(log::Level::kWarn, "health.guest-hung",
               {{"silent_ms", (now - last) / 1000000},
                {"grace_ms", options_.grace_ns / 1000000},
                {"beats", beats},
                {"last_beat_value", h.last_value()},
                {"action", HealthActionName(options_.action)}});
    if (options_.action == HealthAction::kRestart) {
      log::event(log::Level::kWarn, "health.guest-restart",
                 {{"exit_code", kExitGuestHung}, {"detail", "stopping the VM for its supervisor to restart it"}});
      restart_.store(true, std::memory_order_release);
      m_.stop();
      return;
    }
    bool ran = false;
    try {
      ran = m_.run_at_boundary([this] { m_.reset_guest("the guest stopped heartbeating"); });
    } catch (const Error& e) {
      // Half reset, the VM's state is nobody's: end it as a host-side failure.
      m_.abort(std::string("guest reset failed: ") + e.what());
      return;
    }
    if (!ran) return;  // the VM ended first
    counts_from = clock.monotonic_ns();
  }
}

}  // namespace ftvm::vmm
