// Software CPU backend (unicorn, QEMU's TCG as a library) for hosts without /dev/kvm.
//
// It runs the same guest image and produces the same guest-caused exits as the KVM
// backend: MMIO slots are unicorn MMIO regions whose callbacks call the exit handler,
// port I/O comes through instruction hooks, HLT through the interrupt hook. Unicorn
// does not deliver interrupts or exceptions through the guest IDT, so this backend
// does it, the way the CPU would (interrupt gate, stack switch to TSS.RSP0 on a
// privilege change, IF cleared); the guest's IRETQ is emulated by unicorn itself.
//
// Interrupts are injected at translation-block boundaries: unicorn's stop request is
// only precise there (stopping inside a memory callback restarts the block and would
// repeat the MMIO access), so exits and kicks set a flag that the block hook turns
// into a stop before the next block runs.
#include <unicorn/unicorn.h>

#include <array>
#include <atomic>
#include <memory>
#include <cstring>
#include <string>
#include <utility>

#include "common/error.h"
#include "common/hex.h"
#include "common/log.h"
#include "vmm/abi/ftvm_abi.h"
#include "vmm/cpu_backend.h"
#include "vmm/dirty_tracker.h"

namespace ftvm::vmm {
namespace {

constexpr uint64_t kRflagsIf = 1ull << 9;
constexpr uint64_t kRflagsTf = 1ull << 8;
constexpr uint64_t kRflagsNt = 1ull << 14;
constexpr uint64_t kRflagsRf = 1ull << 16;
constexpr uint64_t kRflagsVm = 1ull << 17;
constexpr uint64_t kRflagsAc = 1ull << 18;
constexpr uint64_t kRflagsIopl3 = 3ull << 12;
constexpr uint32_t kEferMsr = 0xC0000080;

// Unicorn reports HLT through the interrupt hook with this number.
constexpr uint32_t kUnicornHltIntno = 8;

bool ExceptionHasErrorCode(unsigned vector) {
  switch (vector) {
    case 8: case 10: case 11: case 12: case 13: case 14: case 17: case 21: case 29: case 30:
      return true;
    default:
      return false;
  }
}

class EmulatedBackend final : public CpuBackend {
 public:
  explicit EmulatedBackend(GuestMemory& memory) : memory_(memory) {
    uc_engine* engine = nullptr;
    Check(uc_open(UC_ARCH_X86, UC_MODE_64, &engine), "opening the software CPU");
    engine_.reset(engine);
    uc_ = engine;
    Check(uc_mem_map_ptr(uc_, 0, memory.size(), UC_PROT_ALL, memory.host_base()), "mapping guest RAM");
    Check(uc_mmio_map(uc_, FTVM_MMIO_BASE, FTVM_MMIO_SLOTS * FTVM_MMIO_SLOT_SIZE, &MmioRead, this,
                      &MmioWrite, this),
          "mapping the MMIO window");
    uc_hook hook;
    Check(uc_hook_add(uc_, &hook, UC_HOOK_INSN, reinterpret_cast<void*>(&PortIn), this, 1, 0, UC_X86_INS_IN),
          "hooking IN");
    Check(uc_hook_add(uc_, &hook, UC_HOOK_INSN, reinterpret_cast<void*>(&PortOut), this, 1, 0, UC_X86_INS_OUT),
          "hooking OUT");
    Check(uc_hook_add(uc_, &hook, UC_HOOK_INTR, reinterpret_cast<void*>(&Interrupt), this, 1, 0),
          "hooking interrupts");
    Check(uc_hook_add(uc_, &hook, UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, reinterpret_cast<void*>(&MmioAccess), this,
                      FTVM_MMIO_BASE, FTVM_MMIO_BASE + FTVM_MMIO_SLOTS * FTVM_MMIO_SLOT_SIZE - 1),
          "hooking MMIO accesses");
    Check(uc_hook_add(uc_, &hook, UC_HOOK_BLOCK, reinterpret_cast<void*>(&BlockStart), this, 1, 0),
          "hooking blocks");
    Check(uc_hook_add(uc_, &hook, UC_HOOK_MEM_UNMAPPED, reinterpret_cast<void*>(&Unmapped), this, 1, 0),
          "hooking unmapped accesses");
  }

