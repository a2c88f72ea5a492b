// Reads an event log from a file or from memory, validating everything: the fixed
// header, the header protobuf, and for each record its length, CRC, type, flags,
// payload size, position order and (for compressed payloads) decompression.
//
// Open* throw ftvm::Error for a log that cannot be read at all (not a log, wrong
// version, bad header CRC, truncated header). next() returns explicit results: a
// record, the clean end, or an error naming the byte offset of the bad record. Whatever
// the input, nothing outside the file's data or the caller's buffer is read, and no
// allocation is larger than kMaxPayloadBytes plus a read chunk.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/unique_fd.h"
#include "eventlog/eventlog.pb.h"
#include "eventlog/format.h"
#include "eventlog/stream.h"

struct ZSTD_DCtx_s;

namespace ftvm::eventlog {

struct Record {
  RecordType type = RecordType::kEnd;
  uint8_t flags = 0;       // as stored (kFlagZstd if the payload was compressed)
  uint64_t position = 0;
  uint64_t offset = 0;     // where the record starts in the log
  uint64_t stored_bytes = 0;  // bytes the record takes in the log, overhead included
  // Decompressed payload. Points into the reader's buffers (or the caller's buffer
  // for OpenBuffer): valid until the next call to next(). Copy it to keep it.
  std::span<const uint8_t> payload;
};

class LogReader {
 public:
  // Throws ftvm::Error naming `path`, e.g. "event log /a.log: not an ftvm event log
  // (bad magic)" or "... written by format version 2; this ftvm reads version 3".
  static LogReader OpenFile(const std::string& path);
  // Reads a log held in memory. `bytes` is borrowed and must outlive the reader.
  // `name` is used in messages.
  static LogReader OpenBuffer(std::span<const uint8_t> bytes, std::string name = "<buffer>");
  // Reads a log as it arrives (the header must be there already). next() returns
  // kEnd whenever it has read every whole record received so far (part of one may
  // be there too, until the stream finishes); a later call may find more. Bytes
  // already read are released from the stream.
  static LogReader OpenStream(std::shared_ptr<ByteStream> stream, std::string name);

  LogReader(LogReader&&) noexcept;
  LogReader& operator=(LogReader&&) noexcept;
  LogReader(const LogReader&) = delete;
  LogReader& operator=(const LogReader&) = delete;
  ~LogReader();

  const LogHeader& header() const { return header_; }
  const std::string& name() const { return name_; }

  // Reads the next record into `out`. kEnd when the data ends exactly after a whole
  // record (for a file that is still growing, a later call may find more). Errors are
  // sticky: once next() fails it keeps returning that failure. A record after an End
  // record is an error (kTrailingData).
  ReadResult next(Record& out);

  // Offset of the first record and of the next record to read. After an error or the
  // end, offset() is the end of the last good record: the length to truncate a
  // crashed log to.
  uint64_t first_record_offset() const { return first_record_offset_; }
  uint64_t offset() const { return offset_; }
  uint64_t records_read() const { return records_read_; }
  // Where the bytes the last next() looked at end: after kEnd on a live stream, the
  // next record needs bytes beyond this offset (wait for them there).
  uint64_t data_end() const { return data_end_; }
  uint64_t last_position() const { return last_position_; }
  bool saw_end_record() const { return saw_end_; }

 private:
  struct DctxDeleter {
    void operator()(ZSTD_DCtx_s* d) const;
  };
  // Up to `n` bytes at `off` (fewer only at the end of the data); valid until the next
  // fetch. Sets `err` (errno) on a read failure.
  std::span<const uint8_t> fetch(uint64_t off, size_t n, int& err);
  void parse_header();
  LogReader() = default;

  std::string name_;
  LogHeader header_;
  // Memory source.
  std::span<const uint8_t> memory_;
  // Stream source: copied into the window like the file.
  std::shared_ptr<ByteStream> stream_;
  // File source: a window of the file, refilled with large preads.
  UniqueFd fd_;
  std::vector<uint8_t> window_;
  uint64_t window_start_ = 0;
  size_t window_len_ = 0;

  std::vector<uint8_t> decompressed_;
  // The last Checkpoint's payload: what the next one may be compressed against.
  std::vector<uint8_t> delta_base_;
  bool have_delta_base_ = false;
  std::unique_ptr<ZSTD_DCtx_s, DctxDeleter> dctx_;
  uint64_t first_record_offset_ = 0;
  uint64_t offset_ = 0;
  uint64_t data_end_ = 0;
  uint64_t records_read_ = 0;
  uint64_t last_position_ = 0;
  bool saw_end_ = false;
  ReadResult failure_;  // code kRecord while no failure
};

// What RecoverTruncatedTail found.
struct Recovery {
  uint64_t valid_bytes = 0;    // the log is whole up to here (header + whole records)
  uint64_t total_bytes = 0;    // size before recovery
  uint64_t records = 0;        // whole records kept
  uint64_t last_position = 0;  // position of the last record kept
  bool saw_end_record = false;
  bool truncated = false;      // the file was cut to valid_bytes
  // Why reading stopped before total_bytes (the reader's message naming the offset);
  // empty for an intact log.
  std::string reason;
  uint64_t dropped_bytes() const { return total_bytes - valid_bytes; }
};

// For a log whose writer crashed: reads records until the first one that is
// incomplete or invalid and reports where the last whole valid record ends.
// Everything from the first bad record on is dropped, even if valid-looking records
// follow: replay cannot skip an event, so nothing after a lost one can be used. With
// `truncate_file`, the file is cut there and fdatasync'ed. Throws ftvm::Error if the
// file header itself is unreadable (nothing to recover).
Recovery RecoverTruncatedTail(const std::string& path, bool truncate_file);
Recovery RecoverTruncatedTail(std::span<const uint8_t> bytes);

}  // namespace ftvm::eventlog
