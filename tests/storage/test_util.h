// Shared helpers of the storage tests: scratch files, whole-file reads, a writer
// that plays the VM's disk (writes the image, then tells the observer, as
// virtio-blk does), and a DR replica on a thread of its own.
#pragma once

#include <fcntl.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/error.h"
#include "common/unique_fd.h"
#include "storage/dr_replica.h"
#include "tests/support/harness.h"
#include "vmm/devices/disk_observer.h"

namespace ftvm::storage::testutil {

// A DR replica (a disk server) listening on a free TCP port of 127.0.0.1 (or at
// `listen`), run on its own thread until destroyed.
struct ReplicaThread {
  explicit ReplicaThread(const std::string& dir, const std::string& listen = "tcp:127.0.0.1:0",
                         const std::string& boot_id = "") {
    ReplicaOptions o;
    o.listen = listen;
    o.boot_id = boot_id;
    o.dir = dir;
    o.report = std::chrono::nanoseconds(0);
    o.state_interval = std::chrono::milliseconds(10);
    replica = std::make_unique<DrReplica>(o, *clock);
    thread = std::thread([this] { replica->run(); });
  }
  ~ReplicaThread() {
    replica->stop();
    thread.join();
  }
  std::unique_ptr<Clock> clock = MakeSystemClock();
  std::unique_ptr<DrReplica> replica;
  std::thread thread;
};

inline std::string ScratchDir(const std::string& tag) {
  std::string t = "/tmp/ftvm-storage-" + tag + "-XXXXXX";
  if (mkdtemp(t.data()) == nullptr) throw SysError("mkdtemp");
  return t;
}

// A whole file as bytes.
inline std::vector<uint8_t> ReadAll(const std::string& path) {
  const std::string s = itest::ReadFile(path);
  return std::vector<uint8_t>(s.begin(), s.end());
}

inline void MakeImage(const std::string& path, uint64_t bytes) {
  UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd || ftruncate(fd.get(), off_t(bytes)) != 0) throw SysError(path);
}

// The VM's disk as the observer sees it.
class FakeDisk {
 public:
  FakeDisk(const std::string& path, vmm::DiskWriteObserver& observer)
      : fd_(open(path.c_str(), O_RDWR | O_CLOEXEC)), observer_(observer) {
    if (!fd_) throw SysError(path);
  }
  void write(uint64_t offset, const std::vector<uint8_t>& data) {
    if (pwrite(fd_.get(), data.data(), data.size(), off_t(offset)) != ssize_t(data.size())) throw SysError("pwrite");
    iovec v{const_cast<uint8_t*>(data.data()), data.size()};
    observer_.disk_written(offset, std::span<const iovec>(&v, 1));
  }
  void flush() { observer_.disk_flushed(); }

 private:
  UniqueFd fd_;
  vmm::DiskWriteObserver& observer_;
};

}  // namespace ftvm::storage::testutil
