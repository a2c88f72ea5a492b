// A VM's disk on another host: the virtio-blk backend (vmm/devices/block_backend.h)
// that `ftvm move-disk --to tcp:HOST:PORT` switches a running VM to once its disk has
// been copied to an `ftvm disk-server` there (storage/dr_replica.h). Reads, writes and
// flushes go to the server one request at a time over a channel
// (storage/remote_wire.h), from the vCPU thread, which waits for each answer: a write
// the guest sees done is on the server's image, a flush it sees done is durable there.
//
// A broken link (closed, damaged, or no answer within the timeout) is not yet the
// disk lost: the request waits while the client connects again and sends it again
// (a repeated read or write of the same bytes changes nothing). A server that is not
// back within the timeout is the disk lost: the request fails with EIO, so do all
// later ones, and the `lost` callback stops the VM (Machine::abort) with a logged
// reason; the guest never sees a read that did not come from the image. A server
// that comes back after its *host* restarted may have lost the writes made since the
// last flush (they were in its page cache): with such writes outstanding that is the
// disk lost too.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "storage/remote_wire.h"
#include "transport/channel.h"
#include "vmm/devices/block_backend.h"

namespace ftvm::storage {

struct RemoteDiskOptions {
  std::string address;      // the disk server's channel address (tcp:HOST:PORT)
  uint64_t disk_bytes = 0;  // the VM's disk: the server's image must be as large
  std::string vm_name = "vm";
  // Connecting; an answer to a request; and how long a lost server has to come back.
  std::chrono::nanoseconds timeout = std::chrono::seconds(10);
};

struct RemoteDiskStats {
  uint64_t requests = 0;    // answered
  uint64_t reconnects = 0;  // connections lost and made again
  uint64_t resent = 0;      // requests sent again on a new connection
};

class RemoteDisk final : public vmm::BlockBackend {
 public:
  // Connects and opens the disk. Throws ftvm::Error naming the address and the cause:
  // unreachable, another protocol version, an image of another size, no image there.
  RemoteDisk(RemoteDiskOptions options, Clock& clock);
  // Called once, with the reason, when the server is lost for good (vCPU thread).
  void set_lost(std::function<void(const std::string&)> lost) { lost_ = std::move(lost); }

  std::string describe() const override { return options_.address; }
  uint64_t size_bytes() const override { return options_.disk_bytes; }
  int transfer(bool write, std::span<const iovec> iov, uint64_t offset) override;
  int flush() override;

  // The VM is stopping: a request waiting for a lost server gives up (ECANCELED) at
  // its next try instead of at the timeout. Any thread.
  void cancel() { cancelled_.store(true, std::memory_order_release); }

  const RemoteDiskStats& stats() const { return stats_; }
  // Non-empty once the server is lost: why.
  const std::string& failed() const { return failed_; }

 private:
  // Connects and opens; "" or why not (`fatal`: the server refused, retrying will not
  // help).
  std::string Open(bool& fatal);
  // One request, sent again on new connections until answered or the server is lost.
  // 0, the server's errno, or EIO (lost). A read's data goes to `iov`.
  int Call(DiskOp op, uint64_t offset, uint32_t bytes, std::span<const iovec> iov);
  // One try on the current connection: "" (answered: `error` set) or why the link
  // failed.
  std::string Try(const DiskRequest& request, std::span<const iovec> iov, int& error);

  RemoteDiskOptions options_;
  Clock& clock_;
  std::function<void(const std::string&)> lost_;
  std::unique_ptr<transport::Channel> channel_;
  transport::Message reply_;
  std::vector<iovec> chunk_;  // scratch: one request's part of the iovecs
  std::vector<std::span<const uint8_t>> parts_;
  uint64_t next_id_ = 1;
  const std::string session_;   // random, this client's for its life
  std::string boot_id_;         // the server host's boot, from the first open
  bool unflushed_ = false;      // writes answered since the last flush
  RemoteDiskStats stats_;
  std::string failed_;
  std::atomic<bool> cancelled_{false};
};

}  // namespace ftvm::storage
