// app=dirty mib=M mib_per_s=R seconds=S: dirties pages at a paced rate, one word
// per 4 KiB page, cycling over an M MiB region, for S seconds. A load generator
// for dirty-page tracking and epoch checkpoints.
#include <stdint.h>

#include "guest/apps/app.h"
#include "guest/lib/arena.h"
#include "guest/lib/console.h"
#include "guest/lib/dev.h"

namespace ftvm::guest {
namespace {
constexpr uint64_t kPage = 4096;
constexpr uint64_t kWordsPerPage = kPage / sizeof(uint64_t);
}  // namespace

int app_dirty(const Args& args) {
  bool ok[4];
  uint64_t mib = args.get_u64("mib", 16, &ok[0]);
  uint64_t rate = args.get_u64("mib_per_s", 32, &ok[1]);
  uint64_t seconds = args.get_u64("seconds", 2, &ok[2]);
  // Pacing granularity: how often the clock is read (one exit each).
  uint64_t slice_us = args.get_u64("slice_us", 10000, &ok[3]);
  if (!ok[0] || !ok[1] || !ok[2] || !ok[3] || mib == 0 || slice_us == 0) {
    con_printf("dirty: bad mib= mib_per_s= seconds= or slice_us=\n");
    return kExitBadSetup;
  }
  uint64_t pages = mib * (1024 * 1024 / kPage);
  // Fresh guest RAM is zero: no need to touch (dirty) it all up front.
  auto* region = static_cast<uint64_t*>(arena().alloc(pages * kPage, kPage, false));
  if (region == nullptr) {
    con_printf("dirty: cannot allocate %lu MiB (%zu KiB free)\n", mib, arena().remaining() >> 10);
    return kExitBadSetup;
  }
  uint64_t pages_per_s = rate * (1024 * 1024 / kPage);
  uint64_t start = clock_mono_ns();
  uint64_t end = start + seconds * 1000000000ull;
  uint64_t written = 0;
  for (;;) {
    uint64_t now = clock_mono_ns();
    if (now >= end) now = end;
    // Pages due by now; 128-bit-free arithmetic: rate*elapsed stays < 2^64 for
    // any sane rate (pages_per_s * ns < 2^64 when elapsed < 2^64 / pages_per_s).
    uint64_t elapsed_ns = now - start;
    uint64_t due = pages_per_s * (elapsed_ns / 1000) / 1000000;
    for (; written < due; ++written) {
      uint64_t page = written % pages;
      region[page * kWordsPerPage] = written * 0x9e3779b97f4a7c15ull + 1;
    }
    if (now >= end) break;
    // Sleep until the next slice (or any other interrupt: the clock decides).
    uint64_t snapshot = irq_total();
    timer_arm_ns(slice_us * 1000);
    irq_wait_since(snapshot);
  }
  // Digest of the final contents (one word per page), comparable across replicas.
  uint64_t sum = 0;
  for (uint64_t p = 0; p < pages; ++p) sum = (sum ^ region[p * kWordsPerPage]) * 0x100000001b3ull;
  con_printf("dirty: mib=%lu mib_per_s=%lu seconds=%lu pages_written=%lu checksum=0x%016lx\n", mib,
             rate, seconds, written, sum);
  return kExitOk;
}

}  // namespace ftvm::guest
