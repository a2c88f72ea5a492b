#include "vmm/machine.h"

#include <arpa/inet.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <ctime>

#include "common/error.h"
#include "common/hex.h"
#include "common/log.h"
#include "vmm/abi/ftvm_abi.h"
#include "vmm/devices/clock_device.h"
#include "vmm/devices/console.h"
#include "vmm/devices/health.h"
#include "vmm/devices/irq_controller.h"
#include "vmm/devices/power.h"
#include "vmm/devices/rng.h"
#include "vmm/devices/timer.h"
#include "vmm/devices/virtio_blk.h"
#include "vmm/devices/virtio_mmio.h"
#include "vmm/devices/virtio_net.h"
#include "vmm/loader.h"
#include "vmm/snapshot.pb.h"
#include "vmm/virtio_devices.h"

namespace ftvm::vmm {
namespace {

bool ValidWord(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s)
    if (c <= ' ' || c > '~') return false;
  return true;
}

bool ParseIpv4Cidr(const std::string& text, bool need_prefix) {
  std::string addr = text;
  auto slash = text.find('/');
  if (slash != std::string::npos) {
    addr = text.substr(0, slash);
    std::string prefix = text.substr(slash + 1);
    if (prefix.empty() || prefix.size() > 2 || prefix.find_first_not_of("0123456789") != std::string::npos ||
        std::stoi(prefix) > 32)
      return false;
  } else if (need_prefix) {
    return false;
  }
  in_addr a{};
  return inet_pton(AF_INET, addr.c_str(), &a) == 1;
}

}  // namespace

void ValidateConfig(const VmConfig& c) {
  if (c.guest_image.empty()) throw Error("no guest image given (--guest IMAGE)");
  if (!ValidWord(c.app)) throw Error("no guest app given (--app NAME)");
  if (c.mem_mib < FTVM_MIN_RAM_MIB)
    throw Error("--mem " + std::to_string(c.mem_mib) + " MiB is too little: the guest needs at least " +
                std::to_string(FTVM_MIN_RAM_MIB) + " MiB");
  if (c.mem_mib > FTVM_MAX_RAM_MIB)
    throw Error("--mem " + std::to_string(c.mem_mib) + " MiB is too much: at most " +
                std::to_string(FTVM_MAX_RAM_MIB) + " MiB fit below the MMIO window");
  for (const std::string& a : c.app_args)
    if (!ValidWord(a) || a.find('=') == std::string::npos || a.front() == '=')
      throw Error("guest argument '" + a + "' is not of the form key=value");
  if (c.nic_without_tap && c.mode != ExecutionMode::kReplay)
    throw Error("a NIC without a tap exists only when replaying");
  if (c.mode == ExecutionMode::kReplay && !c.tap.empty())
    throw Error("a replaying VM takes its frames from the log: it has no tap");
  if (c.has_nic()) {
    if (c.tap.size() >= 16) throw Error("tap interface name '" + c.tap + "' is longer than 15 characters");
    if (!ParseIpv4Cidr(c.ip, true)) throw Error("--ip '" + c.ip + "' is not an IPv4 address with a prefix (a.b.c.d/n)");
    if (!c.gateway.empty() && !ParseIpv4Cidr(c.gateway, false))
      throw Error("--gateway '" + c.gateway + "' is not an IPv4 address");
    ParseMac(c.mac);  // throws with the reason
  }
}

std::string GuestCommandLine(const VmConfig& c) {
  std::string line = "app=" + c.app;
  if (c.has_nic()) {
    line += " ip=" + c.ip;
    if (!c.gateway.empty()) line += " gw=" + c.gateway;
  }
  for (const std::string& a : c.app_args) line += " " + a;
  return line;
}

namespace {
// Validation must come before the RAM allocation it guards (a huge --mem would
// otherwise fail as an mmap error instead of naming the flag).
uint64_t ValidatedRamBytes(const VmConfig& config) {
  ValidateConfig(config);
  return config.mem_mib << 20;
}
}  // namespace

