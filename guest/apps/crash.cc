// app=crash kind=ud|gp|pf|de|bp: raises a CPU exception from ring 3 to exercise
// the kernel's report-and-power-off path (exit code 0xa0 + vector).
#include <stdint.h>

#include "guest/apps/app.h"
#include "guest/lib/console.h"

namespace ftvm::guest {

int app_crash(const Args& args) {
  Str kind = args.get_str("kind", Str::of("ud"));
  con_printf("crash: raising %.*s\n", static_cast<int>(kind.n), kind.p);
  if (kind.eq("ud")) {
    asm volatile("ud2");
  } else if (kind.eq("gp")) {
    // Non-canonical address.
    (void)*reinterpret_cast<volatile uint64_t*>(0x8000000000000000ull);
  } else if (kind.eq("pf")) {
    // Canonical but far above any RAM the identity map covers (256 TiB - 4 KiB).
    (void)*reinterpret_cast<volatile uint64_t*>(0x00007ffffffff000ull);
  } else if (kind.eq("de")) {
    uint64_t zero = 0;
    asm volatile("" : "+r"(zero));  // hide the constant from the compiler
    uint64_t q;
    asm volatile("xor %%edx, %%edx; divq %1" : "=a"(q) : "r"(zero), "a"(1ull) : "rdx");
    (void)q;
  } else if (kind.eq("bp")) {
    asm volatile("int3");
  } else {
    con_printf("crash: unknown kind (ud gp pf de bp)\n");
    return kExitBadSetup;
  }
  con_printf("crash: no exception raised\n");
  return kExitFailed;
}

}  // namespace ftvm::guest