  std::string_view name() const override { return "emulated"; }

  void set_boot_state(const BootState& s) override {
    uc_x86_mmr gdtr{0, s.gdt_base, s.gdt_limit, 0};
    Check(uc_reg_write(uc_, UC_X86_REG_GDTR, &gdtr), "setting GDTR");
    uc_x86_mmr idtr{0, 0, 0, 0};
    Check(uc_reg_write(uc_, UC_X86_REG_IDTR, &idtr), "setting IDTR");
    Check(uc_reg_write(uc_, UC_X86_REG_CR3, &s.cr3), "setting CR3");
    Check(uc_reg_write(uc_, UC_X86_REG_CR4, &s.cr4), "setting CR4");
    uc_x86_msr efer{kEferMsr, s.efer};
    Check(uc_reg_write(uc_, UC_X86_REG_MSR, &efer), "setting EFER");
    Check(uc_reg_write(uc_, UC_X86_REG_CR0, &s.cr0), "setting CR0");
    WriteSelector(UC_X86_REG_CS, s.code_selector);
    for (int reg : {UC_X86_REG_SS, UC_X86_REG_DS, UC_X86_REG_ES})
      WriteSelector(reg, s.data_selector);
    Check(uc_reg_write(uc_, UC_X86_REG_RSP, &s.rsp), "setting RSP");
    Check(uc_reg_write(uc_, UC_X86_REG_RDI, &s.rdi), "setting RDI");
    Check(uc_reg_write(uc_, UC_X86_REG_RFLAGS, &s.rflags), "setting RFLAGS");
    rip_ = s.rip;
  }

  RunResult run(ExitHandler& h) override {
    handler_ = &h;
    running_.store(true, std::memory_order_release);
    RunResult result = Loop(h);
    running_.store(false, std::memory_order_release);
    handler_ = nullptr;
    return result;
  }

  void kick() override {
    kicked_.store(true, std::memory_order_release);
    stop_at_block_.store(true, std::memory_order_release);
  }

  uint64_t guest_rip() override {
    uint64_t rip = 0;
    uc_reg_read(uc_, UC_X86_REG_RIP, &rip);
    return rip;
  }

  VcpuRegs regs() override {
    VcpuRegs r;
    static constexpr int kGprs[16] = {UC_X86_REG_RAX, UC_X86_REG_RCX, UC_X86_REG_RDX, UC_X86_REG_RBX,
                                      UC_X86_REG_RSP, UC_X86_REG_RBP, UC_X86_REG_RSI, UC_X86_REG_RDI,
                                      UC_X86_REG_R8,  UC_X86_REG_R9,  UC_X86_REG_R10, UC_X86_REG_R11,
                                      UC_X86_REG_R12, UC_X86_REG_R13, UC_X86_REG_R14, UC_X86_REG_R15};
    for (int i = 0; i < 16; ++i) r.gpr[i] = ReadReg(kGprs[i]);
    r.rip = rip_;
    r.rflags = ReadReg(UC_X86_REG_RFLAGS);
    r.cr0 = ReadReg(UC_X86_REG_CR0);
    r.cr2 = ReadReg(UC_X86_REG_CR2);
    r.cr3 = ReadReg(UC_X86_REG_CR3);
    r.cr4 = ReadReg(UC_X86_REG_CR4);
    uc_x86_msr efer{kEferMsr, 0};
    uc_reg_read(uc_, UC_X86_REG_MSR, &efer);
    r.efer = efer.value;
    static constexpr int kSegs[6] = {UC_X86_REG_CS, UC_X86_REG_SS, UC_X86_REG_DS,
                                     UC_X86_REG_ES, UC_X86_REG_FS, UC_X86_REG_GS};
    for (int i = 0; i < 6; ++i) r.selector[i] = uint16_t(ReadReg(kSegs[i]));
    r.fs_base = ReadReg(UC_X86_REG_FS_BASE);
    r.gs_base = ReadReg(UC_X86_REG_GS_BASE);
    uc_x86_mmr mmr{};
    uc_reg_read(uc_, UC_X86_REG_GDTR, &mmr);
    r.gdt_base = mmr.base;
    r.gdt_limit = uint16_t(mmr.limit);
    uc_reg_read(uc_, UC_X86_REG_IDTR, &mmr);
    r.idt_base = mmr.base;
    r.idt_limit = uint16_t(mmr.limit);
    uc_reg_read(uc_, UC_X86_REG_TR, &mmr);
    r.tr_selector = mmr.selector;
    r.tr_base = mmr.base;
    for (int i = 0; i < 16; ++i) uc_reg_read(uc_, UC_X86_REG_XMM0 + i, r.xmm[i]);
    uint64_t mxcsr = ReadReg(UC_X86_REG_MXCSR);
    r.mxcsr = uint32_t(mxcsr);
    return r;
  }