Machine::Machine(const VmConfig& config, Clock& clock, RandomSource& random)
    : config_(config), clock_(clock), memory_(GuestMemory::Create(ValidatedRamBytes(config))) {
  // Load the image first: a bad image is the most likely mistake and needs no KVM.
  image_ = ReadImageFile(config_.guest_image);
  LoadedImage loaded = LoadElf(image_, config_.guest_image, memory_);

  // The event thread reads watches_ while the vCPU thread may add one (a replica
  // going live attaches its tap): never reallocate.
  watches_.reserve(64);
  epoll_.reset(epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_) throw SysError("epoll_create1");
  wake_fd_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_fd_) throw SysError("eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = UINT64_MAX;
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_fd_.get(), &ev) != 0) throw SysError("epoll_ctl");

  UniqueFd console_file;
  if (!config_.console_path.empty()) console_file = Console::OpenOutput(config_.console_path);
  auto console = std::make_unique<Console>(memory_, STDOUT_FILENO, std::move(console_file));
  console_ = console.get();
  DeviceIo& io = *this;
  auto irq = std::make_unique<InterruptController>([this] { return WaitForHostEvent(); }, io);
  irq_ = irq.get();
  auto power = std::make_unique<Power>();
  power_ = power.get();
  auto timer = std::make_unique<Timer>(*irq_, io);
  timer_ = timer.get();
  AddDevice(FTVM_SLOT_CONSOLE, std::move(console));
  auto clock_dev = std::make_unique<ClockDevice>(clock_, io);
  clock_dev_ = clock_dev.get();
  AddDevice(FTVM_SLOT_CLOCK, std::move(clock_dev));
  AddDevice(FTVM_SLOT_TIMER, std::move(timer));
  AddDevice(FTVM_SLOT_RNG, std::make_unique<Rng>(memory_, random, io));
  AddDevice(FTVM_SLOT_IRQ, std::move(irq));
  AddDevice(FTVM_SLOT_POWER, std::move(power));
  auto health = std::make_unique<HealthDevice>(clock_);
  health_ = health.get();
  AddDevice(FTVM_SLOT_HEALTH, std::move(health));
  if (!config_.disk.empty()) {
    auto blk = MakeVirtioBlkDevice(memory_, *irq_, config_.disk, config_.disk_serial, io);
    blk_ = static_cast<VirtioMmioDevice*>(blk.get());
    AddDevice(FTVM_SLOT_VIRTIO_BLK, std::move(blk));
  }
  if (config_.has_nic()) {
    std::optional<std::string> tap;
    if (!config_.tap.empty()) tap = config_.tap;
    auto net = MakeVirtioNetDevice(memory_, *irq_, tap, ParseMac(config_.mac), io);
    net_ = static_cast<VirtioMmioDevice*>(net.get());
    AddDevice(FTVM_SLOT_VIRTIO_NET, std::move(net));
  }

  uint32_t present = 0;
  for (unsigned s = 0; s < FTVM_MMIO_SLOTS; ++s)
    if (slots_[s] != nullptr) present |= 1u << s;
  PrepareBoot(loaded, memory_, GuestCommandLine(config_), present);
  boot_ = loaded.boot;

  backend_ = MakeBackend(config_.backend, memory_);
  backend_->set_boot_state(boot_);
  boot_cpu_state_ = backend_->save_state();
  log::info("vm.created", {{"backend", backend_->name()},
                           {"mem_mib", config_.mem_mib},
                           {"image", config_.guest_image},
                           {"entry", Hex(boot_.rip)},
                           {"cmdline", GuestCommandLine(config_)}});
}

Machine::~Machine() {
  stop();
  if (event_thread_.joinable()) event_thread_.join();
}

void Machine::AddDevice(unsigned slot, std::unique_ptr<Device> device) {
  slots_[slot] = device.get();
  for (uint16_t port : device->ports()) ports_.emplace_back(port, device.get());
  for (int fd : device->host_fds()) Watch(device.get(), fd);
  devices_.push_back(std::move(device));
}

void Machine::Watch(Device* device, int fd) {
  if (watches_.size() >= 63) throw Error("too many host event sources");
  epoll_event ev{};
  ev.events = 0;  // armed later, when the device wants events
  ev.data.u64 = watches_.size();
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0)
    throw SysError("watching " + std::string(device->name()) + " host fd");
  watches_.push_back({device, fd, false});
}

