// A whole virtual machine: guest RAM, one vCPU on a backend, the device models, and
// the host event thread. Machine::run() is the vCPU run loop; the exit dispatch is
// Machine's ExitHandler implementation. Record and replay attach through
// ExecutionHooks (vmm/execution.h).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/unique_fd.h"
#include "vmm/cpu_backend.h"
#include "vmm/devices/block_backend.h"
#include "vmm/devices/device.h"
#include "vmm/devices/device_io.h"
#include "vmm/devices/disk_observer.h"
#include "vmm/devices/disk_source.h"
#include "vmm/execution.h"
#include "vmm/guest_memory.h"
#include "vmm/page_bitmap.h"

namespace ftvm::vmm {

class ClockDevice;
class Console;
class HealthDevice;
class InterruptController;
class Power;
class Timer;
class VirtioMmioDevice;

namespace snapshot {
class Devices;  // vmm/snapshot.proto
}

struct VmConfig {
  std::string guest_image;
  std::string app;                    // the guest kit app to run (app=NAME)
  std::vector<std::string> app_args;  // extra "key=value" words for the guest command line
  uint64_t mem_mib = 64;
  std::string disk;                   // raw image for virtio-blk; empty: no disk
  std::string disk_serial;            // what the guest reads as the disk's ID; empty: file name
  std::string tap;                    // tap interface for virtio-net; empty: no NIC
  bool nic_without_tap = false;       // replaying: a NIC whose frames come from the log
  std::string mac = "52:54:00:12:34:56";
  std::string ip = "10.0.0.2/24";
  std::string gateway;
  BackendKind backend = BackendKind::kAuto;
  std::string console_path;           // empty: the VMM's stdout
  ExecutionMode mode = ExecutionMode::kLive;

  bool has_nic() const { return !tap.empty() || nic_without_tap; }
};

// Throws ftvm::Error naming the first bad field.
void ValidateConfig(const VmConfig& config);
// The command line the guest kernel receives in its boot info.
std::string GuestCommandLine(const VmConfig& config);

struct MachineStats {
  uint64_t mmio_exits = 0;
  uint64_t pio_exits = 0;
  uint64_t halt_exits = 0;
  uint64_t async_exits = 0;  // kicks: not caused by the guest
  uint64_t wait_cuts = 0;    // idle waits ended early for a run_at_boundary task
  uint64_t interrupts = 0;
  uint64_t console_bytes = 0;
  uint64_t boot_to_first_output_ns = 0;  // 0 if the guest printed nothing
  uint64_t run_ns = 0;
  uint64_t guest_exits() const { return mmio_exits + pio_exits + halt_exits; }
};

class Machine final : private ExitHandler, private DeviceIo {
 public:
  // Builds everything (throws ftvm::Error naming the problem); does not start the guest.
  Machine(const VmConfig& config, Clock& clock, RandomSource& random);
  ~Machine() override;
  Machine(const Machine&) = delete;
  Machine& operator=(const Machine&) = delete;

  // Attaches a recorder or replayer (matching config().mode). Before run().
  void set_hooks(ExecutionHooks* hooks) { hooks_ = hooks; }
  // A live VM (no hooks) whose device I/O goes through `io` instead of straight to
  // the host: synchronous DR holds disk reports until the replica has the writes
  // (storage/sync_gate.h). Null: straight to the host. Before run().
  void set_live_io(DeviceIo* io) { live_override_ = io; }

  // Runs the guest until it powers off (returns its exit code) or stop() is called
  // (returns -1). Throws ftvm::Error when the guest crashes or the backend fails.
  int run();
  // Thread-safe.
  void stop();
  // Thread-safe: ends the VM as a host-side failure; run() throws with `reason`.
  // For a VM whose state can no longer be trusted: from here on no device sees
  // anything the guest does, so nothing it does after this gets out.
  void abort(const std::string& reason);
  // Runs `task` on the vCPU thread at the next boundary, the VM paused there, and
  // waits for it; false when the VM ended first. Any thread but the vCPU's. What the
  // task throws is rethrown here.
  bool run_at_boundary(const std::function<void()>& task);

  MachineStats stats() const;
  std::string_view backend_name() const { return backend_->name(); }
  GuestMemory& memory() { return memory_; }
  const VmConfig& config() const { return config_; }
  Clock& clock() { return clock_; }

