// Guest apps: each runs at ring 3, prints its results and returns the exit code
// the runtime powers off with (0 = success). Selected by "app=NAME".
#ifndef FTVM_GUEST_APPS_APP_H_
#define FTVM_GUEST_APPS_APP_H_

#include "guest/lib/args.h"

namespace ftvm::guest {

// Exit codes shared by the apps.
constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;    // the workload found an error (mismatch, I/O error)
constexpr int kExitBadSetup = 2;  // bad argument, missing device, out of memory

int app_hello(const Args& args);
int app_compute(const Args& args);
int app_timers(const Args& args);
int app_dirty(const Args& args);
int app_disk(const Args& args);
int app_mailstore(const Args& args);
int app_crash(const Args& args);
int app_exits(const Args& args);
int app_hostile(const Args& args);
int app_hang(const Args& args);

}  // namespace ftvm::guest

#endif  // FTVM_GUEST_APPS_APP_H_
