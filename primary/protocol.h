// The replication protocol on the logging channel.
//
//   primary                                   secondary
//   Hello (protobuf) ------------------------>
//                    <------------------------ HelloReply (protobuf: accepted or why not)
//   LogData ---------------------------------> (raw event-log records, in order)
//                    <------------------------ Ack (received and replayed offsets)
//   Heartbeat <------------------------------> Heartbeat   (when there is nothing else)
//   Bye -------------------------------------> (the End record has been sent)
//
// A secondary joining a VM that already runs (re-protection) gets, right after the
// handshake, the VM's memory and disk copied live (MemoryPages, DiskData, in rounds
// while the VM runs, then a StateManifest: migration/state_transfer.h), and a log
// that starts with a checkpoint of the vCPU, the devices and the pages written
// during the last round.
//
// LogData: u64 stream offset of the first record byte, u64 complete_below (no record
// with a smaller position will follow: the replica may run up to that position), then
// whole records as in an event-log file. Ack: u64 received offset (every byte before
// it arrived), u64 replayed offset (consumed by the replica), u64 replayed position.
// Heartbeat: u64 the sender's position (primary: its VM's; secondary: replayed).
//
// A planned handover (ftvm migrate): the secondary asks (HandoverRequest); the
// primary pauses its VM at a boundary, waits until the secondary has acknowledged
// the whole log (every held output goes out), and says Handover; the secondary
// replays to the end, claims the next arbiter generation, goes live and says
// HandoverDone; only then does the primary stop its VM. If the secondary is lost on
// the way, the arbiter decides as after any loss: whoever claims the next generation
// first runs the VM.
// All integers little-endian.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "migration/postcopy.h"
#include "migration/state_transfer.h"
#include "primary/protocol.pb.h"

namespace ftvm::replication {

// Bump on any incompatible change; both sides refuse another version by name.
inline constexpr uint32_t kProtocolVersion = 3;

enum MsgType : uint8_t {
  kHello = 1,
  kHelloReply = 2,
  kLogData = 3,
  kAck = 4,
  kHeartbeat = 5,
  kBye = 6,
  kDiskData = migration::kMsgDiskData,
  // 8 was DiskDone (protocol 1)
  kMemoryPages = migration::kMsgMemoryPages,
  kStateManifest = migration::kMsgStateManifest,
  // A planned move of the VM to the secondary's host (ftvm migrate):
  kHandoverRequest = 11,  // secondary: hand me the VM (sent once it has caught up)
  kHandover = 12,         // primary: my VM is paused, the log is complete and acknowledged
                          // (u64 position, u64 the guest's monotonic clock); take the VM
  kHandoverDone = 13,     // secondary: I hold the next arbiter generation and run the VM
  kDiskHashes = migration::kMsgDiskHashes,
  // After a post-copy handover (migration/postcopy.h):
  kPageRequest = migration::kMsgPageRequest,
  kPostcopyDone = migration::kMsgPostcopyDone,
  kCopyProgress = migration::kMsgCopyProgress,  // during a live copy
};

struct LogDataHeader {
  uint64_t offset = 0;
  uint64_t complete_below = 0;
};
inline constexpr size_t kLogDataHeaderBytes = 16;

struct Ack {
  uint64_t received_offset = 0;
  uint64_t replayed_offset = 0;
  uint64_t replayed_position = 0;
};
inline constexpr size_t kAckBytes = 24;

std::array<uint8_t, kLogDataHeaderBytes> EncodeLogDataHeader(const LogDataHeader& h);
std::optional<LogDataHeader> DecodeLogDataHeader(std::span<const uint8_t> payload);
std::array<uint8_t, kAckBytes> EncodeAck(const Ack& a);
std::optional<Ack> DecodeAck(std::span<const uint8_t> payload);
std::array<uint8_t, 8> EncodeHeartbeat(uint64_t position);
struct Handover {
  uint64_t position = 0;
  uint64_t guest_clock_ns = 0;
};
std::array<uint8_t, 16> EncodeHandover(const Handover& h);
std::optional<Handover> DecodeHandover(std::span<const uint8_t> payload);
std::optional<uint64_t> DecodeHeartbeat(std::span<const uint8_t> payload);

}  // namespace ftvm::replication
