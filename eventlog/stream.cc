#include "eventlog/stream.h"

#include <algorithm>
#include <cstring>

namespace ftvm::eventlog {

void ByteStream::append(std::span<const uint8_t> bytes) {
  if (bytes.empty()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    chunks_.emplace_back(bytes.begin(), bytes.end());
    size_ += bytes.size();
  }
  cv_.notify_all();
}

void ByteStream::set_complete_below(uint64_t position) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (position <= complete_below_) return;
    complete_below_ = position;
  }
  cv_.notify_all();
}

void ByteStream::finish(std::string why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;
    finished_ = true;
    why_ = std::move(why);
  }
  cv_.notify_all();
}

size_t ByteStream::read(uint64_t offset, size_t n, uint8_t* out) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (offset < base_ || offset >= size_) return 0;
  size_t copied = 0;
  uint64_t chunk_start = base_;
  for (const std::vector<uint8_t>& c : chunks_) {
    const uint64_t chunk_end = chunk_start + c.size();
    if (offset + copied < chunk_end && copied < n) {
      const size_t from = size_t(offset + copied - chunk_start);
      const size_t take = std::min(n - copied, c.size() - from);
      std::memcpy(out + copied, c.data() + from, take);
      copied += take;
    }
    if (copied == n) break;
    chunk_start = chunk_end;
  }
  return copied;
}

uint64_t ByteStream::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return size_;
}

uint64_t ByteStream::complete_below() const {
  std::lock_guard<std::mutex> lock(mu_);
  return complete_below_;
}

bool ByteStream::finished() const {
  std::lock_guard<std::mutex> lock(mu_);
  return finished_;
}

std::string ByteStream::finish_reason() const {
  std::lock_guard<std::mutex> lock(mu_);
  return why_;
}

void ByteStream::release_before(uint64_t offset) {
  std::lock_guard<std::mutex> lock(mu_);
  while (!chunks_.empty() && base_ + chunks_.front().size() <= offset) {
    base_ += chunks_.front().size();
    chunks_.pop_front();
  }
}

void ByteStream::wait(uint64_t offset, uint64_t position, std::chrono::nanoseconds timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t interrupts = interrupts_;
  cv_.wait_for(lock, timeout, [&] {
    return size_ > offset || complete_below_ > position || finished_ || interrupts_ != interrupts;
  });
}

void ByteStream::interrupt() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++interrupts_;
  }
  cv_.notify_all();
}

}  // namespace ftvm::eventlog