  // The emulator's whole CPU context (registers, hidden segment state, the
  // privilege level it keeps internally, FPU/SSE): what uc_context_save copies.
  std::vector<uint8_t> save_state() override {
    // The next instruction is rip_: set_boot_state, an injection (Deliver) and an
    // emulated instruction move it without touching the emulator's RIP, which only
    // uc_emu_start loads. The context must resume there, not where RIP points.
    WriteReg(UC_X86_REG_RIP, rip_);
    UcContext ctx = AllocContext();
    Check(uc_context_save(uc_, ctx.get()), "saving the CPU context");
    size_t size = uc_context_size(uc_);
    std::vector<uint8_t> out(kStateMagic.size() + size);
    std::memcpy(out.data(), kStateMagic.data(), kStateMagic.size());
    std::memcpy(out.data() + kStateMagic.size(), ctx.get(), size);
    return out;
  }

  void restore_state(std::span<const uint8_t> state) override {
    size_t size = uc_context_size(uc_);
    if (state.size() != kStateMagic.size() + size ||
        std::memcmp(state.data(), kStateMagic.data(), kStateMagic.size()) != 0)
      throw Error("software CPU: saved state of " + std::to_string(state.size()) +
                  " bytes is not a context of this ftvm build (expected " +
                  std::to_string(kStateMagic.size() + size) + ")");
    UcContext ctx = AllocContext();
    // The blob starts with unicorn's own header (its size, arch and mode), which
    // this build wrote: copying it whole keeps the allocation's bookkeeping right.
    std::memcpy(static_cast<void*>(ctx.get()), state.data() + kStateMagic.size(), size);
    Check(uc_context_restore(uc_, ctx.get()), "restoring the CPU context");
    // The restored memory may hold other page tables than the ones the software
    // TLB caches: writing CR3 flushes it (cpu_x86_update_cr3). Refills set no new
    // Accessed bits where the recorded guest had been, so replay stays exact.
    WriteReg(UC_X86_REG_CR3, ReadReg(UC_X86_REG_CR3));
    rip_ = ReadReg(UC_X86_REG_RIP);
    pending_exception_ = -1;
    halted_ = false;
    window_ = false;
  }

  void invalidate_code(uint64_t gpa, uint64_t len) override {
    // Translated blocks must go only if code was ever run from these pages. Unicorn
    // can drop a range (UC_CTL_TB_REMOVE_CACHE), but it looks the range up through
    // the guest's page tables like an access, setting Accessed bits and filling the
    // TLB where the primary's guest never went: the replica's RAM would differ. So
    // the whole translation cache is flushed instead, before the next run, and only
    // when a rewritten page held code (~80 ms a flush here; the guest kit's code
    // never changes, so it never happens there).
    if (len == 0) return;
    for (uint64_t page = gpa >> 12; page <= (gpa + len - 1) >> 12; ++page)
      if (code_outside_ram_ || code_pages_.test(page)) flush_code_ = true;
  }

  std::unique_ptr<DirtyTracker> make_dirty_tracker() override { return MakeUffdDirtyTracker(memory_); }

