// Time and randomness enter the VMM only through these interfaces, so tests can
// drive them and the recorder (later) can log what the guest saw.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

namespace ftvm {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual uint64_t monotonic_ns() = 0;  // never goes backwards
  virtual uint64_t wall_ns() = 0;       // ns since the Unix epoch
};

class RandomSource {
 public:
  virtual ~RandomSource() = default;
  // Fills `out` completely. Returns false when the source failed.
  virtual bool fill(std::span<uint8_t> out) = 0;
};

std::unique_ptr<Clock> MakeSystemClock();
std::unique_ptr<RandomSource> MakeSystemRandom();  // getrandom(2)

}  // namespace ftvm