void Machine::Arm(FdWatch& w) {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLONESHOT;
  ev.data.u64 = uint64_t(&w - watches_.data());
  // Marked armed even on failure: retrying on every exit would only flood the log.
  w.armed = true;
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, w.fd, &ev) != 0 && errno != ENOENT)
    Fail("watching " + std::string(w.device->name()) + ": epoll_ctl: " + strerror(errno));
}

int Machine::run() {
  if ((config_.mode == ExecutionMode::kLive) != (hooks_ == nullptr))
    throw Error("internal: a machine recording or replaying needs its hooks, a live one none");
  start_ns_ = clock_.monotonic_ns();
  // However run() ends, nobody waits for a boundary any more.
  struct Finished {
    Machine& m;
    ~Finished() {
      std::lock_guard<std::mutex> lock(m.task_mu_);
      m.finished_ = true;
      m.task_cv_.notify_all();
    }
  } finished{*this};
  if (hooks_ != nullptr) hooks_->started(*this);
  ServiceDevices();
  event_thread_ = std::thread([this] { EventThread(); });
  RunResult result = backend_->run(*this);
  stats_.run_ns = clock_.monotonic_ns() - start_ns_;
  {
    std::lock_guard<std::mutex> lock(task_mu_);
    finished_ = true;
    task_cv_.notify_all();
  }
  stop();
  event_thread_.join();
  if (hooks_ != nullptr) {
    bool fatal_host_error;
    {
      std::lock_guard<std::mutex> lock(wait_mu_);
      fatal_host_error = !fatal_.empty();
    }
    hooks_->finished(*this, result.exact, result.reason != StopReason::kBackendError && !fatal_host_error);
  }
  MachineStats s = stats();
  log::info("vm.stopped", {{"exit_code", power_->exit_code().value_or(-1)},
                           {"guest_exits", s.guest_exits()},
                           {"mmio_exits", s.mmio_exits},
                           {"pio_exits", s.pio_exits},
                           {"async_exits", s.async_exits},
                           {"interrupts", s.interrupts},
                           {"first_output_us", s.boot_to_first_output_ns / 1000},
                           {"run_ms", s.run_ns / 1000000}});
  {
    std::lock_guard<std::mutex> lock(wait_mu_);
    if (!fatal_.empty()) throw Error(fatal_);
  }
  if (result.reason != StopReason::kStopped) {
    throw Error(std::string(result.reason == StopReason::kGuestError ? "guest crashed: " : "vCPU failed: ") +
                result.detail);
  }
  return power_->exit_code().value_or(-1);
}

void Machine::abort(const std::string& reason) {
  aborted_.store(true, std::memory_order_release);
  Fail(reason);
}

bool Machine::Aborted(bool is_write, uint8_t* data, unsigned len) {
  if (!aborted_.load(std::memory_order_acquire)) return false;
  // Whatever the guest does after an abort is not the VM's: no device sees it.
  if (!is_write) std::memset(data, 0xff, len);
  return true;
}

void Machine::Fail(const std::string& reason) {
  {
    std::lock_guard<std::mutex> lock(wait_mu_);
    if (fatal_.empty()) fatal_ = reason;
  }
  stop();
}

void Machine::stop() {
  stop_requested_.store(true, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lock(wait_mu_);
  }
  wait_cv_.notify_all();
  uint64_t one = 1;
  if (wake_fd_) [[maybe_unused]] auto n = write(wake_fd_.get(), &one, sizeof one);
  if (backend_) backend_->kick();
}

MachineStats Machine::stats() const {
  MachineStats s = stats_;
  s.console_bytes = console_->bytes_written();
  s.interrupts = irq_->delivered_count();
  return s;
}

