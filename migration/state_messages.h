// The receiver's decoders of the live copy's DiskData and StateManifest messages
// (migration/state_transfer.h describes them; MemoryPages is PagesMessage in
// migration/page_messages.h). StateReceiver uses them, and so does
// fuzz/migration_fuzz.cc. Each throws ftvm::Error naming what is wrong.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "migration/migration.pb.h"

namespace ftvm::migration {

// A StateManifest for a replica of `memory_bytes` of RAM and a disk of `disk_bytes`:
// it parses, is of this format version, and describes those sizes. `peer` names the
// sender in messages.
StateManifest DecodeStateManifest(std::span<const uint8_t> payload, uint64_t memory_bytes, uint64_t disk_bytes,
                                  const std::string& peer);

// A DiskData message for a disk of `disk_bytes`: u64 byte offset, then the bytes,
// which must lie inside the disk.
struct DiskData {
  uint64_t offset = 0;
  std::span<const uint8_t> bytes;  // points into the payload
};
DiskData DecodeDiskData(std::span<const uint8_t> payload, uint64_t disk_bytes);

}  // namespace ftvm::migration
