// Fuzz target for DR checkpoints (storage/dr_checkpoint.h): the kMsgCheckpoint
// message a replica takes from its source, and the file DIR/checkpoint it keeps
// (that message, then the undo journal) as dr-start --from-checkpoint and a
// restarted replica read it back (ParseCheckpointFile, LoadCheckpoint's reading);
// then the state in it: a zstd frame of a storage.DrCheckpoint holding a
// vmm.snapshot.Checkpoint.
//
// Input: a selector byte (message, file), then the bytes.
// Invariants: a message that decodes re-encodes (EncodeCheckpoint) to exactly its
// bytes and its state lies inside it; a failed decode says why and leaves the
// outputs untouched. A file that loads is read only inside its size; its header and
// state are DecodeCheckpoint's of its head; its undo records follow each other from
// the end of the state, each within the record size limit with a CRC that checks,
// and re-encoded they and the head give back the file up to a torn tail, which is
// either too short for a record or all zeros. A state that decompresses is exactly
// as long as the header says; protobufs re-serialize stably.
#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "eventlog/crc32c.h"
#include "eventlog/format.h"
#include "fuzz/harness.h"
#include "storage/dr_checkpoint.h"
#include "storage/storage.pb.h"
#include "vmm/snapshot.pb.h"

namespace {

using namespace ftvm::storage;
using ftvm::eventlog::GetLe32;
using ftvm::eventlog::GetLe64;
using ftvm::eventlog::PutLe32;
using ftvm::eventlog::PutLe64;
using ftvm::fuzz::Require;

enum Selector : uint8_t { kMessage, kFile, kSelectors };

constexpr uint64_t kMaxUndoRecord = 1u << 20;  // dr_checkpoint.cc's
// What the harness lets a state decompress to (a real one is the VM's RAM, far
// larger, and DecompressState allocates what the header says).
constexpr uint64_t kMaxRawState = 4u << 20;

bool Same(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

void CheckState(const CheckpointHeader& h, std::span<const uint8_t> stored) {
  if (h.raw_bytes > kMaxRawState) return;
  std::vector<uint8_t> raw;
  try {
    raw = DecompressState(stored, h.raw_bytes);
  } catch (const ftvm::Error&) {
    return;
  }
  Require(raw.size() == h.raw_bytes, "the state decompresses to the size its header says");
  DrCheckpoint c;
  if (!ftvm::fuzz::ParseProto(raw, c)) return;
  ftvm::vmm::snapshot::Checkpoint cp;
  ftvm::fuzz::ParseProto(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(c.checkpoint().data()), c.checkpoint().size()), cp);
}

// The message: DecodeCheckpoint; returns whether it decoded.
bool CheckMessage(std::span<const uint8_t> bytes, CheckpointHeader& h, std::span<const uint8_t>& state) {
  static const uint8_t kMarker[] = {7};
  h.seq = 0xbeef;
  state = kMarker;
  if (!DecodeCheckpoint(bytes, h, state).empty()) {
    Require(h.seq == 0xbeef && h.version == kCheckpointFormatVersion && state.data() == kMarker,
            "a failed decode touches nothing");
    return false;
  }
  Require(state.data() == bytes.data() + kCheckpointHeaderBytes && state.size() == h.state_bytes &&
              kCheckpointHeaderBytes + state.size() <= bytes.size(),
          "the state lies inside the message, after the header");
  // The message is the head: whatever follows (the undo journal) is not part of it.
  const std::span<const uint8_t> head = bytes.first(kCheckpointHeaderBytes + state.size());
  Require(Same(EncodeCheckpoint(h, state), head), "a decoded checkpoint re-encodes to its bytes");
  return true;
}

void CheckFile(std::span<const uint8_t> file) {
  LoadedCheckpoint c;
  try {
    c = ParseCheckpointFile(
        [file](uint8_t* p, size_t n, uint64_t at, const std::string&) {
          Require(at <= file.size() && n <= file.size() - at, "reads stay inside the file");
          if (n != 0) std::memcpy(p, file.data() + at, n);
        },
        file.size(), "checkpoint");
  } catch (const ftvm::Error&) {
    return;
  }
  Require(c.file_bytes == file.size(), "the file's size");
  CheckpointHeader h;
  std::span<const uint8_t> state;
  Require(CheckMessage(file, h, state), "a loaded file's head decodes as a message");
  Require(h.seq == c.header.seq && h.bytes == c.header.bytes &&
              h.wall_ns == c.header.wall_ns && h.raw_bytes == c.header.raw_bytes &&
              h.state_bytes == c.header.state_bytes && Same(c.state, state),
          "the loaded header and state are the head's");
  std::vector<uint8_t> again = EncodeCheckpoint(c.header, c.state);
  for (const LoadedCheckpoint::Undo& u : c.undo) {
    Require(u.file_offset == again.size() + kUndoRecordHeaderBytes, "undo records follow each other");
    Require(u.length <= kMaxUndoRecord && u.file_offset + u.length <= file.size(), "an undo record inside the file and the limit");
    const size_t at = again.size();
    again.resize(at + kUndoRecordHeaderBytes);
    PutLe32(again.data() + at + 4, u.length);
    PutLe64(again.data() + at + 8, u.disk_offset);
    again.insert(again.end(), file.begin() + long(u.file_offset), file.begin() + long(u.file_offset + u.length));
    PutLe32(again.data() + at, ftvm::eventlog::Crc32c(std::span<const uint8_t>(again).subspan(at + 4)));
  }
  Require(again.size() + c.torn_tail_bytes == file.size(), "records and the torn tail make up the file");
  Require(Same(again, file.first(again.size())), "a loaded file re-encodes to its bytes up to the torn tail");
  if (c.torn_tail_bytes >= kUndoRecordHeaderBytes) {
    const std::span<const uint8_t> tail = file.subspan(again.size());
    const uint64_t len = GetLe32(tail.data() + 4);
    Require(kUndoRecordHeaderBytes + len > tail.size() || std::all_of(tail.begin(), tail.end(), [](uint8_t b) { return b == 0; }),
            "a torn tail is a record cut short or zeros");
  }
  CheckState(c.header, c.state);
}

void Run(std::span<const uint8_t> input) {
  if (input.empty()) return;
  const std::span<const uint8_t> bytes = input.subspan(1);
  switch (input[0] % kSelectors) {
    case kMessage: {
      CheckpointHeader h;
      std::span<const uint8_t> state;
      if (CheckMessage(bytes, h, state)) CheckState(h, state);
      break;
    }
    case kFile: CheckFile(bytes); break;
  }
}

void Repair(std::span<uint8_t> input) {
  if (input.size() < 1 + kCheckpointHeaderBytes) return;
  const std::span<uint8_t> file = input.subspan(1);
  const uint64_t state_bytes = GetLe64(file.data() + 48);
  if (state_bytes > file.size() - kCheckpointHeaderBytes) return;
  PutLe32(file.data() + 12, ftvm::eventlog::Crc32c(file.subspan(16, kCheckpointHeaderBytes - 16 + state_bytes)));
  if (input[0] % kSelectors != kFile) return;
  for (uint64_t at = kCheckpointHeaderBytes + state_bytes; file.size() - at >= kUndoRecordHeaderBytes;) {
    const uint64_t len = GetLe32(file.data() + at + 4);
    if (len > kMaxUndoRecord || kUndoRecordHeaderBytes + len > file.size() - at) break;
    PutLe32(file.data() + at, ftvm::eventlog::Crc32c(file.subspan(at + 4, kUndoRecordHeaderBytes - 4 + len)));
    at += kUndoRecordHeaderBytes + len;
  }
}

std::vector<uint8_t> Seed(std::minstd_rand& rng) {
  const auto selector = static_cast<uint8_t>(rng() % kSelectors);
  ftvm::vmm::snapshot::Checkpoint cp;
  cp.set_position(rng() % 100000);
  DrCheckpoint c;
  c.set_format_version(1);
  c.set_memory_bytes(uint64_t(rng() % 64 + 1) << 20);
  c.set_app(rng() % 2 ? "mail" : "counter");
  c.set_guest_clock_ns(rng());
  c.set_disk_seq(rng() % 1000);
  c.set_checkpoint(cp.SerializeAsString());
  const std::string raw = c.SerializeAsString();
  const std::vector<uint8_t> stored =
      CompressState(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(raw.data()), raw.size()));
  CheckpointHeader h;
  h.seq = c.disk_seq();
  h.bytes = h.seq * 4096;
  h.wall_ns = rng();
  h.raw_bytes = raw.size();
  std::vector<uint8_t> out = EncodeCheckpoint(h, stored);
  if (selector == kFile) {
    for (int n = int(rng() % 4); n > 0; --n) {
      const uint32_t len = 4096 * (1 + rng() % 2);
      const size_t at = out.size();
      out.resize(at + kUndoRecordHeaderBytes + len);
      for (size_t i = at + kUndoRecordHeaderBytes; i < out.size(); ++i) out[i] = uint8_t(rng() % 4 == 0 ? rng() : 0);
      PutLe32(out.data() + at + 4, len);
      PutLe64(out.data() + at + 8, 4096 * uint64_t(rng() % 256));
      PutLe32(out.data() + at, ftvm::eventlog::Crc32c(std::span<const uint8_t>(out).subspan(at + 4)));
    }
    if (rng() % 4 == 0) out.resize(out.size() + rng() % 40, 0);  // a torn tail
  }
  out.insert(out.begin(), selector);
  return out;
}

}  // namespace

const ftvm::fuzz::Target ftvm::fuzz::kTarget = {"dr_checkpoint", Run, Seed, Repair};