  // ---- For the recorder and replayer (vCPU thread, from their hooks).
  // Guest-caused exits so far: the position events are logged at.
  uint64_t position() const { return position_; }
  // A replica joining a running VM starts where its checkpoint was taken. Before run().
  void set_position(uint64_t position) { position_ = position; }
  CpuBackend& backend() { return *backend_; }
  // Guest-visible state of every device that has some, in slot order.
  void save_devices(snapshot::Devices& out) const;
  // Throws ftvm::Error when `in` does not describe this machine's devices.
  void restore_devices(const snapshot::Devices& in);
  // Replay entries: a logged timer expiry / received frame takes effect now.
  // Return false, with the reason, when the replica cannot take it (it diverged).
  bool replay_timer_expiry(std::string& why);
  bool replay_frame(std::span<const uint8_t> frame, std::string& why);
  bool replay_disk_completion(uint16_t queue, uint16_t count, std::string& why);
  // Recording: when host events (timer, tap) have been waiting for the vCPU thread
  // since, in monotonic ns; 0 when none wait. A recorder forces an exit (an epoch
  // checkpoint) when the guest runs too long without one.
  uint64_t host_events_waiting_since_ns() const;
  // Thread-safe: something outside the devices changed what they may do (the
  // secondary acknowledged the log, releasing held disk reports): service the
  // devices soon, like after a host event.
  void notify_host_event();
  // Thread-safe: writes one Ethernet frame to the VM's tap (a frame the output rule
  // held and has now released). False when there is no tap or it refused.
  bool send_frame(std::span<const uint8_t> frame);
  // The guest's monotonic clock now (live or recording): where a VM handed over to
  // another host continues its clock from.
  uint64_t guest_clock_ns() const;
  // Marks every 4 KiB block of the disk image that guest writes reach from now on
  // in `blocks` (null: stop); no-op without a disk. vCPU thread (a boundary task).
  void track_disk_writes(PageBitmap* blocks);
  // Tells `observer` every write and flush the disk completes from now on, in
  // completion order (null: stop); no-op without a disk. Before run(), or on the
  // vCPU thread (run_at_boundary).
  void set_disk_observer(DiskWriteObserver* observer);
  // Asks `source` for the disk's blocks before every read or write (an image still
  // being streamed in; null: stop); no-op without a disk. Before run(), or on the
  // vCPU thread.
  void set_disk_source(DiskBlockSource* source);
  // Carries on with the disk image at `path` (same size) instead of the current one;
  // vCPU thread (run_at_boundary). Throws ftvm::Error; the old image stays then.
  void switch_disk(const std::string& path);
  // The same, to a disk that is not a local file (vmm/devices/block_backend.h):
  // disk_path() is then its describe().
  void switch_disk(std::unique_ptr<BlockBackend> backend);
  // The disk image the VM uses now ("" without a disk).
  std::string disk_path() const;
  // Recording: kick the vCPU when host events have waited this long (0: never).
  void set_forced_exit_after_ns(uint64_t ns) { forced_exit_ns_.store(ns, std::memory_order_release); }

  // A replica takes over as the VM (its primary is gone), right where its replay
  // ended; vCPU thread, from the replayer's hooks. From here on its inputs come
  // from the host: the clock continues from `last_monotonic_ns` (the last value the
  // log gave the guest), an armed timer counts on the host, the NIC attaches to
  // `tap` (if any) and announces the VM's address. `mode`/`hooks`: kLive with none,
  // or kRecord with a recorder, ready for a new secondary. Throws ftvm::Error (a tap
  // that cannot be opened).
  void go_live(ExecutionMode mode, ExecutionHooks* hooks, uint64_t last_monotonic_ns, const std::string& tap);
  // ---- Guest health (vmm/health_monitor.h).
  // The heartbeat device (any thread may read its beats).
  const HealthDevice& health() const { return *health_; }
  // Resets the guest in place, as a power cycle would: RAM cleared and the image
  // loaded again, the vCPU at its boot state, every device at its power-on state;
  // the disk, the host resources and the position counter carry on. The hooks are
  // told first (a recorder logs it at this position; a replayer applies the logged
  // one through here). Every page it rewrites is noted as written (GuestMemory::
  // note_write), so dirty tracking, checkpoints and digests cover it. vCPU thread,
  // at a boundary (run_at_boundary, or a replayer's boundary hook). Throws
  // ftvm::Error if the backend refuses the boot state (the VM is then unusable).
  void reset_guest(const std::string& reason);
  // Resets so far (any thread).
  uint64_t guest_resets() const { return guest_resets_.load(std::memory_order_acquire); }
  // A run_at_boundary task is waiting or running: the VMM has paused the VM (any thread).
  bool boundary_task_pending() const { return task_pending_.load(std::memory_order_acquire); }

  // A live VM starts recording with `hooks` from here (a boundary task): a VM that
  // went live before it could be protected (post-copy migration) becomes a primary.
  void record_from_here(ExecutionHooks* hooks);

 private:
  struct FdWatch {
    Device* device;
    int fd;
    bool armed;
  };

  // ExitHandler
  void mmio(uint64_t gpa, bool is_write, uint8_t* data, unsigned len) override;
  void pio(uint16_t port, bool is_write, uint8_t* data, unsigned len) override;
  bool halt(bool interrupts_enabled) override;
  void after_exit(bool guest_caused) override;
  void boundary(bool exact) override;
  std::optional<uint8_t> pending_vector() override;
  void vector_injected(uint8_t vector) override;
  bool should_stop() override;

