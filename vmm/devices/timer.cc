#include "vmm/devices/timer.h"

#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "common/error.h"
#include "common/log.h"
#include "vmm/abi/ftvm_abi.h"
#include "vmm/snapshot.pb.h"

namespace ftvm::vmm {

Timer::Timer(InterruptSink& irq, DeviceIo& io)
    : irq_(irq), io_(io), fd_(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)) {
  if (!fd_) throw SysError("timerfd_create for the guest timer");
}

uint64_t Timer::mmio_read(uint64_t offset, unsigned) {
  return offset == FTVM_TIMER_FIRED ? fired_ : 0;
}

void Timer::mmio_write(uint64_t offset, unsigned, uint64_t value) {
  if (offset != FTVM_TIMER_ARM_NS) return;
  expired_ = false;
  armed_ = value != 0;
  interval_ns_ = value;
  if (io_.replaying()) return;  // expiries come from the log
  itimerspec spec{};
  // A zero it_value disarms the timerfd, which is what ARM_NS=0 means.
  if (value != 0) {
    spec.it_value.tv_sec = time_t(value / 1000000000ull);
    spec.it_value.tv_nsec = long(value % 1000000000ull);
  }
  if (timerfd_settime(fd_.get(), 0, &spec, nullptr) != 0)
    log::error("timer.settime_failed", {{"error", strerror(errno)}});
}

void Timer::poll() {
  if (!armed_ || !std::exchange(expired_, false)) return;
  uint64_t expirations = 0;
  ssize_t n = read(fd_.get(), &expirations, sizeof expirations);
  if (n != sizeof expirations) return;  // EAGAIN: not yet expired
  io_.timer_expired();
  expire();
}

void Timer::go_live() {
  if (!armed_) return;
  itimerspec spec{};
  spec.it_value.tv_sec = time_t(interval_ns_ / 1000000000ull);
  spec.it_value.tv_nsec = long(interval_ns_ % 1000000000ull);
  if (timerfd_settime(fd_.get(), 0, &spec, nullptr) != 0)
    log::error("timer.settime_failed", {{"error", strerror(errno)}});
}

void Timer::reset() {
  armed_ = false;
  expired_ = false;
  fired_ = 0;
  interval_ns_ = 0;
  if (io_.replaying()) return;
  // Setting the timerfd also drops an expiry it holds unread.
  itimerspec off{};
  if (timerfd_settime(fd_.get(), 0, &off, nullptr) != 0)
    log::error("timer.settime_failed", {{"error", strerror(errno)}});
}

bool Timer::expire() {
  if (!armed_) return false;
  armed_ = false;
  ++fired_;
  irq_.raise(FTVM_IRQ_TIMER);
  return true;
}

bool Timer::save(snapshot::Device& out) const {
  auto* s = out.mutable_timer();
  s->set_armed(armed_);
  s->set_fired(fired_);
  s->set_interval_ns(interval_ns_);
  return true;
}

void Timer::restore(const snapshot::Device& in) {
  if (!in.has_timer()) throw Error("snapshot for device 'timer' holds another device's state");
  armed_ = in.timer().armed();
  fired_ = in.timer().fired();
  interval_ns_ = in.timer().interval_ns();
  expired_ = false;
}

}  // namespace ftvm::vmm
