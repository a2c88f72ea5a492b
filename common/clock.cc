#include "common/clock.h"

#include <sys/random.h>
#include <time.h>

#include <cerrno>

namespace ftvm {
namespace {

uint64_t Now(clockid_t id) {
  timespec ts{};
  clock_gettime(id, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

class SystemClock final : public Clock {
 public:
  uint64_t monotonic_ns() override { return Now(CLOCK_MONOTONIC); }
  uint64_t wall_ns() override { return Now(CLOCK_REALTIME); }
};

class SystemRandom final : public RandomSource {
 public:
  bool fill(std::span<uint8_t> out) override {
    size_t done = 0;
    while (done < out.size()) {
      ssize_t n = getrandom(out.data() + done, out.size() - done, 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        return false;
      }
      done += size_t(n);
    }
    return true;
  }
};

}  // namespace

std::unique_ptr<Clock> MakeSystemClock() { return std::make_unique<SystemClock>(); }
std::unique_ptr<RandomSource> MakeSystemRandom() { return std::make_unique<SystemRandom>(); }

}  // namespace ftvm
