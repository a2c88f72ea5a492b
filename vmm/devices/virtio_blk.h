// virtio-blk over a raw image file.
//
// Every request of one QUEUE_NOTIFY is carried out inside that exit (pread/pwrite
// on the image), where a replica carries it out too, on its own copy of the disk.
// Reporting a request done to the guest (status byte, used ring) is a separate
// step under the output rule: a write is reported only once its mark is released
// (DeviceIo::output_mark), in request order. Live, that is at once, inside the same
// exit; on a protected primary, at the first exit after the secondary acknowledged
// the log; a replica reports exactly where the log's DiskCompletion records say.
#pragma once

#include <sys/uio.h>

#include <array>
#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/unique_fd.h"
#include "vmm/devices/block_backend.h"
#include "vmm/devices/device_io.h"
#include "vmm/devices/disk_observer.h"
#include "vmm/devices/disk_source.h"
#include "vmm/devices/virtio_mmio.h"
#include "vmm/page_bitmap.h"
#include "vmm/devices/virtqueue.h"

namespace ftvm::vmm {

struct BlkCounters {
  uint64_t reads = 0;           // IN requests completed OK
  uint64_t writes = 0;          // OUT requests completed OK
  uint64_t flushes = 0;
  uint64_t get_ids = 0;
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
  uint64_t io_errors = 0;       // requests answered VIRTIO_BLK_S_IOERR
  uint64_t unsupported = 0;     // requests answered VIRTIO_BLK_S_UNSUPP
  uint64_t host_ops = 0;        // preadv/pwritev/fdatasync calls (batching saves these)
};

class VirtioBlk : public VirtioBackend {
 public:
  // Opens `path` read-write. Throws ftvm::Error("disk image PATH: <strerror>").
  // `serial` is what GET_ID returns (at most 20 bytes are used); empty: the file's
  // base name. A replica passes the primary's, so the guest sees the same disk.
  VirtioBlk(std::string path, std::string serial, DeviceIo& io);

  uint32_t device_id() const override { return VIRTIO_ID_BLOCK; }
  uint64_t device_features() const override;
  std::span<const uint8_t> config() const override { return config_; }
  unsigned num_queues() const override { return 1; }
  void process(unsigned queue, std::span<Virtqueue> queues) override;
  // Reports finished requests whose marks have been released since.
  void poll(std::span<Virtqueue> queues) override;
  void save(snapshot::Virtio& out) const override;
  void restore(const snapshot::Virtio& in) override;

  // The image file's path, or the backend's describe().
  const std::string& path() const { return path_; }
  uint64_t capacity_sectors() const { return capacity_; }
  const BlkCounters& counters() const { return counters_; }
  uint64_t write_hash() const { return write_hash_; }
  // Finished requests not yet reported to the guest.
  size_t unreported() const { return done_.size(); }
  // The replay entry: the log says the next `count` finished requests are reported
  // now. False when fewer are waiting (the replica diverged).
  bool report_logged(Virtqueue& vq, uint16_t count);
  void reset() override { done_.clear(); }
  // Marks in `blocks` (4 KiB blocks of the image, PageBitmap granularity) every
  // block a write reaches from now on, successful or not; null stops. A live copy
  // of the disk (migration/) sends those blocks again. vCPU thread.
  void track_writes(PageBitmap* blocks) { written_blocks_ = blocks; }
  // Tells `observer` every successful write and flush from now on, in completion
  // order (null: stop). vCPU thread, between requests.
  void set_write_observer(DiskWriteObserver* observer) { observer_ = observer; }
  // Asks `source` before every read or write of the image from now on (null:
  // stop): an image still being streamed in. Before run(), or on the vCPU thread.
  void set_block_source(DiskBlockSource* source) { source_ = source; }
  // Carries on with the image at `path` instead (a disk move's switch: the new image
  // already holds what the old one does). Between requests, on the vCPU thread.
  // Throws ftvm::Error when it cannot be opened or its size differs; the device then
  // keeps the old image.
  void switch_image(const std::string& path);
  // Carries on with `backend` instead of an image file (a disk moved to another
  // host; it already holds what the image does). Between requests, on the vCPU
  // thread. Throws ftvm::Error when its size differs; the device then keeps its disk.
  void switch_backend(std::unique_ptr<BlockBackend> backend);
  // The serial GET_ID reports: the file's base name unless the config named one.
  static std::string DefaultSerial(const std::string& path);

 private:
  // A run of same-direction requests over adjacent sectors, done as one
  // preadv/pwritev.
  struct Pending {
    uint16_t head;
    uint8_t* status;    // the request's status byte in guest RAM
    uint32_t used_len;  // bytes written into the request's writable part on success
    uint64_t sector;
    uint64_t bytes;
    size_t iov_begin;   // the request's data in batch_iov_
    size_t iov_count;
  };

  // A request carried out, waiting to be reported to the guest.
  struct Done {
    uint16_t head;
    uint64_t status_gpa;  // the request's status byte in guest RAM
    uint8_t value;
    uint32_t used_len;
    uint64_t mark;  // output-rule mark; 0 for requests that change nothing (reads)
  };

  void handle(Virtqueue& vq, const DescChain& chain);
  void report(Virtqueue& vq, const Done& d);
  void report_released(Virtqueue& vq);
  // The request is carried out: queue its report (see Done).
  void complete(Virtqueue& vq, uint16_t head, uint8_t* status, uint8_t value, uint32_t used_len,
                bool changes_disk);
  void flush_batch(Virtqueue& vq);
  // Reads/writes all of `iov` at byte `offset` (asking the block source first, if
  // one is attached), retrying short transfers. Returns 0 or an errno value.
  int transfer(bool write, std::span<const iovec> iov, uint64_t offset);
  // The file I/O alone.
  int transfer_file(bool write, std::span<const iovec> iov, uint64_t offset);

  std::string path_;
  DeviceIo& io_;
  UniqueFd fd_;
  // Set: the disk is there, not in fd_ (which is closed).
  std::unique_ptr<BlockBackend> backend_;
  std::deque<Done> done_;
  uint64_t capacity_ = 0;  // in 512-byte sectors
  std::array<uint8_t, 8> config_{};
  std::array<uint8_t, 20> id_{};
  BlkCounters counters_;
  // A running hash of every successful write, its sector and data: the disk-write
  // output stream (DeviceIo::output_mark).
  uint64_t write_hash_ = 0;
  // Scratch reused across requests so the hot path does not allocate.
  DescChain chain_;
  std::vector<iovec> data_iov_;
  std::vector<iovec> batch_iov_;
  std::vector<iovec> io_scratch_;
  std::vector<Pending> batch_;
  bool batch_write_ = false;
  PageBitmap* written_blocks_ = nullptr;
  DiskWriteObserver* observer_ = nullptr;
  DiskBlockSource* source_ = nullptr;
};

}  // namespace ftvm::vmm