void Machine::Announce() {
  // At 0, 20, 100, 300 ms and 1 s after going live (QEMU announces a migrated guest
  // similarly): cheap, and the switches of every topology hear one.
  static constexpr uint64_t kAfterNs[] = {20'000'000, 100'000'000, 300'000'000, 1'000'000'000};
  auto& net = static_cast<VirtioNet&>(net_->backend());
  if (!net.announce(announce_ip_)) log::warn("vm.announce_failed", {{"tap", config_.tap}});
  const unsigned n = announcements_.fetch_add(1);
  next_announce_ns_.store(n < std::size(kAfterNs) ? clock_.monotonic_ns() + kAfterNs[n] - (n > 0 ? kAfterNs[n - 1] : 0)
                                                   : 0,
                          std::memory_order_release);
}

bool Machine::send_frame(std::span<const uint8_t> frame) {
  if (net_ == nullptr) return false;
  auto& net = static_cast<VirtioNet&>(net_->backend());
  if (!net.has_tap()) return false;
  iovec v{const_cast<uint8_t*>(frame.data()), frame.size()};
  return net.tap().write({&v, 1}).status == Tap::Status::kOk;
}

void Machine::notify_host_event() { PostHostEvents(kExternalEventBit); }

void Machine::PostHostEvents(uint64_t bits) {
  uint64_t none = 0;
  host_events_since_ns_.compare_exchange_strong(none, clock_.monotonic_ns(), std::memory_order_acq_rel);
  host_events_.fetch_or(bits, std::memory_order_acq_rel);
  WakeVcpu();
}

void Machine::WakeVcpu() {
  {
    std::lock_guard<std::mutex> lock(wait_mu_);
  }
  wait_cv_.notify_one();
  if (!in_wait_.load(std::memory_order_acquire)) backend_->kick();
}

uint64_t Machine::host_events_waiting_since_ns() const {
  if (host_events_.load(std::memory_order_acquire) == 0) return 0;
  return host_events_since_ns_.load(std::memory_order_acquire);
}

void Machine::EventThread() {
  epoll_event events[16];
  while (!stop_requested_.load(std::memory_order_acquire)) {
    // Recording: host events wait for the guest's next exit; if it makes none for
    // the forced-exit bound, kick it so the recorder can take an epoch checkpoint.
    timespec timeout{};
    timespec* wait_for = nullptr;
    const uint64_t bound = forced_exit_ns_.load(std::memory_order_acquire);
    const uint64_t since = host_events_waiting_since_ns();
    if (bound != 0 && since != 0) {
      const uint64_t now = clock_.monotonic_ns();
      const uint64_t due = since + bound;
      if (now >= due) {
        if (!in_wait_.load(std::memory_order_acquire)) backend_->kick();
        // Kicked: look again one bound later (the vCPU services or checkpoints).
        timeout.tv_nsec = long(std::min<uint64_t>(bound, 999999999));
      } else {
        timeout.tv_nsec = long(std::min<uint64_t>(due - now, 999999999));
      }
      wait_for = &timeout;
    }
    // A replica that went live repeats its ARP announcement a few times: the first
    // may go out before the bridge forwards on the freshly opened tap.
    if (const uint64_t due = next_announce_ns_.load(std::memory_order_acquire); due != 0) {
      const uint64_t now = clock_.monotonic_ns();
      if (now >= due) {
        Announce();
        continue;
      }
      const uint64_t wait = std::min<uint64_t>(due - now, 999999999);
      if (wait_for == nullptr || uint64_t(timeout.tv_nsec) > wait) timeout.tv_nsec = long(wait);
      wait_for = &timeout;
    }
    int n = epoll_pwait2(epoll_.get(), events, 16, wait_for, nullptr);
    if (n < 0) {
      if (errno == EINTR) continue;
      Fail("event thread: epoll_wait: " + std::string(strerror(errno)));
      return;
    }
    uint64_t bits = 0;
    for (int i = 0; i < n; ++i) {
      uint64_t index = events[i].data.u64;
      if (index == UINT64_MAX) continue;
      if (events[i].events & (EPOLLERR | EPOLLHUP)) {
        // A host fd that failed (a tap whose interface vanished) reports ERR/HUP even
        // while disarmed: stop watching it, or this loop would spin.
        FdWatch& w = watches_[index];
        epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, w.fd, nullptr);
        log::error("vm.host_fd_failed", {{"device", w.device->name()}, {"events", Hex(events[i].events)}});
        continue;
      }
      bits |= 1ull << index;
    }
    if (bits == 0) continue;
    log::debug("vm.host_event", {{"watches", Hex(bits)}, {"in_wait", in_wait_.load()}});
    PostHostEvents(bits);
  }
}

