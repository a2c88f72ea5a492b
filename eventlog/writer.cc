#include "eventlog/writer.h"

#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>
#include <zstd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <utility>

#include "common/error.h"
#include "common/log.h"
#include "eventlog/crc32c.h"
#include "eventlog/records.h"

#ifndef FTVM_VERSION
#define FTVM_VERSION "unknown"
#endif

namespace ftvm::eventlog {

LogWriter LogWriter::Create(const std::string& path, LogHeader header,
                            const WriterOptions& options) {
  header.set_format_version(kFormatVersion);
  if (header.ftvm_version().empty()) header.set_ftvm_version(FTVM_VERSION);
  if (header.created_unix_ns() == 0) {
    auto now = std::chrono::system_clock::now().time_since_epoch();
    header.set_created_unix_ns(
        static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(now).count()));
  }
  std::vector<uint8_t> head = EncodeFileHeader(header);

  LogWriter w;
  w.path_ = path;
  w.options_ = options;
  w.encoder_ = RecordEncoder(options.zstd_level);
  if (w.options_.buffer_bytes < 4096) w.options_.buffer_bytes = 4096;
  int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (options.overwrite ? O_TRUNC : O_EXCL);
  w.fd_.reset(::open(path.c_str(), flags, 0644));
  if (!w.fd_) {
    int err = errno;
    if (err == EEXIST) {
      throw Error("event log " + path + ": already exists (refusing to overwrite a log)");
    }
    throw SysError("event log " + path + ": create", err);
  }
  w.buffer_.reserve(w.options_.buffer_bytes);
  Status s = w.write_all(std::array{std::span<const uint8_t>(head)}, 0);
  if (!s.ok()) {
    // A log without a whole header is useless and would make the next O_EXCL create
    // fail: remove what this call created.
    ::unlink(path.c_str());
    throw Error(s.message());
  }
  return w;
}

LogWriter::LogWriter(LogWriter&&) noexcept = default;
LogWriter& LogWriter::operator=(LogWriter&&) noexcept = default;

LogWriter::~LogWriter() {
  if (!fd_ || closed_ || failed() || buffer_.empty()) return;
  Status s = flush();
  if (!s.ok()) log::error("eventlog_flush_failed", {{"path", path_}, {"error", s.message()}});
}

Status LogWriter::fail(std::string message, int err) {
  failure_ = Status::Failure(std::move(message), err);
  return failure_;
}

// Writes `chunks` at the end of the file. On failure the file is cut back to where
// this call started (a whole-record boundary: chunks always hold whole records), so
// a reader never sees a record the writer reported as failed.
Status LogWriter::write_all(std::span<const std::span<const uint8_t>> chunks,
                            uint64_t records_in_chunks) {
  const uint64_t start = file_offset_;
  uint64_t off = start;
  for (std::span<const uint8_t> chunk : chunks) {
    while (!chunk.empty()) {
      ssize_t n = ::write(fd_.get(), chunk.data(), chunk.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        int err = n < 0 ? errno : EIO;  // write() returning 0 for a nonempty buffer: no progress
        std::string msg = "event log " + path_ + ": write at offset " + std::to_string(off) +
                          " failed: " + std::strerror(err);
        if (::ftruncate(fd_.get(), static_cast<off_t>(start)) == 0 &&
            ::lseek(fd_.get(), static_cast<off_t>(start), SEEK_SET) >= 0) {
          msg += "; log cut back to offset " + std::to_string(start) + " (" +
                 std::to_string(flushed_records_) + " whole records)";
        } else {
          msg += "; could not cut the log back to offset " + std::to_string(start) + ": " +
                 std::strerror(errno) + " (recover with RecoverTruncatedTail)";
        }
        return fail(std::move(msg), err);
      }
      chunk = chunk.subspan(static_cast<size_t>(n));
      off += static_cast<uint64_t>(n);
    }
  }
  file_offset_ = off;
  flushed_records_ += records_in_chunks;
  return Status::Ok();
}

Status LogWriter::append(RecordType type, uint64_t position, std::span<const uint8_t> payload,
                         bool compress) {
  if (!failure_.ok()) return failure_;
  if (closed_) return Status::Failure("event log " + path_ + ": append after close");
  if (std::string problem = encoder_.encode(type, position, payload, compress, buffer_); !problem.empty())
    return Status::Failure("event log " + path_ + ": " + problem);
  ++records_;
  last_position_ = position;
  // One record larger than the buffer (a big checkpoint) stays only until here.
  if (buffer_.size() >= options_.buffer_bytes) return flush();
  return Status::Ok();
}

Status LogWriter::flush() {
  if (!failure_.ok()) return failure_;
  if (closed_) return Status::Failure("event log " + path_ + ": flush after close");
  if (buffer_.empty()) return Status::Ok();
  uint64_t pending = records_ - flushed_records_;
  const std::span<const uint8_t> parts[] = {buffer_};
  Status s = write_all(parts, pending);
  // On failure the buffered records are gone from the file (cut back) and the writer
  // is stopped; keep nothing half-way.
  buffer_.clear();
  return s;
}

Status LogWriter::sync() {
  if (Status s = flush(); !s.ok()) return s;
  if (::fdatasync(fd_.get()) != 0) {
    int err = errno;
    // After a failed fdatasync the kernel may have dropped the dirty pages, so a retry
    // could report success for data that is gone: the writer stops.
    return fail("event log " + path_ + ": fdatasync up to offset " + std::to_string(file_offset_) +
                    " failed: " + std::strerror(err),
                err);
  }
  return Status::Ok();
}

Status LogWriter::close() {
  if (closed_) return Status::Ok();
  Status s = sync();
  closed_ = true;
  fd_.reset();
  return s;
}

}  // namespace ftvm::eventlog
