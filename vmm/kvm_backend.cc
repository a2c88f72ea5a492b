// KVM backend: one VM fd, one vCPU, no in-kernel irqchip and no in-kernel timers.
// The VMM decides when every interrupt is injected (KVM_INTERRUPT with an interrupt
// window), which is what deterministic record/replay needs.
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <memory>
#include <utility>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/hex.h"
#include "common/log.h"
#include "common/unique_fd.h"
#include "vmm/cpu_backend.h"
#include "vmm/dirty_tracker.h"
#include "vmm/kvm_abi.h"

namespace ftvm::vmm {
namespace {

constexpr int kKickSignal = SIGUSR1;

// The kick signal handler must reach the kvm_run of the thread it interrupts; a
// thread-local pointer is the only async-signal-safe way to get there.
thread_local kvm_run* tls_kvm_run = nullptr;

void OnKickSignal(int) {
  if (tls_kvm_run != nullptr) tls_kvm_run->immediate_exit = 1;
}

UniqueFd OpenKvm() {
  UniqueFd fd(open("/dev/kvm", O_RDWR | O_CLOEXEC));
  if (!fd) {
    int err = errno;
    if (err == ENOENT || err == ENODEV || err == ENXIO)
      throw Error("/dev/kvm not found: KVM is not available on this host (use --backend emulated)");
    if (err == EACCES || err == EPERM)
      throw Error("no permission to open /dev/kvm (run as root or join the 'kvm' group)");
    throw SysError("opening /dev/kvm", err);
  }
  int version = ioctl(fd.get(), KVM_GET_API_VERSION, 0);
  if (version != KVM_API_VERSION)
    throw Error("/dev/kvm speaks KVM API version " + std::to_string(version) + ", ftvm needs " +
                std::to_string(KVM_API_VERSION));
  return fd;
}

class KvmBackend final : public CpuBackend {
 public:
  explicit KvmBackend(GuestMemory& memory) : kvm_(OpenKvm()), memory_(memory) {
    const std::pair<long, const char*> required[] = {
        {KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY (guest RAM from a memfd)"},
        {KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT (needed to kick the vCPU)"}};
    for (const auto& [cap, name] : required) {
      if (ioctl(kvm_.get(), KVM_CHECK_EXTENSION, cap) <= 0) throw Error(std::string("KVM lacks ") + name);
    }
    vm_.reset(ioctl(kvm_.get(), KVM_CREATE_VM, 0));
    if (!vm_) throw SysError("KVM_CREATE_VM");
    // Intel VMX needs a TSS region below 4 GiB even when the guest never uses real
    // mode; it sits just below the top of the 32-bit space, away from RAM and MMIO.
    if (ioctl(vm_.get(), KVM_SET_TSS_ADDR, 0xfffbd000ul) != 0) throw SysError("KVM_SET_TSS_ADDR");

    kvm_userspace_memory_region region{};
    region.slot = 0;
    region.guest_phys_addr = 0;
    region.memory_size = memory.size();
    region.userspace_addr = reinterpret_cast<uint64_t>(memory.host_base());
    if (ioctl(vm_.get(), KVM_SET_USER_MEMORY_REGION, &region) != 0)
      throw SysError("KVM_SET_USER_MEMORY_REGION for " + std::to_string(memory.size() >> 20) + " MiB");

    vcpu_.reset(ioctl(vm_.get(), KVM_CREATE_VCPU, 0));
    if (!vcpu_) throw SysError("KVM_CREATE_VCPU");
    int mmap_size = ioctl(kvm_.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
    if (mmap_size < 0) throw SysError("KVM_GET_VCPU_MMAP_SIZE");
    if (size_t(mmap_size) < sizeof(kvm_run))
      throw Error("KVM_GET_VCPU_MMAP_SIZE returned " + std::to_string(mmap_size) + " bytes, less than struct kvm_run");
    run_size_ = size_t(mmap_size);
    void* p = mmap(nullptr, run_size_, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu_.get(), 0);
    if (p == MAP_FAILED) throw SysError("mapping kvm_run");
    run_mapping_ = RunMapping(static_cast<kvm_run*>(p), RunUnmapper{run_size_});
    run_ = run_mapping_.get();
    SetCpuid();
    ProbeMsrs();
    InstallKickHandler();
  }

  std::string_view name() const override { return "kvm"; }

  void set_boot_state(const BootState& s) override {
    kvm_sregs sregs{};
    if (ioctl(vcpu_.get(), KVM_GET_SREGS, &sregs) != 0) throw SysError("KVM_GET_SREGS");
    kvm_segment code{};
    code.base = 0;
    code.limit = 0xffffffff;
    code.selector = s.code_selector;
    code.type = 11;  // execute/read, accessed
    code.present = 1;
    code.dpl = 0;
    code.db = 0;
    code.s = 1;
    code.l = 1;
    code.g = 1;
    kvm_segment data = code;
    data.selector = s.data_selector;
    data.type = 3;  // read/write, accessed
    data.l = 0;
    data.db = 1;
    sregs.cs = code;
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
    sregs.gdt.base = s.gdt_base;
    sregs.gdt.limit = s.gdt_limit;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = s.cr0;
    sregs.cr3 = s.cr3;
    sregs.cr4 = s.cr4;
    sregs.efer = s.efer;
    if (ioctl(vcpu_.get(), KVM_SET_SREGS, &sregs) != 0) throw SysError("KVM_SET_SREGS");
    kvm_regs regs{};
    regs.rip = s.rip;
    regs.rsp = s.rsp;
    regs.rdi = s.rdi;
    regs.rflags = s.rflags;
    if (ioctl(vcpu_.get(), KVM_SET_REGS, &regs) != 0) throw SysError("KVM_SET_REGS");
  }

  RunResult run(ExitHandler& h) override {
    tls_kvm_run = run_;
    vcpu_thread_ = pthread_self();
    running_.store(true, std::memory_order_release);
    RunResult result = Loop(h);
    running_.store(false, std::memory_order_release);
    tls_kvm_run = nullptr;
    return result;
  }

  void kick() override {
    // immediate_exit covers a kick that lands before KVM_RUN is entered (even before
    // run() started); the signal interrupts a KVM_RUN in progress. The count lets
    // CompletePendingIo() tell a kick from its own use of immediate_exit.
    kicks_.fetch_add(1, std::memory_order_acq_rel);
    __atomic_store_n(&run_->immediate_exit, 1, __ATOMIC_RELEASE);
    if (running_.load(std::memory_order_acquire)) pthread_kill(vcpu_thread_, kKickSignal);
  }

  uint64_t guest_rip() override {
    kvm_regs regs{};
    if (ioctl(vcpu_.get(), KVM_GET_REGS, &regs) != 0) return ~0ull;  // shows as 0xffff... in messages
    return regs.rip;
  }

  VcpuRegs regs() override {
    if (io_pending_) CompletePendingIo();
    kvm_regs regs{};
    kvm_sregs sregs{};
    kvm_fpu fpu{};
    if (ioctl(vcpu_.get(), KVM_GET_REGS, &regs) != 0) throw SysError("KVM_GET_REGS");
    if (ioctl(vcpu_.get(), KVM_GET_SREGS, &sregs) != 0) throw SysError("KVM_GET_SREGS");
    if (ioctl(vcpu_.get(), KVM_GET_FPU, &fpu) != 0) throw SysError("KVM_GET_FPU");
    VcpuRegs r;
    const uint64_t gprs[16] = {regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp, regs.rsi, regs.rdi,
                               regs.r8,  regs.r9,  regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15};
    std::copy(std::begin(gprs), std::end(gprs), r.gpr);
    r.rip = regs.rip;
    r.rflags = regs.rflags;
    r.cr0 = sregs.cr0;
    r.cr2 = sregs.cr2;
    r.cr3 = sregs.cr3;
    r.cr4 = sregs.cr4;
    r.efer = sregs.efer;
    const kvm_segment* segs[6] = {&sregs.cs, &sregs.ss, &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs};
    for (int i = 0; i < 6; ++i) r.selector[i] = segs[i]->selector;
    r.fs_base = sregs.fs.base;
    r.gs_base = sregs.gs.base;
    r.gdt_base = sregs.gdt.base;
    r.gdt_limit = sregs.gdt.limit;
    r.idt_base = sregs.idt.base;
    r.idt_limit = sregs.idt.limit;
    r.tr_selector = sregs.tr.selector;
    r.tr_base = sregs.tr.base;
    for (int i = 0; i < 16; ++i) std::memcpy(r.xmm[i], fpu.xmm[i], 16);
    r.mxcsr = fpu.mxcsr;
    return r;
  }

  // Sections of KVM's own structures (the kernel ABI fixes their layout), each
  // tagged and sized so a blob from another build is refused, not misread.
  std::vector<uint8_t> save_state() override {
    if (io_pending_) CompletePendingIo();
    StateWriter w;
    kvm_regs regs{};
    kvm_sregs sregs{};
    kvm_abi::Xsave xsave{};
    kvm_xcrs xcrs{};
    kvm_vcpu_events events{};
    if (ioctl(vcpu_.get(), KVM_GET_REGS, &regs) != 0) throw SysError("KVM_GET_REGS");
    if (ioctl(vcpu_.get(), KVM_GET_SREGS, &sregs) != 0) throw SysError("KVM_GET_SREGS");
    if (ioctl(vcpu_.get(), kvm_abi::kGetXsave, &xsave) != 0) throw SysError("KVM_GET_XSAVE");
    if (ioctl(vcpu_.get(), KVM_GET_XCRS, &xcrs) != 0) throw SysError("KVM_GET_XCRS");
    if (ioctl(vcpu_.get(), KVM_GET_VCPU_EVENTS, &events) != 0) throw SysError("KVM_GET_VCPU_EVENTS");
    w.add(kTagRegs, &regs, sizeof regs);
    w.add(kTagSregs, &sregs, sizeof sregs);
    w.add(kTagXsave, &xsave, sizeof xsave);
    w.add(kTagXcrs, &xcrs, sizeof xcrs);
    w.add(kTagEvents, &events, sizeof events);
    std::vector<uint8_t> msrs = MsrBuffer();
    if (!msrs_.empty()) {
      int n = ioctl(vcpu_.get(), kvm_abi::kGetMsrs, msrs.data());
      if (n != int(msrs_.size())) throw SysError("KVM_GET_MSRS (" + std::to_string(n) + " of " +
                                                 std::to_string(msrs_.size()) + ")");
    }
    w.add(kTagMsrs, msrs.data(), msrs.size());
    return w.take();
  }

  void restore_state(std::span<const uint8_t> state) override {
    StateReader r(state);
    kvm_regs regs{};
    kvm_sregs sregs{};
    kvm_abi::Xsave xsave{};
    kvm_xcrs xcrs{};
    kvm_vcpu_events events{};
    r.get(kTagRegs, &regs, sizeof regs);
    r.get(kTagSregs, &sregs, sizeof sregs);
    r.get(kTagXsave, &xsave, sizeof xsave);
    r.get(kTagXcrs, &xcrs, sizeof xcrs);
    r.get(kTagEvents, &events, sizeof events);
    std::vector<uint8_t> msrs = MsrBuffer();
    r.get(kTagMsrs, msrs.data(), msrs.size());
    // A pending I/O completion would land on the restored state: finish it first.
    if (io_pending_) CompletePendingIo();
    if (ioctl(vcpu_.get(), KVM_SET_SREGS, &sregs) != 0) throw SysError("KVM_SET_SREGS");
    if (ioctl(vcpu_.get(), KVM_SET_XCRS, &xcrs) != 0) throw SysError("KVM_SET_XCRS");
    if (ioctl(vcpu_.get(), kvm_abi::kSetXsave, &xsave) != 0) throw SysError("KVM_SET_XSAVE");
    if (!msrs_.empty() && ioctl(vcpu_.get(), kvm_abi::kSetMsrs, msrs.data()) != int(msrs_.size()))
      throw SysError("KVM_SET_MSRS");
    if (ioctl(vcpu_.get(), KVM_SET_REGS, &regs) != 0) throw SysError("KVM_SET_REGS");
    if (ioctl(vcpu_.get(), KVM_SET_VCPU_EVENTS, &events) != 0) throw SysError("KVM_SET_VCPU_EVENTS");
    // Without an in-kernel APIC every KVM_RUN first sets CR8 from kvm_run->cr8
    // (which KVM filled at the last exit): it must carry the restored TPR, or the
    // next run would put the old one back.
    run_->cr8 = sregs.cr8;
    CompletePendingIo();  // refreshes kvm_run's interrupt flags for the new state
    restored_ = true;
    exact_ = true;
  }

  void invalidate_code(uint64_t, uint64_t) override {}  // hardware re-reads guest RAM

  std::unique_ptr<DirtyTracker> make_dirty_tracker() override;

  // KVM's dirty log for slot 0 (guest writes), merged with the VMM's own writes
  // noted in GuestMemory. Logging makes every first guest write to a page after a
  // collect() fault (~27 us under PVM), so it is on only while a tracker lives.
  class DirtyLog final : public DirtyTracker {
   public:
    explicit DirtyLog(KvmBackend& kvm) : kvm_(kvm), bitmap_((kvm.memory_.size() / kPageSize + 63) / 64) {
      kvm_.SetDirtyLogging(true);
      kvm_.memory_.track_vmm_writes(true);
    }
    ~DirtyLog() override {
      kvm_.memory_.track_vmm_writes(false);
      try {
        kvm_.SetDirtyLogging(false);
      } catch (const Error& e) {
        log::warn("kvm.dirty_log_off_failed", {{"error", e.what()}});
      }
    }
    std::string_view name() const override { return "kvm-dirty-log"; }
    void collect(PageBitmap& pages) override {
      kvm_dirty_log log{};
      log.slot = 0;
      log.dirty_bitmap = bitmap_.data();
      if (ioctl(kvm_.vm_.get(), KVM_GET_DIRTY_LOG, &log) != 0) throw SysError("KVM_GET_DIRTY_LOG");
      for (size_t i = 0; i < bitmap_.size(); ++i) {
        uint64_t w = bitmap_[i];
        while (w != 0) {
          pages.set(uint64_t(i) * 64 + uint64_t(std::countr_zero(w)));
          w &= w - 1;
        }
      }
      kvm_.memory_.take_vmm_writes(pages);
    }

   private:
    KvmBackend& kvm_;
    std::vector<uint64_t> bitmap_;
  };

 private:
  RunResult Loop(ExitHandler& h) {
    bool injected = false;  // an interrupt is queued for the next entry
    while (!h.should_stop()) {
      h.boundary(exact_);
      if (std::exchange(restored_, false)) injected = false;  // the restore dropped it
      if (h.should_stop()) break;
      std::optional<uint8_t> vector = h.pending_vector();
      if (vector && !injected && run_->ready_for_interrupt_injection && run_->if_flag) {
        kvm_interrupt irq{};
        irq.irq = *vector;
        if (ioctl(vcpu_.get(), KVM_INTERRUPT, &irq) != 0)
          return {StopReason::kBackendError, "KVM_INTERRUPT failed: " + std::string(strerror(errno))};
        h.vector_injected(*vector);
        injected = true;
        // Offer the point again (delivered at the next entry; KVM takes one per
        // entry, so further vectors wait for a window).
        exact_ = true;
        continue;
      }
      // Not injectable now: have KVM exit as soon as the guest can take it. A stop
      // that is not exact keeps an earlier request: the replica, which has no such
      // stop, must see the same window exit.
      if (vector)
        run_->request_interrupt_window = 1;
      else if (exact_)
        run_->request_interrupt_window = 0;
      const bool already_kicked = __atomic_load_n(&run_->immediate_exit, __ATOMIC_ACQUIRE) != 0;
      int rc = ioctl(vcpu_.get(), KVM_RUN, 0);
      injected = false;
      io_pending_ = false;
      if (rc != 0) {
        if (errno == EINTR || errno == EAGAIN) {
          run_->immediate_exit = 0;
          // With immediate_exit already set, KVM returned without running the guest:
          // the vCPU is where it was.
          if (!already_kicked) exact_ = false;
          h.after_exit(false);
          continue;
        }
        return {StopReason::kBackendError, "KVM_RUN failed: " + std::string(strerror(errno)) +
                                               " at rip=" + Hex(guest_rip())};
      }
      switch (run_->exit_reason) {
        case KVM_EXIT_IO: {
          auto* base = reinterpret_cast<uint8_t*>(run_) + run_->io.data_offset;
          bool is_write = run_->io.direction == KVM_EXIT_IO_OUT;
          for (uint32_t i = 0; i < run_->io.count; ++i)
            h.pio(run_->io.port, is_write, base + i * run_->io.size, run_->io.size);
          exact_ = true;
          io_pending_ = true;
          h.after_exit(true);
          break;
        }
        case KVM_EXIT_MMIO:
          h.mmio(run_->mmio.phys_addr, run_->mmio.is_write != 0, run_->mmio.data, run_->mmio.len);
          exact_ = true;
          io_pending_ = true;
          h.after_exit(true);
          break;
        case KVM_EXIT_HLT:
          if (!h.halt(run_->if_flag != 0))
            return {StopReason::kGuestError,
                    "guest halted with interrupts disabled at rip=" + Hex(guest_rip())};
          exact_ = true;
          h.after_exit(true);
          break;
        case KVM_EXIT_IRQ_WINDOW_OPEN:
          exact_ = true;  // where the guest enabled interrupts: deterministic
          h.after_exit(false);
          break;
        case KVM_EXIT_INTR:
          exact_ = false;
          h.after_exit(false);
          break;
        case KVM_EXIT_SHUTDOWN:
          return {StopReason::kGuestError, "guest triple fault (KVM_EXIT_SHUTDOWN) at rip=" + Hex(guest_rip())};
        case KVM_EXIT_FAIL_ENTRY:
          return {StopReason::kBackendError,
                  "KVM entry failed, hardware reason " +
                      Hex(run_->fail_entry.hardware_entry_failure_reason) + " at rip=" + Hex(guest_rip())};
        case KVM_EXIT_INTERNAL_ERROR:
          return {StopReason::kBackendError, "KVM internal error, suberror " +
                                                 std::to_string(run_->internal.suberror) +
                                                 " at rip=" + Hex(guest_rip())};
        default:
          return {StopReason::kBackendError, "unhandled KVM exit reason " +
                                                 std::to_string(run_->exit_reason) +
                                                 " at rip=" + Hex(guest_rip())};
      }
    }
    return {StopReason::kStopped, "", exact_};
  }

  // KVM finishes an I/O exit's instruction (the read's destination register, RIP)
  // only on the next KVM_RUN; with immediate_exit set that run completes it and
  // returns without executing further (Documentation/virt/kvm/api.rst, KVM_RUN).
  // Needed before the vCPU state is read or replaced. Also refreshes kvm_run's
  // if_flag and ready_for_interrupt_injection.
  // A kick that is pending or lands meanwhile stays pending for the next KVM_RUN
  // (a forced exit the event thread asked for must not be swallowed here).
  void CompletePendingIo() {
    const uint64_t kicks = kicks_.load(std::memory_order_acquire);
    const bool kicked = __atomic_exchange_n(&run_->immediate_exit, 1, __ATOMIC_ACQ_REL) != 0;
    int rc = ioctl(vcpu_.get(), KVM_RUN, 0);
    int err = errno;
    if (!kicked) {
      __atomic_store_n(&run_->immediate_exit, 0, __ATOMIC_RELEASE);
      if (kicks_.load(std::memory_order_acquire) != kicks) __atomic_store_n(&run_->immediate_exit, 1, __ATOMIC_RELEASE);
    }
    io_pending_ = false;
    if (rc != 0 && err != EINTR && err != EAGAIN) throw SysError("KVM_RUN completing an I/O exit", err);
    // Completing the access needed another exit (an MMIO access split across
    // pages): the machine never sees it, so the guest would silently go wrong.
    if (rc == 0)
      throw Error("KVM_RUN completing an I/O exit exited again (reason " + std::to_string(run_->exit_reason) +
                  ") at rip=" + Hex(guest_rip()));
  }

  void SetDirtyLogging(bool on) {
    kvm_userspace_memory_region region{};
    region.slot = 0;
    region.flags = on ? KVM_MEM_LOG_DIRTY_PAGES : 0;
    region.guest_phys_addr = 0;
    region.memory_size = memory_.size();
    region.userspace_addr = reinterpret_cast<uint64_t>(memory_.host_base());
    if (ioctl(vm_.get(), KVM_SET_USER_MEMORY_REGION, &region) != 0)
      throw SysError(std::string("KVM_SET_USER_MEMORY_REGION ") + (on ? "enabling" : "disabling") + " dirty logging");
  }

  // The MSRs a guest-kit kernel (or a small OS) may program, minus those KVM here
  // cannot read back. TSC is left out on purpose: its value is host time.
  void ProbeMsrs() {
    static constexpr uint32_t kCandidates[] = {
        0x174, 0x175, 0x176,              // SYSENTER_CS/ESP/EIP
        0x277,                            // PAT
        0xc0000081, 0xc0000082, 0xc0000083, 0xc0000084,  // STAR, LSTAR, CSTAR, SFMASK
        0xc0000102,                       // KERNEL_GS_BASE
    };
    for (uint32_t index : kCandidates) {
      struct {
        kvm_abi::ArrayHeader header;
        kvm_msr_entry entry;
      } one{};
      one.header.nent = 1;
      one.entry.index = index;
      if (ioctl(vcpu_.get(), kvm_abi::kGetMsrs, &one) == 1) msrs_.push_back(index);
    }
  }

  std::vector<uint8_t> MsrBuffer() const {
    std::vector<uint8_t> buf(sizeof(kvm_abi::ArrayHeader) + msrs_.size() * sizeof(kvm_msr_entry));
    auto* header = reinterpret_cast<kvm_abi::ArrayHeader*>(buf.data());
    header->nent = uint32_t(msrs_.size());
    auto* entries = reinterpret_cast<kvm_msr_entry*>(buf.data() + sizeof(kvm_abi::ArrayHeader));
    for (size_t i = 0; i < msrs_.size(); ++i) entries[i].index = msrs_[i];
    return buf;
  }

  static constexpr uint32_t kTagRegs = 1, kTagSregs = 2, kTagXsave = 3, kTagXcrs = 4, kTagEvents = 5, kTagMsrs = 6;
  static constexpr char kStateMagic[8] = {'F', 'T', 'V', 'M', 'K', 'V', 'M', '1'};

  class StateWriter {
   public:
    StateWriter() { out_.assign(kStateMagic, kStateMagic + 8); }
    void add(uint32_t tag, const void* data, size_t len) {
      uint8_t head[8];
      std::memcpy(head, &tag, 4);
      uint32_t n = uint32_t(len);
      std::memcpy(head + 4, &n, 4);
      out_.insert(out_.end(), head, head + 8);
      const auto* p = static_cast<const uint8_t*>(data);
      out_.insert(out_.end(), p, p + len);
    }
    std::vector<uint8_t> take() { return std::move(out_); }

   private:
    std::vector<uint8_t> out_;
  };

  class StateReader {
   public:
    explicit StateReader(std::span<const uint8_t> in) : in_(in) {
      if (in.size() < 8 || std::memcmp(in.data(), kStateMagic, 8) != 0)
        throw Error("KVM vCPU state: not a state saved by this ftvm's KVM backend");
    }
    // The next section must be `tag` of exactly `len` bytes (sections come in the
    // order save_state writes them).
    void get(uint32_t tag, void* out, size_t len) {
      if (in_.size() - at_ < 8) throw Error("KVM vCPU state: truncated before section " + std::to_string(tag));
      uint32_t t, n;
      std::memcpy(&t, in_.data() + at_, 4);
      std::memcpy(&n, in_.data() + at_ + 4, 4);
      if (t != tag || n != len || in_.size() - at_ - 8 < n)
        throw Error("KVM vCPU state: section " + std::to_string(t) + " of " + std::to_string(n) +
                    " bytes where section " + std::to_string(tag) + " of " + std::to_string(len) +
                    " was expected (saved on another host or build?)");
      std::memcpy(out, in_.data() + at_ + 8, n);
      at_ += 8 + n;
    }

   private:
    std::span<const uint8_t> in_;
    size_t at_ = 8;
  };

  void SetCpuid() {
    constexpr uint32_t kMaxEntries = 256;
    std::vector<uint8_t> buf(sizeof(kvm_abi::ArrayHeader) + kMaxEntries * sizeof(kvm_cpuid_entry2));
    auto* header = reinterpret_cast<kvm_abi::ArrayHeader*>(buf.data());
    auto* entries = reinterpret_cast<kvm_cpuid_entry2*>(buf.data() + sizeof(kvm_abi::ArrayHeader));
    header->nent = kMaxEntries;
    if (ioctl(kvm_.get(), kvm_abi::kGetSupportedCpuid, buf.data()) != 0) throw SysError("KVM_GET_SUPPORTED_CPUID");
    for (uint32_t i = 0; i < header->nent; ++i) {
      kvm_cpuid_entry2& e = entries[i];
      // Hide the instructions that return host values the VMM cannot intercept:
      // they would make the guest nondeterministic. (PVM ignores CPUID settings;
      // hardware KVM honours them.)
      if (e.function == 1) e.ecx &= ~(1u << 30);                   // RDRAND
      if (e.function == 7 && e.index == 0) e.ebx &= ~(1u << 18);   // RDSEED
    }
    if (ioctl(vcpu_.get(), kvm_abi::kSetCpuid2, buf.data()) != 0) throw SysError("KVM_SET_CPUID2");
  }


  static void InstallKickHandler() {
    struct sigaction sa {};
    sa.sa_handler = OnKickSignal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
    sigaction(kKickSignal, &sa, nullptr);
  }

  struct RunUnmapper {
    size_t size;
    void operator()(kvm_run* p) const { munmap(p, size); }
  };
  using RunMapping = std::unique_ptr<kvm_run, RunUnmapper>;

  UniqueFd kvm_;
  UniqueFd vm_;
  UniqueFd vcpu_;
  RunMapping run_mapping_{nullptr, RunUnmapper{0}};
  kvm_run* run_ = nullptr;  // run_mapping_.get(), read on every exit
  size_t run_size_ = 0;
  pthread_t vcpu_thread_{};
  std::atomic<bool> running_{false};
  std::atomic<uint64_t> kicks_{0};  // kick() calls so far
  GuestMemory& memory_;
  std::vector<uint32_t> msrs_;  // the MSRs this host's KVM can save and restore
  bool exact_ = true;       // the current stop is exact (see ExitHandler)
  bool io_pending_ = false; // the last exit's instruction awaits completion
  bool restored_ = false;   // restore_state() ran during the current boundary
};

std::unique_ptr<DirtyTracker> KvmBackend::make_dirty_tracker() { return std::make_unique<DirtyLog>(*this); }

}  // namespace

std::unique_ptr<CpuBackend> MakeKvmBackend(GuestMemory& memory) {
  return std::make_unique<KvmBackend>(memory);
}

}  // namespace ftvm::vmm