void Machine::ServiceDevices() {
  // Cleared before the bits are taken: an event landing in between sets it again.
  host_events_since_ns_.store(0, std::memory_order_release);
  uint64_t fired = host_events_.exchange(0, std::memory_order_acq_rel);
  for (size_t i = 0; i < watches_.size(); ++i) {
    if (fired & (1ull << i)) {
      watches_[i].armed = false;  // one-shot: disarmed by delivery
      watches_[i].device->host_ready();
    }
  }
  for (auto& d : devices_) d->poll();
  if (config_.mode == ExecutionMode::kReplay) {
    hooks_->apply_device_events(*this, false);
    return;
  }
  for (FdWatch& w : watches_) {
    if (!w.armed && w.device->wants_host_events()) {
      Arm(w);
      log::debug("vm.arm", {{"device", w.device->name()}});
    }
  }
}

bool Machine::WaitForHostEvent() {
  if (config_.mode == ExecutionMode::kReplay) {
    // The log says what woke the primary; nothing more can come when it says
    // nothing (the hooks then stop the machine: the log ended, or diverged).
    for (auto& d : devices_) d->poll();
    return hooks_->apply_device_events(*this, true) && !stop_requested_.load(std::memory_order_acquire);
  }
  ServiceDevices();
  if (irq_->has_deliverable()) return true;
  in_wait_.store(true, std::memory_order_release);
  {
    std::unique_lock<std::mutex> lock(wait_mu_);
    wait_cv_.wait(lock, [this] {
      return host_events_.load(std::memory_order_acquire) != 0 || stop_requested_.load(std::memory_order_acquire) ||
             task_pending_.load(std::memory_order_acquire);
    });
  }
  in_wait_.store(false, std::memory_order_release);
  if (stop_requested_.load(std::memory_order_acquire)) return false;
  ServiceDevices();
  // A task waits for a boundary: the wait ends here, and the guest (whose idle wait
  // may return spuriously, guest/lib/dev.h) looks for work and waits again after it.
  if (!irq_->has_deliverable() && task_pending_.load(std::memory_order_acquire)) {
    if (config_.mode == ExecutionMode::kRecord) hooks_->wait_cut(*this);
    ++stats_.wait_cuts;
    return false;
  }
  return true;
}

void Machine::mmio(uint64_t gpa, bool is_write, uint8_t* data, unsigned len) {
  if (Aborted(is_write, data, len)) return;
  ++position_;
  ++stats_.mmio_exits;
  uint64_t slot = (gpa - FTVM_MMIO_BASE) / FTVM_MMIO_SLOT_SIZE;
  Device* dev = (gpa >= FTVM_MMIO_BASE && slot < FTVM_MMIO_SLOTS) ? slots_[slot] : nullptr;
  if (dev == nullptr) {
    // Like an empty bus: reads float high, writes vanish.
    if (!is_write) std::memset(data, 0xff, len);
    log::debug("vm.mmio_unassigned", {{"gpa", Hex(gpa)}, {"write", is_write}});
    return;
  }
  uint64_t offset = gpa % FTVM_MMIO_SLOT_SIZE;
  if (log::threshold() <= log::Level::kDebug) {
    uint64_t value = 0;
    std::memcpy(&value, data, std::min<unsigned>(len, 8));
    log::debug("vm.mmio", {{"device", dev->name()}, {"offset", Hex(offset)}, {"len", len},
                           {"write", is_write}, {"value", is_write ? Hex(value) : "-"}});
  }
  if (is_write) {
    uint64_t value = 0;
    std::memcpy(&value, data, std::min<unsigned>(len, 8));
    dev->mmio_write(offset, len, value);
    if (dev == console_ && stats_.boot_to_first_output_ns == 0 && console_->bytes_written() > 0)
      stats_.boot_to_first_output_ns = clock_.monotonic_ns() - start_ns_;
  } else {
    uint64_t value = dev->mmio_read(offset, len);
    std::memcpy(data, &value, std::min<unsigned>(len, 8));
  }
}

