// The vCPU engine behind the machine: KVM where /dev/kvm exists, a software CPU
// (unicorn) where it does not. Both run the same guest image and report the same
// guest-caused exits (MMIO, port I/O, HLT) through ExitHandler, so device models, the
// exit count ("position") and everything built on them are backend-independent.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "vmm/guest_memory.h"

namespace ftvm::vmm {

// Architectural state the loader chooses for the first instruction.
struct BootState {
  uint64_t rip = 0;
  uint64_t rsp = 0;
  uint64_t rdi = 0;
  uint64_t rflags = 0x2;
  uint64_t cr0 = 0, cr3 = 0, cr4 = 0, efer = 0;
  uint64_t gdt_base = 0;
  uint16_t gdt_limit = 0;
  uint16_t code_selector = 0;
  uint16_t data_selector = 0;
};

// Implemented by the machine; called on the vCPU thread.
class ExitHandler {
 public:
  virtual ~ExitHandler() = default;
  // Guest-caused exits. `data` holds `len` bytes (1, 2, 4 or 8) to write, or receives
  // the bytes read.
  virtual void mmio(uint64_t gpa, bool is_write, uint8_t* data, unsigned len) = 0;
  virtual void pio(uint16_t port, bool is_write, uint8_t* data, unsigned len) = 0;
  // The guest executed HLT. With interrupts enabled the handler blocks until an
  // interrupt is pending; returns false when the guest can never wake (IF=0).
  virtual bool halt(bool interrupts_enabled) = 0;
  // After every guest-caused exit and after every kick.
  virtual void after_exit(bool guest_caused) = 0;
  // The vector to inject next, if any (peek; vector_injected() consumes it).
  virtual std::optional<uint8_t> pending_vector() = 0;
  virtual void vector_injected(uint8_t vector) = 0;
  // True once the VM should stop (power-off, stop request).
  virtual bool should_stop() = 0;
};

enum class StopReason {
  kStopped,      // should_stop() became true
  kGuestError,   // triple fault, unrecoverable exception delivery, halted forever
  kBackendError  // the backend failed (ioctl error, emulator error)
};

struct RunResult {
  StopReason reason = StopReason::kStopped;
  std::string detail;  // names the problem, with the guest RIP
};

class CpuBackend {
 public:
  virtual ~CpuBackend() = default;
  virtual std::string_view name() const = 0;
  virtual void set_boot_state(const BootState& state) = 0;
  // Runs until handler.should_stop() or an error. Call from one thread only.
  virtual RunResult run(ExitHandler& handler) = 0;
  // Thread-safe: makes the vCPU leave guest mode soon and call after_exit(false).
  virtual void kick() = 0;
  virtual uint64_t guest_rip() = 0;
};

enum class BackendKind { kAuto, kKvm, kEmulated };

// Throws ftvm::Error naming the problem (e.g. "/dev/kvm not found ...").
std::unique_ptr<CpuBackend> MakeKvmBackend(GuestMemory& memory);
std::unique_ptr<CpuBackend> MakeEmulatedBackend(GuestMemory& memory);
// kAuto picks KVM when /dev/kvm exists, otherwise the emulated backend (and says so).
std::unique_ptr<CpuBackend> MakeBackend(BackendKind kind, GuestMemory& memory);
std::string_view BackendKindName(BackendKind kind);
std::optional<BackendKind> ParseBackendKind(std::string_view text);

}  // namespace ftvm::vmm