 private:
  RunResult Loop(ExitHandler& h) {
    while (!h.should_stop()) {
      if (!backend_error_.empty()) return {StopReason::kBackendError, backend_error_};
      if (!fault_.empty()) return {StopReason::kGuestError, fault_};
      // Clear the stop request before looking at kicks: a kick landing after this
      // line sets it again, so none is lost.
      stop_at_block_.store(false, std::memory_order_release);
      if (kicked_.exchange(false, std::memory_order_acq_rel)) h.after_exit(false);
      if (pending_exception_ == 13 && EmulatePrivileged()) pending_exception_ = -1;
      if (pending_exception_ >= 0) {
        int vector = pending_exception_;
        pending_exception_ = -1;
        uint64_t error_code = std::exchange(pending_error_code_, 0);
        if (!Deliver(unsigned(vector), ExceptionHasErrorCode(unsigned(vector)), error_code))
          return {StopReason::kGuestError, fault_};
      }
      if (halted_) {
        halted_ = false;
        bool if_set = (ReadReg(UC_X86_REG_RFLAGS) & kRflagsIf) != 0;
        if (!h.halt(if_set))
          return {StopReason::kGuestError, "guest halted with interrupts disabled at rip=" + Hex(rip_)};
        h.after_exit(true);
        exact_ = true;
        continue;
      }
      h.boundary(exact_);
      if (!backend_error_.empty()) return {StopReason::kBackendError, backend_error_};
      if (h.should_stop()) break;
      std::optional<uint8_t> vector = h.pending_vector();
      if (vector && (ReadReg(UC_X86_REG_RFLAGS) & kRflagsIf)) {
        if (!Deliver(*vector, false, 0)) return {StopReason::kGuestError, fault_};
        h.vector_injected(*vector);
        // The handler's first instruction is a deterministic point too: offer it
        // as a boundary before running (a replayer may apply a checkpoint here).
        exact_ = true;
        continue;
      }
      // Interrupt window: stop again at the next block, as KVM's
      // request_interrupt_window would; that stop is exact whatever else happens.
      window_ = vector.has_value();
      // The block hook runs before its block: the window's stop must spare the
      // first block, or a guest with IF=0 here (in an interrupt handler, another
      // line pending) would be stopped where it stands, again and again.
      window_first_block_ = window_;
      if (window_) stop_at_block_.store(true, std::memory_order_release);
      exact_ = window_;
      if (std::exchange(flush_code_, false))
        Check(uc_ctl(uc_, UC_CTL_WRITE(UC_CTL_TB_FLUSH, 0)), "flushing translated code");
      uc_err err = uc_emu_start(uc_, rip_, 0, 0, 0);
      rip_ = ReadReg(UC_X86_REG_RIP);
      window_ = false;
      if (!backend_error_.empty()) return {StopReason::kBackendError, backend_error_};
      if (pending_exception_ >= 0 && fault_.empty()) continue;  // faulted: deliver it
      if (err == UC_ERR_INSN_INVALID && fault_.empty()) {
        // Unicorn reports an undefined opcode as an error, not through the
        // interrupt hook: it is the guest's #UD.
        pending_exception_ = 6;
        exact_ = true;
        continue;
      }
      if (err != UC_ERR_OK) {
        if (!fault_.empty()) return {StopReason::kGuestError, fault_};
        return {StopReason::kBackendError,
                std::string("software CPU stopped: ") + uc_strerror(err) + " at rip=" + Hex(rip_)};
      }
    }
    return {StopReason::kStopped, "", exact_};
  }

  struct ContextFree {
    void operator()(uc_context* c) const { uc_context_free(c); }
  };
  using UcContext = std::unique_ptr<uc_context, ContextFree>;
  UcContext AllocContext() {
    uc_context* ctx = nullptr;
    Check(uc_context_alloc(uc_, &ctx), "allocating a CPU context");
    return UcContext(ctx);
  }
  static constexpr std::array<uint8_t, 8> kStateMagic = {'F', 'T', 'V', 'M', 'U', 'C', '2', 0};