void Machine::pio(uint16_t port, bool is_write, uint8_t* data, unsigned len) {
  if (Aborted(is_write, data, len)) return;
  ++position_;
  ++stats_.pio_exits;
  for (auto& [p, dev] : ports_) {
    if (p != port) continue;
    if (is_write) {
      uint32_t value = 0;
      std::memcpy(&value, data, std::min<unsigned>(len, 4));
      dev->port_write(port, len, value);
      if (dev == console_ && stats_.boot_to_first_output_ns == 0)
        stats_.boot_to_first_output_ns = clock_.monotonic_ns() - start_ns_;
    } else {
      uint32_t value = dev->port_read(port, len);
      std::memcpy(data, &value, std::min<unsigned>(len, 4));
    }
    return;
  }
  if (!is_write) std::memset(data, 0xff, len);
  log::debug("vm.pio_unassigned", {{"port", Hex(port)}, {"write", is_write}});
}

bool Machine::halt(bool interrupts_enabled) {
  ++position_;
  ++stats_.halt_exits;
  if (!interrupts_enabled) return false;
  irq_->wait_until_deliverable();
  return true;
}

void Machine::after_exit(bool guest_caused) {
  if (!guest_caused) ++stats_.async_exits;
  // Recording and replaying, devices change guest-visible state only at guest
  // exits (and epoch checkpoints): a kick lands at a point the replica cannot find.
  if (guest_caused || config_.mode == ExecutionMode::kLive) ServiceDevices();
  if (hooks_ != nullptr) hooks_->after_exit(*this, guest_caused);
}

bool Machine::run_at_boundary(const std::function<void()>& task) {
  std::unique_lock<std::mutex> lock(task_mu_);
  task_cv_.wait(lock, [&] { return task_ == nullptr || finished_; });  // one task at a time
  if (finished_) return false;
  task_ = &task;
  task_done_ = false;
  task_pending_.store(true, std::memory_order_release);
  lock.unlock();
  // A guest computing stops at its next block (the kick), and one idling ends its
  // wait (WaitForHostEvent). Not a host event: that would stay pending after the
  // task, and a recorder would force an epoch checkpoint for it (one holding every
  // page written since the last, 100 MiB and 70 ms for a VM writing 64 MiB/s).
  WakeVcpu();
  lock.lock();
  task_cv_.wait(lock, [&] { return task_done_ || finished_; });
  const bool ran = task_done_;
  task_ = nullptr;
  task_pending_.store(false, std::memory_order_release);
  task_cv_.notify_all();
  if (std::exception_ptr e = std::exchange(task_error_, nullptr)) std::rethrow_exception(e);
  return ran;
}

void Machine::RunBoundaryTask() {
  std::lock_guard<std::mutex> lock(task_mu_);
  if (task_ == nullptr || task_done_) return;
  // The task's failure is its caller's to handle, not the VM's.
  try {
    (*task_)();
  } catch (...) {
    task_error_ = std::current_exception();
  }
  task_done_ = true;
  // Done: an idle wait need not end for it any more (its caller clears it too, once
  // it wakes).
  task_pending_.store(false, std::memory_order_release);
  task_cv_.notify_all();
}

void Machine::reset_guest(const std::string& reason) {
  const uint64_t t0 = clock_.monotonic_ns();
  // The hooks first: a recorder logs the reset at this position, before anything
  // the rebooted guest does.
  if (hooks_ != nullptr) hooks_->guest_reset(*this);
  // RAM as at power-on: zeros, and the image, boot GDT, page tables and boot info
  // exactly as the constructor wrote them. Built aside first (only the pages the
  // loader writes hold anything there), then only the pages that differ are
  // rewritten: those are noted as written (the VMM's own writes, which no vCPU
  // dirty log sees: the next checkpoint and digest cover them), and only their
  // translated code is dropped (flushing the software CPU's whole cache costs
  // seconds the first time). RAM holes are zeros already and stay holes.
  GuestMemory fresh = GuestMemory::Create(memory_.size());
  fresh.track_vmm_writes(true);
  LoadedImage loaded = LoadElf(image_, config_.guest_image, fresh);
  uint32_t present = 0;
  for (unsigned s = 0; s < FTVM_MMIO_SLOTS; ++s)
    if (slots_[s] != nullptr) present |= 1u << s;
  PrepareBoot(loaded, fresh, GuestCommandLine(config_), present);
  PageBitmap loaded_pages(memory_.size() / kPageSize);
  fresh.take_vmm_writes(loaded_pages);
  const PageBitmap data = FileDataPages(memory_.fd(), memory_.size());
  static constexpr uint8_t kZeros[kPageSize] = {};
  uint64_t rewritten = 0;
  for (uint64_t p = 0; p < loaded_pages.pages(); ++p) {
    const bool has_content = loaded_pages.test(p);
    if (!has_content && !data.test(p)) continue;  // a hole, and zeros it must be
    const uint64_t gpa = p * kPageSize;
    uint8_t* now = memory_.host_base() + gpa;
    const uint8_t* want = has_content ? fresh.host_base() + gpa : kZeros;
    if (std::memcmp(now, want, kPageSize) == 0) continue;
    std::memcpy(now, want, kPageSize);
    memory_.note_write(gpa, kPageSize);
    backend_->invalidate_code(gpa, kPageSize);
    ++rewritten;
  }
  backend_->restore_state(boot_cpu_state_);
  for (auto& d : devices_) d->reset();
  // The boot state is a deterministic point whatever the guest was doing.
  exact_now_ = true;
  const uint64_t resets = guest_resets_.fetch_add(1, std::memory_order_acq_rel) + 1;
  log::event(log::Level::kWarn, "vm.guest-reset",
             {{"position", position_},
              {"resets", resets},
              {"reason", reason},
              {"pages_rewritten", rewritten},
              {"reset_ms", double(clock_.monotonic_ns() - t0) / 1e6}});
}

