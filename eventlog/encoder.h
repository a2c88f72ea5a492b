// Turns records into their log bytes: the checks every producer makes and the
// optional zstd compression. The file writer and the logging-channel streamer both
// encode through this, so a record is the same bytes in a file and on the wire.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "eventlog/format.h"

struct ZSTD_CCtx_s;

namespace ftvm::eventlog {

class RecordEncoder {
 public:
  explicit RecordEncoder(int zstd_level = 3);
  ~RecordEncoder();
  RecordEncoder(RecordEncoder&&) noexcept;
  RecordEncoder& operator=(RecordEncoder&&) noexcept;

  // Appends the whole record (header, stored payload, CRC) to `out`. With
  // `compress`, the payload is stored zstd-compressed when that makes it smaller.
  // Returns "" or what is wrong with the caller's record (unknown type, a position
  // going backwards, a payload too large or invalid for its type), appending
  // nothing then.
  std::string encode(RecordType type, uint64_t position, std::span<const uint8_t> payload, bool compress,
                     std::vector<uint8_t>& out);
  uint64_t last_position() const { return last_position_; }
  uint64_t records() const { return records_; }

 private:
  struct CctxDeleter {
    void operator()(ZSTD_CCtx_s* c) const;
  };
  int level_;
  std::unique_ptr<ZSTD_CCtx_s, CctxDeleter> cctx_;
  std::vector<uint8_t> scratch_;
  // The last Checkpoint's payload (kFlagDelta), as the reader will have it.
  std::vector<uint8_t> delta_base_;
  bool have_delta_base_ = false;
  uint64_t last_position_ = 0;
  uint64_t records_ = 0;
};

// Where a recorder's records go: an event-log file (LogWriter) or a logging channel.
class RecordSink {
 public:
  virtual ~RecordSink() = default;
  // Appends one record at `position` (see LogWriter::append for the contract).
  virtual Status append(RecordType type, uint64_t position, std::span<const uint8_t> payload,
                        bool compress = false) = 0;
  // Hands what is buffered on to its destination.
  virtual Status flush() = 0;
  // Flushes and ends the log (no more appends).
  virtual Status close() = 0;
  // Log bytes appended so far, header included: the offset the next record will
  // start at, which is also what a secondary acknowledges.
  virtual uint64_t size() const = 0;
  // The VM reached `position` (after an exit): no record below it will follow. A
  // stream tells its reader, so a replica may run up to there; a file ignores it.
  virtual void note_position(uint64_t /*position*/) {}
};

}  // namespace ftvm::eventlog
