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

#include <atomic>
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
  explicit KvmBackend(GuestMemory& memory) : kvm_(OpenKvm()) {
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
    // run() started); the signal interrupts a KVM_RUN in progress.
    __atomic_store_n(&run_->immediate_exit, 1, __ATOMIC_RELEASE);
    if (running_.load(std::memory_order_acquire)) pthread_kill(vcpu_thread_, kKickSignal);
  }

  uint64_t guest_rip() override {
    kvm_regs regs{};
    if (ioctl(vcpu_.get(), KVM_GET_REGS, &regs) != 0) return ~0ull;  // shows as 0xffff... in messages
    return regs.rip;
  }

 private:
  RunResult Loop(ExitHandler& h) {
    while (!h.should_stop()) {
      InjectIfPossible(h);
      int rc = ioctl(vcpu_.get(), KVM_RUN, 0);
      if (rc != 0) {
        if (errno == EINTR || errno == EAGAIN) {
          run_->immediate_exit = 0;
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
          h.after_exit(true);
          break;
        }
        case KVM_EXIT_MMIO:
          h.mmio(run_->mmio.phys_addr, run_->mmio.is_write != 0, run_->mmio.data, run_->mmio.len);
          h.after_exit(true);
          break;
        case KVM_EXIT_HLT:
          if (!h.halt(run_->if_flag != 0))
            return {StopReason::kGuestError,
                    "guest halted with interrupts disabled at rip=" + Hex(guest_rip())};
          h.after_exit(true);
          break;
        case KVM_EXIT_IRQ_WINDOW_OPEN:
        case KVM_EXIT_INTR:
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
    return {StopReason::kStopped, ""};
  }

  void InjectIfPossible(ExitHandler& h) {
    std::optional<uint8_t> vector = h.pending_vector();
    if (!vector) {
      run_->request_interrupt_window = 0;
      return;
    }
    if (run_->ready_for_interrupt_injection && run_->if_flag) {
      kvm_interrupt irq{};
      irq.irq = *vector;
      if (ioctl(vcpu_.get(), KVM_INTERRUPT, &irq) == 0) {
        h.vector_injected(*vector);
        run_->request_interrupt_window = h.pending_vector().has_value() ? 1 : 0;
        return;
      }
      log::warn("kvm.interrupt_failed", {{"vector", int(*vector)}, {"error", strerror(errno)}});
    }
    // Not injectable now: have KVM exit as soon as the guest can take it.
    run_->request_interrupt_window = 1;
  }

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
};

}  // namespace

std::unique_ptr<CpuBackend> MakeKvmBackend(GuestMemory& memory) {
  return std::make_unique<KvmBackend>(memory);
}

}  // namespace ftvm::vmm
