// Ring-3 runtime: the first code after the kernel's iretq. Sets up the arena,
// picks the app from the command line, and powers off with its exit code.
#include <stdint.h>

#include "guest/apps/app.h"
#include "guest/kernel/kernel.h"
#include "guest/lib/arena.h"
#include "guest/lib/console.h"
#include "guest/lib/dev.h"
#include "guest/lib/mem.h"

namespace ftvm::guest {
namespace {

struct AppEntry {
  const char* name;
  int (*main)(const Args&);
  const char* help;
};

const AppEntry kApps[] = {
    {"hello", app_hello, "print boot info and exit"},
    {"compute", app_compute, "iters=N: CPU-bound checksum"},
    {"timers", app_timers, "period_us= ticks=: compute under a periodic timer"},
    {"dirty", app_dirty, "mib= mib_per_s= seconds=: paced page dirtying"},
    {"disk", app_disk, "ops= seed= batch= blocks=: verified random block I/O"},
    {"mailstore", app_mailstore, "ip=A.B.C.D/N gw= beat_ms= hang_after_ms=: UDP mail store on a disk journal"},
    {"crash", app_crash, "kind=ud|gp|pf|de|bp: raise a CPU exception"},
    {"exits", app_exits, "n=N: time N MMIO exits from ring 3 (benchmark)"},
    {"hang", app_hang, "beat_ms= hang_after_ms= mode=app|kernel: heartbeat, then hang (spin without exits)"},
    {"hostile", app_hostile, "misbehaves on purpose: bad virtio descriptors, wild MMIO, an interrupt storm"},
};

Arena g_arena;

}  // namespace

Arena& arena() { return g_arena; }

int app_hello(const Args& args) {
  const ftvm_bootinfo& bi = bootinfo();
  con_printf("hello: ftvm guest kit abi=%u ram=%lu MiB slots=0x%x free=%zu KiB\n",
             bi.abi_version, bi.ram_bytes >> 20, bi.present_slots, arena().remaining() >> 10);
  con_printf("hello: cmdline=\"%.*s\"\n", static_cast<int>(args.line().n), args.line().p);
  return kExitOk;
}

extern "C" int ftvm_user_main(const ftvm_bootinfo* bi) {
  // The arena: RAM from the end of the image (or of what the loader reports, if
  // later) to the top of RAM. Nothing has written there since power-on or a reset,
  // both of which leave it zeroed (the VMM's RAM is a fresh memfd; a reset clears
  // RAM), so it is handed out without zeroing it again.
  uintptr_t start = reinterpret_cast<uintptr_t>(__image_end);
  if (bi->image_end > start) start = bi->image_end;
  if (bi->ram_bytes > start) {
    g_arena.init(reinterpret_cast<void*>(start), bi->ram_bytes - start, /*zeroed=*/true);
  }

  Args args(Str(bi->cmdline, str_nlen(bi->cmdline, FTVM_CMDLINE_MAX)));
  Str name = args.get_str("app", Str::of("hello"));
  for (const AppEntry& app : kApps) {
    if (name.eq(app.name)) return app.main(args);
  }
  con_printf("ftvm-guest: unknown app \"%.*s\"; apps:\n", static_cast<int>(name.n), name.p);
  for (const AppEntry& app : kApps) con_printf("  %-10s %s\n", app.name, app.help);
  return kExitBadSetup;
}

}  // namespace ftvm::guest

extern "C" [[noreturn]] void ftvm_user_exit(int code) {
  ftvm::guest::power_off(static_cast<uint32_t>(code));
}
