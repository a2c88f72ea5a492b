// The MemoryPages message both live copies send (pre-copy rounds and post-copy):
// u32 n_data, u32 n_zero, then n_data + n_zero u32 page numbers (the data pages
// first), then n_data pages of 4 KiB. Little-endian. A zero page travels as its
// number only.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "transport/channel.h"
#include "vmm/guest_memory.h"

namespace ftvm::migration {

bool IsZeroPage(const uint8_t* page);

// Sends `pages` of `memory` in messages of at most 256 pages (1 MiB of data), each
// page as data or, when it reads as zeros, as a number only; pages that `holes`
// marks (holes of the memfd, known to be zeros) are not read at all. Adds to the
// counters. "" or why it failed.
struct PageSendCounters {
  uint64_t pages = 0;
  uint64_t zero_pages = 0;
  uint64_t bytes = 0;  // payload bytes on the channel
};
class PageSender {
 public:
  PageSender(const vmm::GuestMemory& memory, transport::Channel& channel, std::chrono::nanoseconds timeout)
      : memory_(memory), channel_(channel), timeout_(timeout) {}
  // Called for each page once its message is sent, with the bytes that went out
  // (null for a zero page): what the receiver now holds.
  using SentPage = std::function<void(uint64_t page, const uint8_t* contents)>;
  void on_sent(SentPage sent) { sent_ = std::move(sent); }
  // Queues one page (sent when a message fills up, or at flush()).
  std::string add(uint64_t page, bool known_zero = false);
  std::string flush();
  const PageSendCounters& counters() const { return counters_; }

 private:
  const vmm::GuestMemory& memory_;
  transport::Channel& channel_;
  std::chrono::nanoseconds timeout_;
  std::vector<uint32_t> data_, zero_;
  std::vector<uint8_t> head_, copy_;
  PageSendCounters counters_;
  SentPage sent_;
};

// A received MemoryPages message, checked: every page number is below `limit`
// and the sizes add up. Throws ftvm::Error naming what is wrong.
class PagesMessage {
 public:
  PagesMessage(std::span<const uint8_t> payload, uint64_t limit);
  uint64_t size() const { return n_data_ + n_zero_; }
  uint64_t data_pages() const { return n_data_; }
  uint64_t page(uint64_t i) const;
  // The contents of data page i (i < data_pages()).
  std::span<const uint8_t, vmm::kPageSize> data(uint64_t i) const {
    return std::span<const uint8_t, vmm::kPageSize>(payload_.data() + 8 + 4 * size() + i * vmm::kPageSize,
                                                    vmm::kPageSize);
  }

 private:
  std::span<const uint8_t> payload_;
  uint64_t n_data_ = 0, n_zero_ = 0;
};

}  // namespace ftvm::migration