  // The emulator's internal CPL stays 3 once the guest has entered ring 3 (see
  // Deliver), so a privileged instruction in a ring-0 handler raises #GP there. For
  // code whose CS selector says ring 0, the few privileged instructions a handler
  // needs are carried out here instead: MOV from a control register (CR2 in a page
  // fault handler, above all).
  bool EmulatePrivileged() {
    if ((ReadReg(UC_X86_REG_CS) & 3) != 0) return false;
    uint8_t insn[4] = {};
    if (!ReadLinear(rip_, insn, sizeof insn)) return false;
    size_t len = 3;
    uint8_t rex = 0;
    const uint8_t* op = insn;
    if ((insn[0] & 0xf0) == 0x40) {
      rex = insn[0];
      op = insn + 1;
      len = 4;
    }
    if (op[0] != 0x0f || op[1] != 0x20 || (op[2] & 0xc0) != 0xc0) return false;  // MOV r64, CRn
    unsigned cr = ((op[2] >> 3) & 7) | ((rex & 4) ? 8 : 0);
    unsigned reg = (op[2] & 7) | ((rex & 1) ? 8 : 0);
    static constexpr int kCr[] = {UC_X86_REG_CR0, -1, UC_X86_REG_CR2, UC_X86_REG_CR3, UC_X86_REG_CR4,
                                  -1, -1, -1, UC_X86_REG_CR8};
    static constexpr int kGpr[] = {UC_X86_REG_RAX, UC_X86_REG_RCX, UC_X86_REG_RDX, UC_X86_REG_RBX,
                                   UC_X86_REG_RSP, UC_X86_REG_RBP, UC_X86_REG_RSI, UC_X86_REG_RDI,
                                   UC_X86_REG_R8,  UC_X86_REG_R9,  UC_X86_REG_R10, UC_X86_REG_R11,
                                   UC_X86_REG_R12, UC_X86_REG_R13, UC_X86_REG_R14, UC_X86_REG_R15};
    if (cr > 8 || kCr[cr] < 0) return false;
    WriteReg(kGpr[reg], ReadReg(kCr[cr]));
    rip_ += len;
    return true;
  }

  // Delivers `vector` through the guest IDT: 64-bit interrupt/trap gates only.
  bool Deliver(unsigned vector, bool push_error, uint64_t error_code) {
    uc_x86_mmr idtr{};
    uc_reg_read(uc_, UC_X86_REG_IDTR, &idtr);
    uint8_t gate[16];
    uint64_t gate_addr = idtr.base + uint64_t(vector) * 16;
    if (uint64_t(vector) * 16 + 15 > idtr.limit || !ReadLinear(gate_addr, gate, sizeof gate)) {
      fault_ = "cannot deliver vector " + std::to_string(vector) + " at rip=" + Hex(rip_) +
               ": outside the guest IDT (triple fault)";
      return false;
    }
    unsigned type = gate[5] & 0x0f;
    bool present = (gate[5] & 0x80) != 0;
    if (!present || (type != 0xe && type != 0xf)) {
      fault_ = "cannot deliver vector " + std::to_string(vector) + " at rip=" + Hex(rip_) +
               ": IDT gate not present or not a 64-bit gate (triple fault)";
      return false;
    }
    uint64_t target = uint64_t(gate[0]) | uint64_t(gate[1]) << 8 | uint64_t(gate[6]) << 16 |
                      uint64_t(gate[7]) << 24 | uint64_t(gate[8]) << 32 | uint64_t(gate[9]) << 40 |
                      uint64_t(gate[10]) << 48 | uint64_t(gate[11]) << 56;
    uint16_t target_cs = uint16_t(gate[2] | gate[3] << 8);
    uint64_t cs = ReadReg(UC_X86_REG_CS) & 0xffff;
    uint64_t ss = ReadReg(UC_X86_REG_SS) & 0xffff;
    uint64_t rsp = ReadReg(UC_X86_REG_RSP);
    uint64_t rflags = ReadReg(UC_X86_REG_RFLAGS);
    unsigned cpl = unsigned(cs & 3);
    unsigned new_cpl = target_cs & 3;
    uint64_t new_rsp = rsp;
    unsigned ist = gate[4] & 7;
    if (ist != 0 || new_cpl < cpl) {
      // 64-bit TSS: RSP0 at offset 4, IST1..7 at offset 0x24.
      uc_x86_mmr tr{};
      uc_reg_read(uc_, UC_X86_REG_TR, &tr);
      uint64_t offset = ist != 0 ? 0x24 + (ist - 1) * 8 : 4;
      if (!ReadLinear(tr.base + offset, &new_rsp, sizeof new_rsp)) {
        fault_ = "cannot deliver vector " + std::to_string(vector) + ": TSS stack pointer unreadable";
        return false;
      }
    }
    new_rsp &= ~uint64_t(0xf);
    uint64_t frame[6];
    int n = 0;
    if (push_error) frame[n++] = error_code;
    frame[n++] = rip_;
    frame[n++] = cs;
    frame[n++] = rflags;
    frame[n++] = rsp;
    frame[n++] = ss;
    new_rsp -= uint64_t(n) * 8;
    if (!WriteLinear(new_rsp, frame, size_t(n) * 8)) {
      fault_ = "cannot deliver vector " + std::to_string(vector) + ": interrupt stack at " +
               Hex(new_rsp) + " is not in guest RAM (triple fault)";
      return false;
    }
    log::debug("emu.deliver", {{"vector", vector}, {"from_rip", Hex(rip_)}, {"from_cs", Hex(cs)},
                               {"handler", Hex(target)}, {"stack", Hex(new_rsp)}});
    rflags &= ~(kRflagsTf | kRflagsNt | kRflagsRf | kRflagsVm);
    if (type == 0xe) rflags &= ~kRflagsIf;  // interrupt gate
    rflags &= ~kRflagsAc;
    // Unicorn keeps the privilege level in internal state that only instructions
    // change (writing CS/SS in long mode sets the selector alone), so once the guest
    // has IRETQ'd to ring 3 the emulator believes CPL=3 in our injected handlers too.
    // IRETQ at that CPL restores IF only when CPL <= IOPL, hence IOPL=3 for handlers
    // (it also lets their port I/O through). The guest can see IOPL=3 in RFLAGS
    // afterwards; the guest kit never looks.
    rflags |= kRflagsIopl3;
    WriteSelector(UC_X86_REG_CS, target_cs);
    if (new_cpl != cpl) WriteSelector(UC_X86_REG_SS, uint16_t(new_cpl));  // null SS, RPL = CPL
    WriteReg(UC_X86_REG_RSP, new_rsp);
    WriteReg(UC_X86_REG_RFLAGS, rflags);
    rip_ = target;
    return true;
  }

