#include "vmm/devices/virtio_blk.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/error.h"
#include "common/log.h"
#include "vmm/output_hash.h"
#include "vmm/snapshot.pb.h"

namespace ftvm::vmm {

namespace {

constexpr uint64_t kSector = VIRTIO_BLK_SECTOR_SIZE;
constexpr size_t kHdrBytes = sizeof(virtio_blk_req_hdr);
static_assert(kHdrBytes == 16);

}  // namespace

std::string VirtioBlk::DefaultSerial(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

void VirtioBlk::save(snapshot::Virtio& out) const {
  snapshot::Blk* s = out.mutable_blk();
  s->set_reads(counters_.reads);
  s->set_writes(counters_.writes);
  s->set_flushes(counters_.flushes);
  s->set_write_hash(write_hash_);
  for (const Done& d : done_) {
    snapshot::BlkDone* p = s->add_unreported();
    p->set_head(d.head);
    p->set_status_gpa(d.status_gpa);
    p->set_status(d.value);
    p->set_used_len(d.used_len);
  }
}

void VirtioBlk::restore(const snapshot::Virtio& in) {
  if (!in.has_blk()) throw Error("snapshot for virtio-blk holds another device's state");
  counters_.reads = in.blk().reads();
  counters_.writes = in.blk().writes();
  counters_.flushes = in.blk().flushes();
  write_hash_ = in.blk().write_hash();
  done_.clear();
  // Marks belong to the log of the host that took them: a restored request waits
  // for nothing more (a replica reports it when its log says so anyway).
  for (const snapshot::BlkDone& p : in.blk().unreported())
    done_.push_back(Done{uint16_t(p.head()), p.status_gpa(), uint8_t(p.status()), p.used_len(), 0});
}

namespace {

// Opens a disk image read-write and returns it with its size in bytes.
std::pair<UniqueFd, uint64_t> OpenImage(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd) throw SysError("disk image " + path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw SysError("disk image " + path + ": fstat");
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
    throw Error("disk image " + path + ": not a regular file or block device");
  // lseek gives the size of regular files and block devices alike.
  const off_t end = ::lseek(fd.get(), 0, SEEK_END);
  if (end < 0) throw SysError("disk image " + path + ": seeking to the end");
  return {std::move(fd), uint64_t(end)};
}

}  // namespace

void VirtioBlk::switch_image(const std::string& path) {
  auto [fd, bytes] = OpenImage(path);
  if (bytes / kSector != capacity_)
    throw Error("disk image " + path + ": " + std::to_string(bytes) + " bytes, but the VM's disk has " +
                std::to_string(capacity_ * kSector));
  fd_ = std::move(fd);
  backend_.reset();
  path_ = path;
  log::info("virtio_blk.switched_image", {{"path", path_}});
}

void VirtioBlk::switch_backend(std::unique_ptr<BlockBackend> backend) {
  const uint64_t bytes = backend->size_bytes();
  if (bytes / kSector != capacity_)
    throw Error("disk " + backend->describe() + ": " + std::to_string(bytes) + " bytes, but the VM's disk has " +
                std::to_string(capacity_ * kSector));
  backend_ = std::move(backend);
  fd_.reset();
  path_ = backend_->describe();
  log::info("virtio_blk.switched_backend", {{"disk", path_}});
}

VirtioBlk::VirtioBlk(std::string path, std::string serial, DeviceIo& io) : path_(std::move(path)), io_(io) {
  auto [fd, end] = OpenImage(path_);
  fd_ = std::move(fd);
  capacity_ = uint64_t(end) / kSector;
  if (uint64_t(end) % kSector != 0)
    log::warn("disk image size is not a multiple of 512; the tail is not visible to the guest",
              {{"path", path_}, {"bytes", uint64_t(end)}});
  for (int i = 0; i < 8; ++i) config_[i] = uint8_t(capacity_ >> (8 * i));
  // GET_ID: truncated to the 20 bytes virtio-blk allows.
  if (serial.empty()) serial = DefaultSerial(path_);
  std::memcpy(id_.data(), serial.data(), std::min(serial.size(), id_.size()));
}

uint64_t VirtioBlk::device_features() const {
  return (uint64_t(1) << VIRTIO_F_VERSION_1) | (uint64_t(1) << VIRTIO_F_RING_EVENT_IDX) |
         (uint64_t(1) << VIRTIO_BLK_F_FLUSH);
}

void VirtioBlk::process(unsigned /*queue*/, std::span<Virtqueue> queues) {
  Virtqueue& vq = queues[0];
  for (;;) {
    while (vq.pop(chain_) == PopResult::kChain) handle(vq, chain_);
    flush_batch(vq);
    if (vq.broken()) break;
    // Ask for a kick on the next request, then look once more: a request the driver
    // published before it saw avail_event would otherwise wait for the next kick.
    vq.enable_notifications();
    if (!vq.has_available()) break;
  }
  report_released(vq);
}

void VirtioBlk::poll(std::span<Virtqueue> queues) {
  if (!done_.empty()) report_released(queues[0]);
}

void VirtioBlk::complete(Virtqueue& vq, uint16_t head, uint8_t* status, uint8_t value,
                         uint32_t used_len, bool changes_disk) {
  if (value == VIRTIO_BLK_S_IOERR) ++counters_.io_errors;
  if (value == VIRTIO_BLK_S_UNSUPP) ++counters_.unsupported;
  const uint64_t status_gpa = uint64_t(status - vq.memory().host_base());
  done_.push_back(Done{head, status_gpa, value, used_len, changes_disk ? io_.output_mark(OutputStream::kDiskWrites, write_hash_) : 0});
}

void VirtioBlk::report(Virtqueue& vq, const Done& d) {
  // The status byte is written after the data; push() then publishes both. (Its
  // range was checked when the request was popped.)
  vq.memory().write(d.status_gpa, &d.value, 1);
  vq.push(d.head, d.used_len);
}

void VirtioBlk::report_released(Virtqueue& vq) {
  // In request order: a read behind a write still waiting also waits, so that the
  // log can name reports by count alone.
  uint16_t n = 0;
  while (!done_.empty() && io_.output_released(done_.front().mark)) {
    report(vq, done_.front());
    done_.pop_front();
    ++n;
  }
  if (n > 0) io_.disk_batch_done(0, n);
}

bool VirtioBlk::report_logged(Virtqueue& vq, uint16_t count) {
  if (done_.size() < count) return false;
  for (uint16_t i = 0; i < count; ++i) {
    report(vq, done_.front());
    done_.pop_front();
  }
  return true;
}

void VirtioBlk::handle(Virtqueue& vq, const DescChain& chain) {
  virtio_blk_req_hdr hdr;
  // Copy the header once: the guest may rewrite it while we work.
  if (CopyFromIov(chain.readable, 0, &hdr, kHdrBytes) != kHdrBytes) {
    flush_batch(vq);
    vq.fail("virtio-blk request at head " + std::to_string(chain.head) +
            " has fewer than 16 device-readable header bytes");
    return;
  }
  if (chain.writable_bytes == 0) {
    flush_batch(vq);
    vq.fail("virtio-blk request at head " + std::to_string(chain.head) + " has no status byte");
    return;
  }
  const iovec& last = chain.writable.back();
  uint8_t* status = static_cast<uint8_t*>(last.iov_base) + last.iov_len - 1;

  const bool is_in = hdr.type == VIRTIO_BLK_T_IN;
  const bool is_out = hdr.type == VIRTIO_BLK_T_OUT;
  if (is_in || is_out) {
    const uint64_t bytes = is_in ? chain.writable_bytes - 1 : chain.readable_bytes - kHdrBytes;
    const bool aligned = bytes % kSector == 0;
    const bool in_range = hdr.sector <= capacity_ && bytes / kSector <= capacity_ - hdr.sector;
    if (!aligned || !in_range) {
      flush_batch(vq);  // keep completions in request order
      log::debug("virtio-blk request out of range",
                 {{"path", path_}, {"sector", hdr.sector}, {"bytes", bytes}, {"capacity", capacity_}});
      complete(vq, chain.head, status, VIRTIO_BLK_S_IOERR, 1, false);
      return;
    }
    data_iov_.clear();
    if (is_in)
      SliceIov(chain.writable, 0, bytes, data_iov_);
    else
      SliceIov(chain.readable, kHdrBytes, bytes, data_iov_);
    // Join the pending batch when this request continues it in the same direction
    // and the combined iovec list stays within what one syscall accepts.
    if (!batch_.empty()) {
      const Pending& tail = batch_.back();
      const bool adjacent = batch_write_ == is_out && tail.sector + tail.bytes / kSector == hdr.sector;
      if (!adjacent || batch_iov_.size() + data_iov_.size() > IOV_MAX) flush_batch(vq);
    }
    batch_write_ = is_out;
    batch_.push_back(Pending{chain.head, status, uint32_t(is_in ? bytes + 1 : 1), hdr.sector, bytes,
                             batch_iov_.size(), data_iov_.size()});
    batch_iov_.insert(batch_iov_.end(), data_iov_.begin(), data_iov_.end());
    return;
  }

  flush_batch(vq);  // FLUSH must cover every write before it; others keep order
  switch (hdr.type) {
    case VIRTIO_BLK_T_FLUSH: {
      ++counters_.host_ops;
      int host_err = 0;
      if (backend_ != nullptr) [[unlikely]]
        host_err = backend_->flush();
      else if (::fdatasync(fd_.get()) != 0)
        host_err = errno;
      const int err = io_.disk_request_done(chain.head, host_err);
      if (err != 0) {
        log::warn("virtio-blk flush failed", {{"path", path_}, {"error", std::strerror(err)}});
        complete(vq, chain.head, status, VIRTIO_BLK_S_IOERR, 1, true);
        return;
      }
      ++counters_.flushes;
      if (observer_ != nullptr) observer_->disk_flushed();
      complete(vq, chain.head, status, VIRTIO_BLK_S_OK, 1, true);
      return;
    }
    case VIRTIO_BLK_T_GET_ID: {
      const size_t n = std::min<uint64_t>(id_.size(), chain.writable_bytes - 1);
      CopyToIov(chain.writable, 0, id_.data(), n);
      ++counters_.get_ids;
      complete(vq, chain.head, status, VIRTIO_BLK_S_OK, uint32_t(n + 1), false);
      return;
    }
    default:
      log::debug("virtio-blk unsupported request", {{"path", path_}, {"type", hdr.type}});
      complete(vq, chain.head, status, VIRTIO_BLK_S_UNSUPP, 1, false);
      return;
  }
}

int VirtioBlk::transfer(bool write, std::span<const iovec> iov, uint64_t offset) {
  if (source_ == nullptr) [[likely]] return transfer_file(write, iov, offset);
  uint64_t bytes = 0;
  for (const iovec& v : iov) bytes += v.iov_len;
  if (const int err = source_->prepare(write, offset, bytes); err != 0) return err;
  const int err = transfer_file(write, iov, offset);
  if (write) source_->written(offset, bytes);
  return err;
}

int VirtioBlk::transfer_file(bool write, std::span<const iovec> iov, uint64_t offset) {
  if (write && written_blocks_ != nullptr) {
    uint64_t bytes = 0;
    for (const iovec& v : iov) bytes += v.iov_len;
    written_blocks_->set_range(offset, bytes);
  }
  if (backend_ != nullptr) [[unlikely]] {
    ++counters_.host_ops;
    return backend_->transfer(write, iov, offset);
  }
  io_scratch_.assign(iov.begin(), iov.end());
  size_t first = 0;
  while (first < io_scratch_.size()) {
    const int count = int(std::min<size_t>(io_scratch_.size() - first, IOV_MAX));
    ++counters_.host_ops;
    const ssize_t n = write ? ::pwritev(fd_.get(), &io_scratch_[first], count, off_t(offset))
                            : ::preadv(fd_.get(), &io_scratch_[first], count, off_t(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return EIO;  // end of file inside the capacity: the image shrank
    offset += uint64_t(n);
    // Skip what was transferred; a short transfer resumes mid-iovec.
    size_t left = size_t(n);
    while (left > 0 && first < io_scratch_.size()) {
      iovec& v = io_scratch_[first];
      const size_t take = std::min(left, v.iov_len);
      v.iov_base = static_cast<uint8_t*>(v.iov_base) + take;
      v.iov_len -= take;
      left -= take;
      if (v.iov_len == 0) ++first;
    }
    while (first < io_scratch_.size() && io_scratch_[first].iov_len == 0) ++first;
  }
  return 0;
}

void VirtioBlk::flush_batch(Virtqueue& vq) {
  if (batch_.empty()) return;
  const bool write = batch_write_;
  auto finish = [&](const Pending& p, int host_err) {
    const int err = io_.disk_request_done(p.head, host_err);
    if (err != 0) {
      log::warn(write ? "virtio-blk write failed" : "virtio-blk read failed",
                {{"path", path_}, {"sector", p.sector}, {"bytes", p.bytes}, {"error", std::strerror(err)}});
      complete(vq, p.head, p.status, VIRTIO_BLK_S_IOERR, 1, write);
      return;
    }
    if (write) {
      ++counters_.writes;
      counters_.bytes_written += p.bytes;
      uint8_t sector[8];
      for (int i = 0; i < 8; ++i) sector[i] = uint8_t(p.sector >> (8 * i));
      write_hash_ = OutputHash(write_hash_, sector);
      for (const iovec& v : std::span(batch_iov_).subspan(p.iov_begin, p.iov_count))
        write_hash_ = OutputHash(write_hash_, {static_cast<const uint8_t*>(v.iov_base), v.iov_len});
      if (observer_ != nullptr)
        observer_->disk_written(p.sector * kSector, std::span(batch_iov_).subspan(p.iov_begin, p.iov_count));
    } else {
      ++counters_.reads;
      counters_.bytes_read += p.bytes;
    }
    complete(vq, p.head, p.status, VIRTIO_BLK_S_OK, p.used_len, write);
  };
  const int err = transfer(write, batch_iov_, batch_.front().sector * kSector);
  if (err == 0 || batch_.size() == 1) {
    for (const Pending& p : batch_) finish(p, err);
  } else {
    // One request of the run failed: redo them one by one so only the bad ones
    // report IOERR.
    for (const Pending& p : batch_)
      finish(p, transfer(write, std::span(batch_iov_).subspan(p.iov_begin, p.iov_count), p.sector * kSector));
  }
  batch_.clear();
  batch_iov_.clear();
}

}  // namespace ftvm::vmm
