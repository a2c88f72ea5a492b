// app=compute iters=N: the fixed CPU-bound workload, no exits until the end.
#include "guest/apps/app.h"
#include "guest/apps/compute_core.h"
#include "guest/lib/console.h"

namespace ftvm::guest {

int app_compute(const Args& args) {
  bool ok;
  uint64_t iters = args.get_u64("iters", FTVM_COMPUTE_DEFAULT_ITERS, &ok);
  if (!ok) {
    con_printf("compute: bad iters=\n");
    return kExitBadSetup;
  }
  uint64_t sum = ftvm_compute(iters);
  con_printf("compute: iters=%lu checksum=0x%016lx\n", iters, sum);
  return kExitOk;
}

}  // namespace ftvm::guest
