// The CPU-bound workload shared by the guest `compute`/`timers` apps and the host
// benchmark, so native and guest runs execute identical code. Pure integer
// arithmetic: same result on any x86-64, in any ring, under any backend.
#ifndef FTVM_GUEST_APPS_COMPUTE_CORE_H_
#define FTVM_GUEST_APPS_COMPUTE_CORE_H_

#include <stdint.h>

// Iterations that take about one second natively (~2.1 ns/iteration measured on
// the dev host, gcc -O2).
#define FTVM_COMPUTE_DEFAULT_ITERS 450000000ull

struct ftvm_compute_state {
  uint64_t a[64];
  uint64_t x;
  uint64_t i;
};

// Resumable form (the timers app interleaves it with timer handling).
void ftvm_compute_init(ftvm_compute_state* s);
void ftvm_compute_run(ftvm_compute_state* s, uint64_t iters);
uint64_t ftvm_compute_digest(const ftvm_compute_state* s);

// init + run(iters) + digest.
uint64_t ftvm_compute(uint64_t iters);

#endif  // FTVM_GUEST_APPS_COMPUTE_CORE_H_
