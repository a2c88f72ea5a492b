// Fuzz target for what a live copy's receiver (a joining secondary, ftvm migrate)
// decodes from the sender: MemoryPages (migration/page_messages.h), DiskData and the
// StateManifest with the event-log header inside it (migration/state_messages.h).
//
// Input: a selector byte, then the message. The replica has 64 MiB of RAM and a
// 1 MiB disk.
// Invariants: every page number a pages message yields lies inside the replica's
// memory and its data pages inside the payload, whose size is exactly what the
// counts say; disk data lies inside the disk and the payload; a manifest accepted is
// of this format version and these sizes and re-serializes stably; its log header
// either reads or is refused with ftvm::Error.
#include "common/error.h"
#include "eventlog/format.h"
#include "eventlog/reader.h"
#include "fuzz/harness.h"
#include "migration/page_messages.h"
#include "migration/state_messages.h"
#include "migration/state_transfer.h"

namespace {

using namespace ftvm;
using namespace ftvm::migration;
using fuzz::Require;

constexpr uint64_t kMemoryBytes = 64u << 20;
constexpr uint64_t kMemoryPages = kMemoryBytes / vmm::kPageSize;
constexpr uint64_t kDiskBytes = 1u << 20;

enum Selector : uint8_t { kPages, kDisk, kManifest, kSelectors };

bool Inside(std::span<const uint8_t> part, std::span<const uint8_t> whole) {
  return part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size();
}

void CheckPages(std::span<const uint8_t> payload) {
  try {
    const PagesMessage msg(payload, kMemoryPages);
    Require(payload.size() == 8 + 4 * msg.size() + msg.data_pages() * vmm::kPageSize, "the sizes add up");
    uint64_t sum = 0;
    for (uint64_t i = 0; i < msg.size(); ++i) {
      Require(msg.page(i) < kMemoryPages, "every page lies inside memory");
      if (i < msg.data_pages()) {
        Require(Inside(msg.data(i), payload), "a data page lies inside the payload");
        sum += msg.data(i)[0] + msg.data(i)[vmm::kPageSize - 1];
      }
    }
    (void)sum;
  } catch (const Error&) {
  }
}

void CheckDisk(std::span<const uint8_t> payload) {
  try {
    const DiskData d = DecodeDiskData(payload, kDiskBytes);
    Require(d.offset <= kDiskBytes && d.bytes.size() <= kDiskBytes - d.offset, "disk data lies inside the disk");
    Require(Inside(d.bytes, payload) && d.bytes.size() + 8 == payload.size(), "disk data is the payload's rest");
    Require(d.offset == eventlog::GetLe64(payload.data()), "the offset comes first");
  } catch (const Error&) {
  }
}

void CheckManifest(std::span<const uint8_t> payload) {
  StateManifest parsed;
  fuzz::ParseProto(payload, parsed);
  try {
    const StateManifest m = DecodeStateManifest(payload, kMemoryBytes, kDiskBytes, "fuzz");
    Require(m.format_version() == kStateFormatVersion && m.memory_bytes() == kMemoryBytes &&
                m.disk_bytes() == kDiskBytes,
            "an accepted manifest is for this replica");
    const std::string& header = m.log_header();
    try {
      const eventlog::LogReader reader = eventlog::LogReader::OpenBuffer(
          {reinterpret_cast<const uint8_t*>(header.data()), header.size()}, "fuzz");
      Require(reader.first_record_offset() <= header.size(), "the log header lies inside the manifest");
    } catch (const Error&) {
    }
  } catch (const Error&) {
  }
}

void Run(std::span<const uint8_t> input) {
  if (input.empty()) return;
  const std::span<const uint8_t> message = input.subspan(1);
  switch (input[0] % kSelectors) {
    case kPages: CheckPages(message); break;
    case kDisk: CheckDisk(message); break;
    case kManifest: CheckManifest(message); break;
  }
}

std::vector<uint8_t> Seed(std::minstd_rand& rng) {
  const auto selector = static_cast<uint8_t>(rng() % kSelectors);
  std::vector<uint8_t> out{selector};
  switch (selector) {
    case kPages: {
      const uint32_t n_data = rng() % 3, n_zero = rng() % 5;
      fuzz::AppendLe(out, n_data, 4);
      fuzz::AppendLe(out, n_zero, 4);
      for (uint32_t i = 0; i < n_data + n_zero; ++i) fuzz::AppendLe(out, rng() % kMemoryPages, 4);
      for (uint32_t i = 0; i < n_data; ++i) out.insert(out.end(), vmm::kPageSize, static_cast<uint8_t>(rng()));
      break;
    }
    case kDisk: {
      const uint64_t at = 512 * (rng() % (kDiskBytes / 512));
      fuzz::AppendLe(out, at, 8);
      out.insert(out.end(), std::min<uint64_t>(kDiskBytes - at, 512 * (rng() % 4)), static_cast<uint8_t>(rng()));
      break;
    }
    default: {
      eventlog::LogHeader header;
      header.mutable_vm()->set_app("fuzz");
      header.set_start_position(rng() % 1000);
      const std::vector<uint8_t> header_bytes = eventlog::EncodeFileHeader(header);
      StateManifest m;
      m.set_format_version(kStateFormatVersion);
      m.set_memory_bytes(rng() % 8 == 0 ? kMemoryBytes * 2 : kMemoryBytes);
      m.set_disk_bytes(kDiskBytes);
      m.set_rounds(rng() % 5);
      m.set_log_header(header_bytes.data(), header_bytes.size());
      m.set_postcopy(rng() % 2);
      const std::string s = m.SerializeAsString();
      out.insert(out.end(), s.begin(), s.end());
      break;
    }
  }
  return out;
}

}  // namespace

const ftvm::fuzz::Target ftvm::fuzz::kTarget = {"migration", Run, Seed, nullptr};