  // Linear to physical through the guest's 4-level page tables.
  bool Translate(uint64_t linear, uint64_t& phys) {
    uint64_t cr0 = ReadReg(UC_X86_REG_CR0);
    if (!(cr0 & (1ull << 31))) {
      phys = linear;
      return true;
    }
    uint64_t table = ReadReg(UC_X86_REG_CR3) & 0x000ffffffffff000ull;
    for (int level = 3; level >= 0; --level) {
      uint64_t index = (linear >> (12 + 9 * level)) & 0x1ff;
      uint64_t entry = 0;
      if (!memory_.read_obj(table + index * 8, entry) || !(entry & 1)) return false;
      if (level > 0 && (entry & 0x80)) {  // large page
        uint64_t page_size = 1ull << (12 + 9 * level);
        phys = (entry & 0x000ffffffffff000ull & ~(page_size - 1)) | (linear & (page_size - 1));
        return true;
      }
      table = entry & 0x000ffffffffff000ull;
    }
    phys = table | (linear & 0xfff);
    return true;
  }

  bool ReadLinear(uint64_t linear, void* out, size_t len) {
    auto* dst = static_cast<uint8_t*>(out);
    while (len > 0) {
      uint64_t phys;
      if (!Translate(linear, phys)) return false;
      size_t chunk = std::min<size_t>(len, 4096 - (linear & 0xfff));
      if (!memory_.read(phys, dst, chunk)) return false;
      linear += chunk, dst += chunk, len -= chunk;
    }
    return true;
  }

  bool WriteLinear(uint64_t linear, const void* in, size_t len) {
    auto* src = static_cast<const uint8_t*>(in);
    while (len > 0) {
      uint64_t phys;
      if (!Translate(linear, phys)) return false;
      size_t chunk = std::min<size_t>(len, 4096 - (linear & 0xfff));
      if (!memory_.write(phys, src, chunk)) return false;
      linear += chunk, src += chunk, len -= chunk;
    }
    return true;
  }

