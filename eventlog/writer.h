// Appends records to an event-log file.
//
// Records are buffered in userspace and written in large chunks (one write per
// `buffer_bytes`, default 1 MiB), because the recorder appends one small record per
// guest exit. flush() hands the buffer to the kernel; sync() also makes it durable
// (fdatasync), which is what the output rule waits for when the log is on disk.
//
// Failures are explicit results, never exceptions, once the file is open. The first
// write failure (ENOSPC, EIO, ...) stops the writer: the file is cut back to the last
// whole record the kernel accepted, the Status names the path, the offset and the
// cause, and every later append/flush/sync returns that same failure, so nothing is
// lost silently.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/unique_fd.h"
#include "eventlog/encoder.h"
#include "eventlog/eventlog.pb.h"
#include "eventlog/format.h"

namespace ftvm::eventlog {

struct WriterOptions {
  bool overwrite = false;          // false: O_EXCL, refuse to clobber an existing log
  size_t buffer_bytes = 1 << 20;   // userspace buffer; records larger go straight out
  int zstd_level = 3;              // fast, and plenty for mostly-zero memory pages
};

class LogWriter final : public RecordSink {
 public:
  // Creates `path` and writes the file header. format_version is set to
  // kFormatVersion; ftvm_version and created_unix_ns are filled in when empty/zero.
  // Throws ftvm::Error naming the path on any failure (exists, permission, ENOSPC).
  static LogWriter Create(const std::string& path, LogHeader header,
                          const WriterOptions& options = {});

  LogWriter(LogWriter&&) noexcept;
  LogWriter& operator=(LogWriter&&) noexcept;
  LogWriter(const LogWriter&) = delete;
  LogWriter& operator=(const LogWriter&) = delete;
  // Flushes what is buffered (a failure is logged, not thrown); no fdatasync.
  ~LogWriter() override;

  // Appends one record. `position` must not be smaller than the previous record's.
  // With `compress`, the payload is stored zstd-compressed when that makes it
  // smaller, otherwise as is. Errors that are the caller's (position backwards, a
  // payload size invalid for the type or above kMaxPayloadBytes) leave the writer
  // usable and write nothing; a write failure stops it (see above).
  Status append(RecordType type, uint64_t position, std::span<const uint8_t> payload,
                bool compress = false) override;
  // Writes the buffered records to the file.
  Status flush() override;
  // flush() then fdatasync(); after success every appended record is durable.
  Status sync();
  // sync() then close the file. Further calls fail.
  Status close() override;

  const std::string& path() const { return path_; }
  // Log bytes appended so far, header included (written or still buffered).
  uint64_t size() const override { return file_offset_ + buffer_.size(); }
  // Bytes handed to the kernel: the file is a valid log up to here.
  uint64_t flushed_bytes() const { return file_offset_; }
  uint64_t records() const { return records_; }
  uint64_t flushed_records() const { return flushed_records_; }
  uint64_t last_position() const { return last_position_; }
  bool failed() const { return !failure_.ok(); }

 private:
  LogWriter() = default;
  Status write_all(std::span<const std::span<const uint8_t>> chunks, uint64_t records_in_chunks);
  Status fail(std::string message, int err);

  std::string path_;
  UniqueFd fd_;
  WriterOptions options_;
  std::vector<uint8_t> buffer_;
  RecordEncoder encoder_;
  uint64_t file_offset_ = 0;
  uint64_t records_ = 0;
  uint64_t flushed_records_ = 0;
  uint64_t last_position_ = 0;
  Status failure_ = Status::Ok();  // the first failure; sticky
  bool closed_ = false;
};

}  // namespace ftvm::eventlog
