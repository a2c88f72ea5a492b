#include "migration/state_messages.h"

#include "common/error.h"
#include "eventlog/format.h"
#include "migration/state_transfer.h"  // kStateFormatVersion

namespace ftvm::migration {

StateManifest DecodeStateManifest(std::span<const uint8_t> payload, uint64_t memory_bytes, uint64_t disk_bytes,
                                  const std::string& peer) {
  StateManifest m;
  if (!m.ParseFromArray(payload.data(), int(payload.size())))
    throw Error("the state manifest from " + peer + " is not a valid protobuf message");
  if (m.format_version() != kStateFormatVersion)
    throw Error("the state manifest is format version " + std::to_string(m.format_version()) +
                "; this ftvm reads version " + std::to_string(kStateFormatVersion));
  if (m.memory_bytes() != memory_bytes)
    throw Error("the state manifest describes " + std::to_string(m.memory_bytes() >> 20) +
                " MiB of memory, the replica has " + std::to_string(memory_bytes >> 20));
  if (m.disk_bytes() != disk_bytes)
    throw Error("the state manifest describes a disk of " + std::to_string(m.disk_bytes()) +
                " bytes, the replica's has " + std::to_string(disk_bytes));
  return m;
}

DiskData DecodeDiskData(std::span<const uint8_t> payload, uint64_t disk_bytes) {
  if (payload.size() < 8) throw Error("a disk-data message of " + std::to_string(payload.size()) + " bytes");
  const uint64_t at = eventlog::GetLe64(payload.data());
  const auto data = payload.subspan(8);
  if (at > disk_bytes || data.size() > disk_bytes - at)
    throw Error("disk data at " + std::to_string(at) + "+" + std::to_string(data.size()) + " beyond the disk's " +
                std::to_string(disk_bytes) + " bytes");
  return {at, data};
}

}  // namespace ftvm::migration