  // DeviceIo: forwards to the hooks, or passes host values through when live.
  DeviceIo& io() {
    if (hooks_ != nullptr) return *hooks_;
    return live_override_ != nullptr ? *live_override_ : static_cast<DeviceIo&>(live_io_);
  }
  bool replaying() const override { return config_.mode == ExecutionMode::kReplay; }
  uint64_t input_value(InputKind kind, uint64_t live) override { return io().input_value(kind, live); }
  bool input_bytes(InputKind kind, std::span<uint8_t> out, RandomSource& live) override {
    return io().input_bytes(kind, out, live);
  }
  void timer_expired() override { io().timer_expired(); }
  void frame_received(std::span<const uint8_t> frame) override { io().frame_received(frame); }
  int disk_request_done(uint16_t head, int host_error) override { return io().disk_request_done(head, host_error); }
  void disk_batch_done(uint16_t queue, uint16_t count) override { io().disk_batch_done(queue, count); }
  uint64_t output_mark(OutputStream stream, uint64_t stream_hash) override {
    return io().output_mark(stream, stream_hash);
  }
  bool output_released(uint64_t mark) override { return io().output_released(mark); }
  bool transmit_frame(std::span<const iovec> frame, uint64_t stream_hash) override {
    return io().transmit_frame(frame, stream_hash);
  }

  void AddDevice(unsigned slot, std::unique_ptr<Device> device);
  void ServiceDevices();
  // Any thread: host events `bits` wait for the vCPU (since now, unless some waited
  // already); wakes it.
  void PostHostEvents(uint64_t bits);
  // Any thread: a vCPU idle in WaitForHostEvent looks at its wake-up conditions
  // again; one running stops at its next boundary (a kick).
  void WakeVcpu();
  bool WaitForHostEvent();
  void EventThread();
  void Watch(Device* device, int fd);
  void Arm(FdWatch& watch);
  // Sends the next gratuitous ARP of a replica that went live (thread-safe).
  void Announce();
  // A host-side failure that ends the VM: run() throws with `reason`.
  void Fail(const std::string& reason);
  // After abort(): true, and the access goes nowhere.
  bool Aborted(bool is_write, uint8_t* data, unsigned len);

  VmConfig config_;
  Clock& clock_;
  GuestMemory memory_;
  std::unique_ptr<CpuBackend> backend_;
  std::vector<std::unique_ptr<Device>> devices_;  // owns every device
  Device* slots_[16] = {};
  std::vector<std::pair<uint16_t, Device*>> ports_;
  Console* console_ = nullptr;
  InterruptController* irq_ = nullptr;
  Power* power_ = nullptr;
  Timer* timer_ = nullptr;
  ClockDevice* clock_dev_ = nullptr;
  HealthDevice* health_ = nullptr;
  // What a guest reset starts from again: the image as loaded at creation (the file
  // may have changed since; a replica must reload exactly what its primary did) and
  // the backend's complete state at the first instruction.
  std::vector<uint8_t> image_;
  std::vector<uint8_t> boot_cpu_state_;
  std::atomic<uint64_t> guest_resets_{0};
  VirtioMmioDevice* net_ = nullptr;
  VirtioMmioDevice* blk_ = nullptr;
  BootState boot_{};
  ExecutionHooks* hooks_ = nullptr;
  LiveDeviceIo live_io_;
  DeviceIo* live_override_ = nullptr;  // set_live_io

  uint64_t position_ = 0;
  bool exact_now_ = true;  // the current boundary is exact (or was made so)

  // Host events: the event thread sets bits (one per watch) and wakes the vCPU.
  UniqueFd epoll_;
  UniqueFd wake_fd_;
  std::vector<FdWatch> watches_;
  static constexpr uint64_t kExternalEventBit = uint64_t(1) << 63;  // notify_host_event
  std::atomic<uint64_t> host_events_{0};
  std::atomic<uint64_t> host_events_since_ns_{0};
  std::atomic<uint64_t> forced_exit_ns_{0};
  uint32_t announce_ip_ = 0;
  std::atomic<unsigned> announcements_{0};
  std::atomic<uint64_t> next_announce_ns_{0};  // 0: none due
  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> aborted_{false};
  std::atomic<bool> in_wait_{false};
  std::mutex wait_mu_;
  std::condition_variable wait_cv_;
  std::string fatal_;  // guarded by wait_mu_
  std::thread event_thread_;

  MachineStats stats_;
  uint64_t start_ns_ = 0;

  // run_at_boundary
  void RunBoundaryTask();
  std::atomic<bool> task_pending_{false};
  std::mutex task_mu_;
  std::condition_variable task_cv_;
  const std::function<void()>* task_ = nullptr;
  bool task_done_ = false;
  std::exception_ptr task_error_;
  bool finished_ = false;
};

}  // namespace ftvm::vmm