void Machine::record_from_here(ExecutionHooks* hooks) {
  if (config_.mode != ExecutionMode::kLive || hooks == nullptr)
    throw Error("internal: only a live VM starts recording, and it needs its recorder");
  config_.mode = ExecutionMode::kRecord;
  hooks_ = hooks;
  log::info("vm.recording", {{"position", position_}});
}

void Machine::boundary(bool exact) {
  exact_now_ = exact;
  if (task_pending_.load(std::memory_order_acquire)) {
    RunBoundaryTask();
    // A task that stopped the VM (a handover) leaves it exactly as it was: its
    // memory may still be read as the VM's (post-copy), so no device may run again.
    if (stop_requested_.load(std::memory_order_acquire)) return;
  }
  // A checkpoint taken or applied makes this point exact; after the devices are
  // serviced, offer it again: a replica may have the next checkpoint to apply
  // before the guest runs on (the primary took two with no exit between).
  while (hooks_ != nullptr && hooks_->boundary(*this, exact_now_)) {
    exact_now_ = true;
    ServiceDevices();
  }
}

std::optional<uint8_t> Machine::pending_vector() {
  if (config_.mode != ExecutionMode::kLive && !exact_now_) return std::nullopt;
  return irq_->next_vector();
}

void Machine::vector_injected(uint8_t vector) {
  irq_->delivered(vector);
  if (hooks_ != nullptr) hooks_->vector_injected(*this, vector);
}

void Machine::save_devices(snapshot::Devices& out) const {
  for (const auto& d : devices_) {
    snapshot::Device s;
    if (!d->save(s)) continue;
    s.set_name(std::string(d->name()));
    *out.add_devices() = std::move(s);
  }
}

void Machine::restore_devices(const snapshot::Devices& in) {
  int used = 0;
  for (const auto& d : devices_) {
    snapshot::Device probe;
    if (!d->save(probe)) continue;
    const snapshot::Device* match = nullptr;
    for (const snapshot::Device& s : in.devices())
      if (s.name() == d->name()) match = &s;
    if (match == nullptr) throw Error("snapshot has no state for device '" + std::string(d->name()) + "'");
    d->restore(*match);
    ++used;
  }
  if (used != in.devices_size())
    throw Error("snapshot describes " + std::to_string(in.devices_size()) + " devices, this VM has " +
                std::to_string(used));
}

bool Machine::replay_timer_expiry(std::string& why) {
  if (timer_->expire()) return true;
  why = "the log has a timer expiry, but the replica's timer is not armed";
  return false;
}

