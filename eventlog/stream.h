// The bytes of an event log arriving over a logging channel.
//
// A receiver thread appends them (the file header first, then whole records, never
// a part of one); LogReader::OpenStream reads them as they come, and the bytes it
// has read can be dropped. The producer also says how far its log is complete
// (no record below a position will be appended any more) and, finally, that the
// stream has ended: cleanly, or because the primary is gone.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <span>
#include <string>
#include <vector>

namespace ftvm::eventlog {

class ByteStream {
 public:
  // ---- Producer.
  void append(std::span<const uint8_t> bytes);
  void set_complete_below(uint64_t position);
  // No more bytes will come; `why` is kept for messages.
  void finish(std::string why);

  // ---- Consumer.
  // Copies up to `n` bytes from `offset` into `out`; returns how many were there.
  // Offsets before release_before() are gone (returns 0).
  size_t read(uint64_t offset, size_t n, uint8_t* out) const;
  uint64_t size() const;
  uint64_t complete_below() const;
  bool finished() const;
  std::string finish_reason() const;
  // The consumer no longer needs bytes before `offset`.
  void release_before(uint64_t offset);
  // Blocks until there are bytes beyond `offset`, the log is complete beyond
  // `position`, the stream finished, interrupt() was called, or `timeout` passed.
  void wait(uint64_t offset, uint64_t position, std::chrono::nanoseconds timeout) const;
  // Wakes every wait() (a stop request).
  void interrupt();

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::deque<std::vector<uint8_t>> chunks_;
  uint64_t base_ = 0;  // offset of chunks_.front()
  uint64_t size_ = 0;  // offset of the end
  uint64_t complete_below_ = 0;
  bool finished_ = false;
  std::string why_;
  uint64_t interrupts_ = 0;
};

}  // namespace ftvm::eventlog
