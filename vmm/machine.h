// A whole virtual machine: guest RAM, one vCPU on a backend, the device models, and
// the host event thread. Machine::run() is the vCPU run loop; the exit dispatch is
// Machine's ExitHandler implementation.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/unique_fd.h"
#include "vmm/cpu_backend.h"
#include "vmm/devices/device.h"
#include "vmm/guest_memory.h"

namespace ftvm::vmm {

class Console;
class InterruptController;
class Power;

struct VmConfig {
  std::string guest_image;
  std::string app;                    // the guest kit app to run (app=NAME)
  std::vector<std::string> app_args;  // extra "key=value" words for the guest command line
  uint64_t mem_mib = 64;
  std::string disk;                   // raw image for virtio-blk; empty: no disk
  std::string tap;                    // tap interface for virtio-net; empty: no NIC
  std::string mac = "52:54:00:12:34:56";
  std::string ip = "10.0.0.2/24";
  std::string gateway;
  BackendKind backend = BackendKind::kAuto;
  std::string console_path;           // empty: the VMM's stdout
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
  uint64_t interrupts = 0;
  uint64_t console_bytes = 0;
  uint64_t boot_to_first_output_ns = 0;  // 0 if the guest printed nothing
  uint64_t run_ns = 0;
  uint64_t guest_exits() const { return mmio_exits + pio_exits + halt_exits; }
};

class Machine final : private ExitHandler {
 public:
  // Builds everything (throws ftvm::Error naming the problem); does not start the guest.
  Machine(const VmConfig& config, Clock& clock, RandomSource& random);
  ~Machine() override;
  Machine(const Machine&) = delete;
  Machine& operator=(const Machine&) = delete;

  // Runs the guest until it powers off (returns its exit code) or stop() is called
  // (returns -1). Throws ftvm::Error when the guest crashes or the backend fails.
  int run();
  // Thread-safe.
  void stop();

  MachineStats stats() const;
  std::string_view backend_name() const { return backend_->name(); }
  GuestMemory& memory() { return memory_; }

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
  std::optional<uint8_t> pending_vector() override;
  void vector_injected(uint8_t vector) override;
  bool should_stop() override;

  void AddDevice(unsigned slot, std::unique_ptr<Device> device);
  void ServiceDevices();
  bool WaitForHostEvent();
  void EventThread();
  void Watch(Device* device, int fd);
  void Arm(FdWatch& watch);
  // A host-side failure that ends the VM: run() throws with `reason`.
  void Fail(const std::string& reason);

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
  BootState boot_{};

  // Host events: the event thread sets bits (one per watch) and wakes the vCPU.
  UniqueFd epoll_;
  UniqueFd wake_fd_;
  std::vector<FdWatch> watches_;
  std::atomic<uint64_t> host_events_{0};
  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> in_wait_{false};
  std::mutex wait_mu_;
  std::condition_variable wait_cv_;
  std::string fatal_;  // guarded by wait_mu_
  std::thread event_thread_;

  MachineStats stats_;
  uint64_t start_ns_ = 0;
};

}  // namespace ftvm::vmm
