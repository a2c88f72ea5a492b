// A VM's disk streamed from an image server (`ftvm run --image-from
// HOST:PORT/NAME --disk LOCAL`): the VM starts at once on LOCAL, a sparse file of
// the image's size, while the image arrives (protocol: storage/image_wire.h).
//
// The virtio-blk device asks before every read and write (vmm::DiskBlockSource):
// a read of blocks that are not local yet waits for them, asking the server for
// the ones not already on their way (each block is fetched at most once; a block
// in flight is waited for, never asked for again); a write that covers whole blocks
// takes them over (a copy of such a block that arrives later is dropped, never
// written over the guest's data); a write that covers a block only in part waits
// for it first. A receiver thread writes arriving blocks into LOCAL, in the
// background, ahead of need: the server sends the image's boot profile first.
//
// Which blocks LOCAL holds is kept in LOCAL.present (versioned, CRC32C-checked,
// written after LOCAL is synced), so a VMM started again on the same LOCAL resumes
// the copy where it was. When every block is local the copy is complete: the VM
// runs on LOCAL alone, and an image_stream.complete line says how many blocks were
// fetched on demand and how many ahead of need.
//
// A lost connection (closed, an error, no word from the server, or no answer for a
// demanded block, within the timeout) is not yet the VM lost: the receiver
// reconnects, as often as it takes within the timeout, to a server that comes back
// with the same image (same id; another image is refused at once), tells it which
// blocks are local and asks again for every block the guest is waiting for; a
// vCPU waiting for a block meanwhile waits on. Only when the server is not back
// within the timeout (or sends a damaged batch, or the local copy fails) is the VM
// lost: the owner's `lost` callback stops it (Machine::abort) before the guest can
// read a hole.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/unique_fd.h"
#include "storage/image_wire.h"
#include "transport/channel.h"
#include "vmm/devices/disk_source.h"

namespace ftvm::storage {

struct ImageStreamOptions {
  ImageAddress server;
  std::string local_path;
  // Connecting; how long a demanded block (or any word from the server while the
  // copy is incomplete) may take before the connection counts as lost; and how long
  // a lost server has to come back before the VM is lost.
  std::chrono::nanoseconds timeout = std::chrono::seconds(10);
  std::string client_name;  // for the server's log
};

struct ImageStreamStats {
  uint64_t blocks = 0;
  uint32_t block_bytes = 0;
  uint64_t image_bytes = 0;
  uint64_t local_at_start = 0;  // a resumed copy: blocks LOCAL held already
  uint64_t demand_fetched = 0;  // the server sent them because the VM asked (it waited)
  uint64_t prefetched = 0;      // sent ahead of need
  uint64_t written_over = 0;    // a guest write covered them whole: never fetched
  uint64_t late_dropped = 0;    // arrived after a guest write had taken the block over
  uint64_t blocks_read = 0;     // distinct blocks the guest read while the copy ran
  uint64_t demand_waits = 0;    // prepare() calls that waited for blocks
  uint64_t wait_ns_total = 0;
  uint64_t wait_ns_max = 0;
  uint64_t profile_blocks = 0;  // the server's boot profile for the image
  uint64_t reconnects = 0;      // connections lost and made again
  bool complete = false;
  double complete_s = 0;        // from start() to the last block
};

class ImageStream final : public vmm::DiskBlockSource {
 public:
  // Opens LOCAL (resuming a partial copy from LOCAL.present) or creates it sparse,
  // and, unless LOCAL already holds every block, connects to the server and agrees
  // on the image. Throws ftvm::Error naming the problem: an unknown image, a
  // protocol version the server does not speak, a LOCAL that is not a partial copy
  // of this image.
  ImageStream(ImageStreamOptions options);
  ~ImageStream() override;
  ImageStream(const ImageStream&) = delete;
  ImageStream& operator=(const ImageStream&) = delete;

