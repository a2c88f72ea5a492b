#include "guest/apps/compute_core.h"

namespace {
constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ull;

inline uint64_t rotl(uint64_t v, unsigned r) { return (v << r) | (v >> (64 - r)); }
}  // namespace

void ftvm_compute_init(ftvm_compute_state* s) {
  uint64_t v = 0x243f6a8885a308d3ull;  // digits of pi: any fixed non-zero seed
  for (uint64_t& a : s->a) {
    v = v * 6364136223846793005ull + 1442695040888963407ull;  // LCG
    a = v;
  }
  s->x = 0x13198a2e03707344ull;
  s->i = 0;
}

void ftvm_compute_run(ftvm_compute_state* s, uint64_t iters) {
  uint64_t x = s->x;
  uint64_t i = s->i;
  uint64_t* a = s->a;
  for (uint64_t end = i + iters; i != end; ++i) {
    x ^= x << 13;  // xorshift64
    x ^= x >> 7;
    x ^= x << 17;
    uint64_t j = i & 63;
    uint64_t k = x >> 58;  // data-dependent index: keeps the loop from vectorizing
    a[j] = (a[j] + x) * kGolden;
    a[k] ^= rotl(a[j], 29) + i;
  }
  s->x = x;
  s->i = i;
}

uint64_t ftvm_compute_digest(const ftvm_compute_state* s) {
  uint64_t h = s->x ^ s->i;
  for (uint64_t a : s->a) h = rotl(h ^ a, 23) * kGolden;
  return h;
}

uint64_t ftvm_compute(uint64_t iters) {
  ftvm_compute_state s;
  ftvm_compute_init(&s);
  ftvm_compute_run(&s, iters);
  return ftvm_compute_digest(&s);
}
