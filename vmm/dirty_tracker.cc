#include "vmm/dirty_tracker.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "common/error.h"
#include "common/unique_fd.h"

namespace ftvm::vmm {
namespace {

// Kernel ABI from Linux 6.7 (include/uapi/linux/fs.h, userfaultfd.h), which this
// build's linux-libc-dev may predate. The layouts are fixed by the kernel.
namespace uapi {
constexpr uint64_t kFeatureWpUnpopulated = 1u << 13;
constexpr uint64_t kFeatureWpAsync = 1u << 15;
struct PageRegion {
  uint64_t start, end, categories;
};
struct PmScanArg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
  uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
constexpr uint64_t kScanWpMatching = 1u << 0;
constexpr uint64_t kScanCheckWpAsync = 1u << 1;
constexpr uint64_t kPageIsWritten = 1u << 1;  // (1 << 0 is PAGE_IS_WPALLOWED)
constexpr unsigned long kPagemapScan = _IOWR('f', 16, PmScanArg);
}  // namespace uapi

class UffdDirtyTracker final : public DirtyTracker {
 public:
  explicit UffdDirtyTracker(GuestMemory& memory) : memory_(memory) {
    const std::string what = "dirty-page tracking with userfaultfd";
    uffd_.reset(int(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)));
    if (!uffd_) throw SysError(what + ": userfaultfd");
    uffdio_api api{};
    api.api = UFFD_API;
    api.features = uapi::kFeatureWpAsync | UFFD_FEATURE_WP_HUGETLBFS_SHMEM | uapi::kFeatureWpUnpopulated;
    if (ioctl(uffd_.get(), UFFDIO_API, &api) != 0)
      throw SysError(what + ": the kernel lacks asynchronous write-protection (Linux 6.7+ needed)");
    uffdio_register reg{};
    reg.range.start = reinterpret_cast<uint64_t>(memory.host_base());
    reg.range.len = memory.size();
    reg.mode = UFFDIO_REGISTER_MODE_WP;
    if (ioctl(uffd_.get(), UFFDIO_REGISTER, &reg) != 0) throw SysError(what + ": registering guest RAM");
    pagemap_.reset(open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
    if (!pagemap_) throw SysError(what + ": opening /proc/self/pagemap");
    uffdio_writeprotect wp{};
    wp.range = reg.range;
    wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
    if (ioctl(uffd_.get(), UFFDIO_WRITEPROTECT, &wp) != 0) throw SysError(what + ": write-protecting guest RAM");
    memory_.track_vmm_writes(true);
  }
  ~UffdDirtyTracker() override { memory_.track_vmm_writes(false); }

  std::string_view name() const override { return "userfaultfd"; }

  void collect(PageBitmap& pages) override {
    const uint64_t base = reinterpret_cast<uint64_t>(memory_.host_base());
    const uint64_t end = base + memory_.size();
    uint64_t at = base;
    while (at < end) {
      uapi::PmScanArg arg{};
      arg.size = sizeof arg;
      arg.flags = uapi::kScanWpMatching | uapi::kScanCheckWpAsync;
      arg.start = at;
      arg.end = end;
      arg.vec = reinterpret_cast<uint64_t>(regions_);
      arg.vec_len = kRegions;
      arg.category_mask = uapi::kPageIsWritten;
      arg.return_mask = uapi::kPageIsWritten;
      long n = ioctl(pagemap_.get(), uapi::kPagemapScan, &arg);
      if (n < 0) {
        if (errno == EINTR) continue;
        throw SysError("dirty-page tracking: PAGEMAP_SCAN");
      }
      for (long i = 0; i < n; ++i)
        pages.set_range(regions_[i].start - base, regions_[i].end - regions_[i].start);
      if (arg.walk_end <= at) break;  // no progress: never spin
      at = arg.walk_end;
    }
    memory_.take_vmm_writes(pages);
  }

 private:
  static constexpr size_t kRegions = 512;
  GuestMemory& memory_;
  UniqueFd uffd_;
  UniqueFd pagemap_;
  uapi::PageRegion regions_[kRegions];
};

}  // namespace

std::unique_ptr<DirtyTracker> MakeUffdDirtyTracker(GuestMemory& memory) {
  return std::make_unique<UffdDirtyTracker>(memory);
}

}  // namespace ftvm::vmm
