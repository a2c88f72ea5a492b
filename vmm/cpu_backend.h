// The vCPU engine behind the machine: KVM where /dev/kvm exists, a software CPU
// (unicorn) where it does not. Both run the same guest image and report the same
// guest-caused exits (MMIO, port I/O, HLT) through ExitHandler, so device models, the
// exit count ("position") and everything built on them are backend-independent.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

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

// The architectural register state both backends can report, in one fixed layout:
// what verification digests cover and what divergence reports name. (Checkpoints
// carry the backend's own complete state besides; see CpuBackend::save_state.)
struct VcpuRegs {
  enum Gpr { kRax, kRcx, kRdx, kRbx, kRsp, kRbp, kRsi, kRdi, kR8, kR9, kR10, kR11, kR12, kR13, kR14, kR15 };
  uint64_t gpr[16] = {};
  uint64_t rip = 0, rflags = 0;
  uint64_t cr0 = 0, cr2 = 0, cr3 = 0, cr4 = 0, efer = 0;
  // CS, SS, DS, ES, FS, GS selectors; FS/GS bases (the ones 64-bit code uses).
  uint16_t selector[6] = {};
  uint64_t fs_base = 0, gs_base = 0;
  uint64_t gdt_base = 0, idt_base = 0;
  uint16_t gdt_limit = 0, idt_limit = 0;
  uint16_t tr_selector = 0;
  uint64_t tr_base = 0;
  uint64_t xmm[16][2] = {};
  uint32_t mxcsr = 0;

  bool operator==(const VcpuRegs&) const = default;
  // Fixed little-endian encoding (kEncodedBytes), for digests and logs.
  static constexpr size_t kEncodedBytes = 16 * 8 + 2 * 8 + 5 * 8 + 6 * 2 + 2 * 8 + 2 * 8 + 2 * 2 + 2 + 8 + 16 * 16 + 4;
  std::vector<uint8_t> encode() const;
  static std::optional<VcpuRegs> decode(std::span<const uint8_t> bytes);
  // "rip 0x1004 (recorded 0x1000)" for the first field that differs, "" when equal.
  static std::string first_difference(const VcpuRegs& mine, const VcpuRegs& theirs);
};

// Implemented by the machine; called on the vCPU thread.
//
// The call protocol, which record/replay depends on: guest-caused exits come as
// mmio/pio/halt, each followed by after_exit(true); a kick gives after_exit(false).
// Whenever the vCPU is stopped between two instructions with nothing of the
// backend's own left to do (any exception already delivered), the backend calls
// boundary(exact), then pending_vector(), and injects that vector if the guest can
// take it now, calling vector_injected(). After an injection it offers boundary()
// again before the guest runs. `exact` says the stop point is a deterministic
// function of the guest's execution since its last exit: the first instruction
// boundary after a guest-caused exit (KVM: right after it; software CPU: the next
// translation-block start), after a halt, at an exception, or where an interrupt
// window the backend was asked for opened. A stop caused only by a kick is not
// exact: it depends on host timing. During boundary() the handler may read the
// vCPU state (CpuBackend::regs/save_state) and replace it (restore_state).
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
  // See the protocol above.
  virtual void boundary(bool exact) = 0;
  // The vector to inject next, if any (peek; vector_injected() consumes it). Asked
  // right after boundary(exact); when it returns a vector the guest cannot take
  // (IF=0), the backend stops again where it can (an exact boundary).
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
  bool exact = true;   // the final stop point is exact (see ExitHandler)
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

  // State access, only from the vCPU thread while it is inside boundary() (or before
  // run() / after it returned). regs() is cheap enough for every verification.
  virtual VcpuRegs regs() = 0;
  // Everything the backend needs to resume exactly here, in its own format: opaque
  // bytes, restorable only by the same backend kind of the same ftvm build.
  virtual std::vector<uint8_t> save_state() = 0;
  // Throws ftvm::Error when the bytes are not a state of this backend kind.
  virtual void restore_state(std::span<const uint8_t> state) = 0;
  // The VMM rewrote guest RAM in [gpa, gpa+len) behind the guest's back (a
  // checkpoint restore): drop anything derived from it (translated code).
  virtual void invalidate_code(uint64_t gpa, uint64_t len) = 0;
  // A dirty-page tracker for guest writes to RAM made by this backend's vCPU.
  // Throws ftvm::Error naming what the host lacks.
  virtual std::unique_ptr<class DirtyTracker> make_dirty_tracker() = 0;
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