void Machine::go_live(ExecutionMode mode, ExecutionHooks* hooks, uint64_t last_monotonic_ns, const std::string& tap) {
  if (config_.mode != ExecutionMode::kReplay) throw Error("internal: only a replica goes live");
  if ((mode == ExecutionMode::kLive) != (hooks == nullptr) || mode == ExecutionMode::kReplay)
    throw Error("internal: go_live needs kLive without hooks or kRecord with them");
  config_.mode = mode;
  hooks_ = hooks;
  clock_dev_->continue_from(last_monotonic_ns);
  timer_->go_live();
  if (net_ != nullptr && !tap.empty()) {
    auto& net = static_cast<VirtioNet&>(net_->backend());
    net.attach_tap(Tap(tap));
    config_.tap = tap;
    config_.nic_without_tap = false;
    for (int fd : net.host_fds()) Watch(net_, fd);
    const std::string ip = config_.ip.substr(0, config_.ip.find('/'));
    in_addr a{};
    if (inet_pton(AF_INET, ip.c_str(), &a) == 1) {
      announce_ip_ = ntohl(a.s_addr);
      announcements_ = 0;
      Announce();  // now, then a few more times from the event thread
    }
  }
  // Disk reports held for the log are released by the next poll; watches arm there.
  ServiceDevices();
  log::warn("vm.went_live", {{"position", position_},
                             {"mode", mode == ExecutionMode::kLive ? "live" : "record"},
                             {"tap", tap.empty() ? "-" : tap}});
}

bool Machine::replay_disk_completion(uint16_t queue, uint16_t count, std::string& why) {
  std::span<Virtqueue> queues = blk_ != nullptr ? blk_->live_queues() : std::span<Virtqueue>();
  if (queues.empty() || queue >= queues.size()) {
    why = "the log reports disk requests done, but the replica's virtio-blk device is not live";
    return false;
  }
  auto& blk = static_cast<VirtioBlk&>(blk_->backend());
  if (!blk.report_logged(queues[queue], count)) {
    why = "the log reports " + std::to_string(count) + " disk requests done, but the replica has " +
          std::to_string(blk.unreported()) + " waiting";
    return false;
  }
  blk_->notify_backend_progress();
  return true;
}

bool Machine::replay_frame(std::span<const uint8_t> frame, std::string& why) {
  if (net_ == nullptr) {
    why = "the log has a received frame, but this VM has no NIC";
    return false;
  }
  std::span<Virtqueue> queues = net_->live_queues();
  if (queues.empty()) {
    why = "the log has a received frame, but the replica's virtio-net device is not live";
    return false;
  }
  auto& net = static_cast<VirtioNet&>(net_->backend());
  VirtioNet::RxResult r = net.deliver_frame(queues[VirtioNet::kRxQueue], frame);
  net.finish_rx(queues[VirtioNet::kRxQueue]);
  net_->notify_backend_progress();
  if (r == VirtioNet::RxResult::kDelivered) return true;
  why = r == VirtioNet::RxResult::kNoBuffer ? "the log has a received frame, but the replica has no RX buffer for it"
                                             : "the replica's RX queue could not take the logged frame";
  return false;
}

bool Machine::should_stop() {
  return power_->exit_code().has_value() || stop_requested_.load(std::memory_order_acquire);
}


uint64_t Machine::guest_clock_ns() const { return clock_dev_->now_ns(); }

void Machine::track_disk_writes(PageBitmap* blocks) {
  if (blk_ != nullptr) static_cast<VirtioBlk&>(blk_->backend()).track_writes(blocks);
}

void Machine::set_disk_observer(DiskWriteObserver* observer) {
  if (blk_ != nullptr) static_cast<VirtioBlk&>(blk_->backend()).set_write_observer(observer);
}

void Machine::set_disk_source(DiskBlockSource* source) {
  if (blk_ != nullptr) static_cast<VirtioBlk&>(blk_->backend()).set_block_source(source);
}

void Machine::switch_disk(const std::string& path) {
  if (blk_ == nullptr) throw Error("this VM has no disk to switch");
  static_cast<VirtioBlk&>(blk_->backend()).switch_image(path);
  config_.disk = path;
}

void Machine::switch_disk(std::unique_ptr<BlockBackend> backend) {
  if (blk_ == nullptr) throw Error("this VM has no disk to switch");
  const std::string where = backend->describe();
  static_cast<VirtioBlk&>(blk_->backend()).switch_backend(std::move(backend));
  config_.disk = where;
}

std::string Machine::disk_path() const {
  return blk_ != nullptr ? static_cast<const VirtioBlk&>(blk_->backend()).path() : std::string();
}


}  // namespace ftvm::vmm