  uint64_t ReadReg(int reg) {
    uint64_t v = 0;
    uc_reg_read(uc_, reg, &v);
    return v;
  }
  void WriteReg(int reg, uint64_t v) { Check(uc_reg_write(uc_, reg, &v), "writing a register"); }
  void WriteSelector(int reg, uint16_t selector) {
    uint64_t v = selector;
    Check(uc_reg_write(uc_, reg, &v), "loading segment selector " + Hex(selector));
  }

  static void Check(uc_err err, const std::string& what) {
    if (err != UC_ERR_OK) throw Error("software CPU: " + what + ": " + uc_strerror(err));
  }

  // Exceptions must not unwind through unicorn's C frames: a callback that fails
  // stops the CPU and run() reports it as a backend error.
  template <typename F>
  void Guarded(uc_engine* uc, F&& body) {
    try {
      body();
    } catch (const std::exception& e) {
      if (backend_error_.empty()) backend_error_ = e.what();
      uc_emu_stop(uc);
    }
  }

  // An exit happened inside a block: stop before the next block so that the machine
  // can service devices and inject interrupts at a precise instruction boundary.
  void ExitTaken() {
    exact_ = true;
    stop_at_block_.store(true, std::memory_order_release);
  }

  // Unicorn splits 8-byte MMIO accesses into two 4-byte callbacks (and passes the
  // wrong value for the second half of a write). The memory hook sees the whole
  // access, so it is the exit: it dispatches the access once with its real size, and
  // the region callbacks only hand out the bytes of a read.
  static void MmioAccess(uc_engine* uc, uc_mem_type type, uint64_t address, int size, int64_t value,
                         void* self_ptr) {
    auto* self = static_cast<EmulatedBackend*>(self_ptr);
    self->Guarded(uc, [&] {
      unsigned len = std::min<unsigned>(unsigned(size), 8);
      if (type == UC_MEM_WRITE) {
        uint8_t data[8];
        std::memcpy(data, &value, 8);
        self->handler_->mmio(address, true, data, len);
      } else {
        std::memset(self->read_bytes_, 0, sizeof self->read_bytes_);
        self->read_base_ = address;
        self->handler_->mmio(address, false, self->read_bytes_, len);
      }
      self->handler_->after_exit(true);
    });
    self->ExitTaken();
  }

  static uint64_t MmioRead(uc_engine*, uint64_t offset, unsigned size, void* self_ptr) {
    auto* self = static_cast<EmulatedBackend*>(self_ptr);
    uint64_t at = FTVM_MMIO_BASE + offset - self->read_base_;
    uint64_t value = 0;
    if (at < 8) std::memcpy(&value, self->read_bytes_ + at, std::min<uint64_t>(size, 8 - at));
    return value;
  }

  static void MmioWrite(uc_engine*, uint64_t, unsigned, uint64_t, void*) {}

  static uint32_t PortIn(uc_engine* uc, uint32_t port, int size, void* self_ptr) {
    auto* self = static_cast<EmulatedBackend*>(self_ptr);
    uint8_t data[4] = {};
    self->Guarded(uc, [&] {
      self->handler_->pio(uint16_t(port), false, data, unsigned(size));
      self->handler_->after_exit(true);
    });
    self->ExitTaken();
    uint32_t value = 0;
    std::memcpy(&value, data, size_t(size));
    return value;
  }

  static void PortOut(uc_engine* uc, uint32_t port, int size, uint32_t value, void* self_ptr) {
    auto* self = static_cast<EmulatedBackend*>(self_ptr);
    uint8_t data[4];
    std::memcpy(data, &value, 4);
    self->Guarded(uc, [&] {
      self->handler_->pio(uint16_t(port), true, data, unsigned(size));
      self->handler_->after_exit(true);
    });
    self->ExitTaken();
  }

