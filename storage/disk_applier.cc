#include "storage/disk_applier.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"
#include "common/log.h"

namespace ftvm::storage {

namespace {
constexpr uint64_t kCatchupSyncBytes = 8u << 20;
}  // namespace

DiskApplier::DiskApplier(const std::string& path, uint64_t disk_bytes) : path_(path), disk_bytes_(disk_bytes) {
  fd_.reset(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!fd_) throw SysError("replica disk " + path);
  struct stat st {};
  if (::fstat(fd_.get(), &st) != 0) throw SysError("replica disk " + path + ": fstat");
  if (st.st_size == 0 && disk_bytes != 0) {
    if (::ftruncate(fd_.get(), off_t(disk_bytes)) != 0) throw SysError("replica disk " + path + ": sizing it");
  } else if (uint64_t(st.st_size) != disk_bytes) {
    throw Error("replica disk " + path + " has " + std::to_string(st.st_size) + " bytes, but the source's disk has " +
                std::to_string(disk_bytes) + " (a replica of another VM?)");
  }
}

void DiskApplier::resume(const ApplierState& saved) {
  state_ = saved;
  state_.stopped = false;  // a new source connection tries again
  state_.stop_reason.clear();
  state_.applied_seq = saved.durable_seq;  // what was not fsynced may be gone
  state_.applied_bytes = saved.durable_bytes;
}

void DiskApplier::Stop(const std::string& why) {
  if (state_.stopped) return;
  state_.stopped = true;
  state_.stop_reason = why;
  log::error("dr.replica_stopped_applying",
             {{"disk", path_}, {"reason", why}, {"durable_seq", state_.durable_seq},
              {"consistent", state_.consistent ? "yes" : "no"}});
}

std::string DiskApplier::Write(uint64_t offset, std::span<const uint8_t> data) {
  if (offset > disk_bytes_ || data.size() > disk_bytes_ - offset)
    return "a write of " + std::to_string(data.size()) + " bytes at offset " + std::to_string(offset) +
           " is outside the " + std::to_string(disk_bytes_) + "-byte disk";
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::pwrite(fd_.get(), data.data() + done, data.size() - done, off_t(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      Stop("writing " + std::to_string(data.size()) + " bytes at offset " + std::to_string(offset) + " of " + path_ +
           ": " + std::strerror(n < 0 ? errno : ENOSPC));
      return "";
    }
    done += size_t(n);
  }
  return "";
}

std::string DiskApplier::apply(const DecodedBatch& batch) {
  if (state_.stopped) return "";
  const BatchHeader& h = batch.header;
  uint64_t seq = h.first_seq;
  uint64_t bytes = h.first_bytes;
  // Within a catch-up the sequence numbers are not continuous (the copy stands for
  // the writes it covers); outside one, a batch must continue the last exactly.
  const bool opens_catchup = !batch.records.empty() && batch.records.front().kind == RecordKind::kCatchupBegin;
  if (state_.consistent && !opens_catchup && !batch.records.empty() && seq != state_.applied_seq + 1)
    return "write batch starts at sequence number " + std::to_string(seq) + ", but the replica has applied up to " +
           std::to_string(state_.applied_seq) + " (a write would be lost or applied twice)";
  if (before_write_) {
    extents_.clear();
    for (const Record& r : batch.records)
      if ((r.kind == RecordKind::kWrite || r.kind == RecordKind::kBlock) && r.b != 0) extents_.emplace_back(r.a, r.b);
    if (!extents_.empty()) before_write_(fd_.get(), extents_);
  }
  for (const Record& r : batch.records) {
    const uint64_t wall = h.first_wall_ns + uint64_t(r.delta_us) * 1000;
    switch (r.kind) {
      case RecordKind::kWrite:
      case RecordKind::kFlush:
        if (!state_.consistent) return "a guest write inside a catch-up (the source must end the catch-up first)";
        if (r.kind == RecordKind::kWrite) {
          if (std::string e = Write(r.a, r.data); !e.empty()) return e;
          if (state_.stopped) return "";
          bytes += r.b;
        }
        state_.applied_seq = seq;
        state_.applied_bytes = bytes;
        applied_wall_ns_ = wall;
        ++seq;
        // A flush barrier: the caller fsyncs after the batches that arrived together
        // (group commit; see disk_applier.h).
        if (r.kind == RecordKind::kFlush) flush_pending_ = true;
        break;
      case RecordKind::kCatchupBegin:
        state_.consistent = false;
        break;
      case RecordKind::kBlock:
        if (state_.consistent) return "a catch-up block outside a catch-up";
        if (std::string e = Write(r.a, r.data); !e.empty()) return e;
        if (state_.stopped) return "";
        unsynced_blocks_ = true;
        // A copy of a whole disk left to one fsync at its end makes a backlog of
        // dirty pages that stalls every other fsync on the filesystem for hundreds
        // of ms (the guest's flushes on the source image among them): write it back
        // as it goes.
        unsynced_block_bytes_ += r.b;
        if (unsynced_block_bytes_ >= kCatchupSyncBytes) {
          // Start writing them back without waiting (no fsync burst that the
          // guest's own flushes would queue behind).
          (void)::sync_file_range(fd_.get(), 0, 0, SYNC_FILE_RANGE_WRITE);
          unsynced_block_bytes_ = 0;
        }
        break;
      case RecordKind::kCatchupEnd:
        if (state_.consistent) return "the end of a catch-up that did not begin";
        state_.consistent = true;
        state_.applied_seq = r.a;
        state_.applied_bytes = r.b;
        seq = r.a + 1;
        bytes = r.b;
        // The source read the last blocks with no write in progress: its disk held
        // exactly this at that moment.
        applied_wall_ns_ = wall;
        unsynced_blocks_ = true;
        flush_pending_ = true;  // consistent again: worth making durable at once
        break;
    }
    ++state_.records;
  }
  ++state_.batches;
  state_.head_seq = h.head_seq;
  state_.head_bytes = h.head_bytes;
  state_.head_wall_ns = h.head_wall_ns;
  // Caught up with the head as the source read it: the recovery point is then.
  if (state_.consistent && state_.durable_seq == h.head_seq && h.head_wall_ns > state_.recovery_point_wall_ns)
    state_.recovery_point_wall_ns = h.head_wall_ns;
  return "";
}

std::string DiskApplier::sync() {
  if (!needs_sync() || state_.stopped) return "";
  if (::fdatasync(fd_.get()) != 0) {
    const std::string why = "fdatasync " + path_ + ": " + std::strerror(errno);
    Stop(why);
    return why;
  }
  ++state_.syncs;
  unsynced_blocks_ = false;
  flush_pending_ = false;
  unsynced_block_bytes_ = 0;
  if (!state_.consistent) return "";  // durable, but not a moment of the source's disk
  state_.durable_seq = state_.applied_seq;
  state_.durable_bytes = state_.applied_bytes;
  // The source completed write `durable_seq` at applied_wall_ns_ (truncated down to
  // the microsecond: never later than the truth), and the next one after it.
  state_.recovery_point_wall_ns = std::max(state_.recovery_point_wall_ns, applied_wall_ns_);
  if (state_.durable_seq == state_.head_seq)
    state_.recovery_point_wall_ns = std::max(state_.recovery_point_wall_ns, state_.head_wall_ns);
  return "";
}

}  // namespace ftvm::storage