  // Starts receiving. `lost` is called at most once, from a stream thread or the
  // vCPU thread, with "image server lost: ...: VM lost" when the copy cannot
  // complete; it must stop the VM. Before the VM runs.
  void start(std::function<void(const std::string&)> lost);
  // The VM is stopping: a vCPU waiting for a block returns (ECANCELED) at once.
  void cancel();
  // The VM ended: sends the server the boot profile (if the copy was still
  // running), closes the connection, syncs LOCAL and records what it holds.
  void stop();
  bool complete() const { return complete_.load(std::memory_order_acquire); }
  // Waits up to `timeout` for the copy to complete and be recorded (the
  // image_stream.complete line).
  bool wait_complete(std::chrono::nanoseconds timeout);
  ImageStreamStats stats() const;
  const std::string& local_path() const { return options_.local_path; }
  static std::string PresencePath(const std::string& local_path) { return local_path + ".present"; }

  // vmm::DiskBlockSource (vCPU thread).
  int prepare(bool write, uint64_t offset, uint64_t bytes) override;
  void written(uint64_t offset, uint64_t bytes) override;

 private:
  enum State : uint8_t {
    kAbsent = 0,
    kDemanded = 1,  // asked for, not arrived
    kWriting = 2,   // taken over by a guest write that has not finished yet
    kPresent = 3,
  };
  // Connects and agrees on the image: the first time it learns the image's shape;
  // after that (a resumed copy, a reconnect) the image must be the same one, or
  // ImageChanged is thrown. Other failures throw ftvm::Error.
  std::shared_ptr<transport::Channel> Connect(std::chrono::nanoseconds timeout);
  // Connects again after `why` within the timeout, resumes (ImageStart with what is
  // local, the outstanding demands asked again) and installs the new channel; false
  // (after Lost()) when the server did not come back in time or came back with
  // another image.
  bool Reconnect(const std::string& why);
  std::shared_ptr<transport::Channel> CurrentChannel() const;
  uint64_t have_blocks() const;
  // The ImageStart message: the blocks local (or being written by the guest).
  std::string StartMessage() const;
  void ReceiveLoop();
  // Under mu_: every block is local (or being written by the guest).
  void MaybeComplete();
  void Finish();  // receiver thread, once complete
  void Lost(const std::string& why);
  // Writes LOCAL.present from the blocks that are kPresent (after syncing LOCAL).
  // "" or why it failed.
  std::string Persist();
  // Reads LOCAL.present (throws ftvm::Error when it is damaged).
  void LoadPresence();
  void SendProfile();
  std::string Where() const;  // "NAME on HOST:PORT"
  uint64_t BlockEnd(uint64_t b) const { return std::min<uint64_t>((b + 1) * block_bytes_, image_bytes_); }

  ImageStreamOptions options_;
  UniqueFd fd_;  // LOCAL
  mutable std::mutex channel_mu_;  // channel_ (replaced on a reconnect)
  std::shared_ptr<transport::Channel> channel_;
  uint64_t image_bytes_ = 0;
  uint32_t block_bytes_ = 0;
  uint64_t blocks_ = 0;
  std::string image_id_;
  std::thread receiver_;
  std::function<void(const std::string&)> lost_;
  std::atomic<bool> complete_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> received_bytes_{0};
  std::chrono::steady_clock::time_point start_time_;

  mutable std::mutex mu_;  // everything below
  std::condition_variable cv_;
  std::vector<uint8_t> state_;    // State per block
  std::vector<uint8_t> durable_;  // recorded present in LOCAL.present
  uint64_t have_ = 0;             // blocks kWriting or kPresent
  std::vector<uint8_t> accessed_;
  std::vector<uint32_t> access_order_;  // the boot profile being recorded
  std::vector<uint32_t> unneeded_;      // taken over by writes, not yet told to the server
  std::string failed_;
  bool lost_reported_ = false;  // the owner's `lost` callback has returned
  bool cancelled_ = false;
  bool profile_sent_ = false;
  bool finished_ = false;  // Finish() ran
  // The connection is lost and the receiver is making a new one: a vCPU waiting for
  // a block waits on (the receiver decides when the server is lost).
  bool reconnecting_ = false;
  std::chrono::steady_clock::time_point connected_at_;  // of the current connection
  bool drop_connection_ = false;  // a vCPU's demand went unanswered: reconnect
  std::string drop_why_;
  ImageStreamStats stats_;

  std::atomic<bool> all_durable_{false};  // LOCAL.present says every block is local
  std::mutex persist_mu_;  // one Persist() at a time

  // vCPU thread only.
  std::vector<uint32_t> need_;
  std::vector<uint32_t> demand_;
};

}  // namespace ftvm::storage