  // Exceptions raised by guest instructions (and HLT). The state is precise here: RIP
  // is the faulting instruction (after it, for HLT).
  static void Interrupt(uc_engine* uc, uint32_t intno, void* self_ptr) {
    auto* self = static_cast<EmulatedBackend*>(self_ptr);
    uint64_t rip = self->ReadReg(UC_X86_REG_RIP);
    uint8_t prev = 0;
    if (intno == kUnicornHltIntno && rip > 0 && self->memory_.read(rip - 1, &prev, 1) && prev == 0xf4 &&
        (self->ReadReg(UC_X86_REG_CS) & 3) == 0) {
      self->halted_ = true;
    } else if (intno < 32) {
      self->pending_exception_ = int(intno);
    } else {
      // INT n instructions: the kit never uses them (they fault under PVM).
      self->pending_exception_ = 13;
    }
    self->exact_ = true;  // a guest instruction stopped here, not the host
    uc_emu_stop(uc);
  }

  // Unicorn reports a failed page walk or a non-canonical address as an "unmapped"
  // access; on a CPU it is the guest's own #PF (with CR2) or #GP, delivered to the
  // guest kernel. RIP is the faulting instruction here.
  static bool Unmapped(uc_engine* uc, uc_mem_type type, uint64_t address, int, int64_t, void* self_ptr) {
    auto* self = static_cast<EmulatedBackend*>(self_ptr);
    bool canonical = (int64_t(address) >> 47) == 0 || (int64_t(address) >> 47) == -1;
    if (!canonical) {
      self->pending_exception_ = 13;
      self->pending_error_code_ = 0;
    } else {
      self->pending_exception_ = 14;
      bool write = type == UC_MEM_WRITE_UNMAPPED;
      bool fetch = type == UC_MEM_FETCH_UNMAPPED;
      bool user = (self->ReadReg(UC_X86_REG_CS) & 3) == 3;
      self->pending_error_code_ = (write ? 2u : 0u) | (user ? 4u : 0u) | (fetch ? 16u : 0u);
      self->Guarded(uc, [&] { self->WriteReg(UC_X86_REG_CR2, address); });
    }
    self->exact_ = true;
    uc_emu_stop(uc);
    return false;
  }

  static void BlockStart(uc_engine* uc, uint64_t address, uint32_t, void* self_ptr) {
    auto* self = static_cast<EmulatedBackend*>(self_ptr);
    // Pages code ran from, for invalidate_code. By virtual address: guest RAM is
    // identity-mapped (vmm/abi/ftvm_abi.h); code anywhere else makes every rewrite
    // count.
    if (address < self->memory_.size())
      self->code_pages_.set(address >> 12);
    else
      self->code_outside_ram_ = true;
    // A kick still stops at once; the window's own request waits one block.
    if (std::exchange(self->window_first_block_, false) && !self->kicked_.load(std::memory_order_acquire)) return;
    if (self->stop_at_block_.load(std::memory_order_acquire)) uc_emu_stop(uc);
  }

  GuestMemory& memory_;
  struct EngineCloser {
    void operator()(uc_engine* uc) const { uc_close(uc); }
  };
  std::unique_ptr<uc_engine, EngineCloser> engine_;
  uc_engine* uc_ = nullptr;  // engine_.get()
  ExitHandler* handler_ = nullptr;
  uint64_t rip_ = 0;
  int pending_exception_ = -1;
  uint64_t pending_error_code_ = 0;
  uint64_t read_base_ = 0;     // GPA of the MMIO read being served
  uint8_t read_bytes_[8] = {}; // its value, handed out by MmioRead
  bool halted_ = false;
  // The current stop is a deterministic point (see ExitHandler): an exit, an
  // exception or a requested interrupt window happened since the last resume.
  bool exact_ = true;
  bool window_ = false;  // this run was asked to stop at the next block (IF=0)
  bool window_first_block_ = false;  // ... and has not run its first block yet
  PageBitmap code_pages_{memory_.size() >> 12};  // pages blocks started in
  bool code_outside_ram_ = false;
  bool flush_code_ = false;  // a page with code was rewritten behind the guest
  std::string fault_;          // the guest did something no CPU can continue from
  std::string backend_error_;  // the VMM failed inside an exit
  std::atomic<bool> stop_at_block_{false};
  std::atomic<bool> kicked_{false};
  std::atomic<bool> running_{false};
};

}  // namespace

std::unique_ptr<CpuBackend> MakeEmulatedBackend(GuestMemory& memory) {
  return std::make_unique<EmulatedBackend>(memory);
}

}  // namespace ftvm::vmm
