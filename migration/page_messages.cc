#include "migration/page_messages.h"

#include <cstring>

#include "common/error.h"
#include "eventlog/format.h"
#include "migration/state_transfer.h"

namespace ftvm::migration {
namespace {
constexpr uint64_t kPage = vmm::kPageSize;
constexpr size_t kPagesPerMessage = 256;  // 1 MiB of page data
}  // namespace

bool IsZeroPage(const uint8_t* p) {
  const auto* w = reinterpret_cast<const uint64_t*>(p);
  for (size_t i = 0; i < kPage / 8; ++i)
    if (w[i] != 0) return false;
  return true;
}

std::string PageSender::add(uint64_t page, bool known_zero) {
  (known_zero || IsZeroPage(memory_.ptr(page * kPage, kPage)) ? zero_ : data_).push_back(uint32_t(page));
  return data_.size() + zero_.size() == kPagesPerMessage ? flush() : "";
}

std::string PageSender::flush() {
  if (data_.empty() && zero_.empty()) return "";
  head_.resize(8 + 4 * (data_.size() + zero_.size()));
  eventlog::PutLe32(head_.data(), uint32_t(data_.size()));
  eventlog::PutLe32(head_.data() + 4, uint32_t(zero_.size()));
  size_t at = 8;
  for (uint32_t p : data_) eventlog::PutLe32(head_.data() + at, p), at += 4;
  for (uint32_t p : zero_) eventlog::PutLe32(head_.data() + at, p), at += 4;
  // Copied out of guest RAM first: the guest may be writing these pages (pre-copy),
  // and the frame's CRC must cover exactly the bytes that go out.
  copy_.resize(data_.size() * kPage);
  for (size_t i = 0; i < data_.size(); ++i)
    std::memcpy(&copy_[i * kPage], memory_.ptr(uint64_t(data_[i]) * kPage, kPage), kPage);
  const std::span<const uint8_t> parts[] = {{head_.data(), head_.size()}, {copy_.data(), copy_.size()}};
  transport::SendResult s = channel_.send(kMsgMemoryPages, parts, timeout_);
  if (!s.ok()) return "sending memory pages: " + s.message;
  if (sent_) {
    for (size_t i = 0; i < data_.size(); ++i) sent_(data_[i], &copy_[i * kPage]);
    for (uint32_t p : zero_) sent_(p, nullptr);
  }
  counters_.pages += data_.size() + zero_.size();
  counters_.zero_pages += zero_.size();
  counters_.bytes += head_.size() + copy_.size();
  data_.clear();
  zero_.clear();
  return "";
}

PagesMessage::PagesMessage(std::span<const uint8_t> payload, uint64_t limit) : payload_(payload) {
  if (payload.size() < 8) throw Error("a memory-pages message of " + std::to_string(payload.size()) + " bytes");
  n_data_ = eventlog::GetLe32(payload.data());
  n_zero_ = eventlog::GetLe32(payload.data() + 4);
  const uint64_t want = 8 + 4 * (n_data_ + n_zero_) + n_data_ * kPage;
  if (payload.size() != want)
    throw Error("a memory-pages message for " + std::to_string(n_data_) + "+" + std::to_string(n_zero_) +
                " pages has " + std::to_string(payload.size()) + " bytes, not " + std::to_string(want));
  for (uint64_t i = 0; i < size(); ++i)
    if (page(i) >= limit)
      throw Error("memory page " + std::to_string(page(i)) + " is beyond the replica's " +
                  std::to_string((limit * kPage) >> 20) + " MiB");
}

uint64_t PagesMessage::page(uint64_t i) const { return eventlog::GetLe32(payload_.data() + 8 + 4 * i); }

}  // namespace ftvm::migration
