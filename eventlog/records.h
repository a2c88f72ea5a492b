// Payload encoding of each record type. Fixed-size payloads are returned as
// std::array (no allocation on the recording hot path); decoders return nullopt when
// the payload size is wrong for the type, never reading past the span.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "eventlog/format.h"

namespace ftvm::eventlog {

using Digest = std::array<uint8_t, 32>;  // SHA-256 or equivalent 256-bit state digest

inline constexpr size_t kClockReadBytes = 8;
inline constexpr size_t kDiskCompletionBytes = 4;
inline constexpr size_t kInterruptBytes = 1;
inline constexpr size_t kEndBytes = 32;
inline constexpr size_t kIrqWaitResultBytes = 8;
inline constexpr size_t kDiskErrorBytes = 6;
inline constexpr size_t kOutputCheckBytes = 9;
// Fixed part of a Verify payload; registers and page hashes follow.
inline constexpr size_t kVerifyFixedBytes = 32 + 8 + 32 + 16 + 2 + 1;
// Largest frame virtio-net hands over without GSO (64 KiB IP packet + Ethernet header).
inline constexpr size_t kMaxPacketBytes = 65550;

// Empty when `size` is a valid payload size for `type` (after decompression),
// otherwise what is wrong, e.g. "Interrupt payload of 3 bytes, expected 1".
std::string PayloadSizeProblem(RecordType type, size_t size);
// PayloadSizeProblem, and for payloads with inner structure (Verify) whether it is
// consistent: what readers and the writer check.
std::string PayloadProblem(RecordType type, std::span<const uint8_t> payload);

// kClockRead: u64 value.
std::array<uint8_t, kClockReadBytes> EncodeClockRead(uint64_t value);
std::optional<uint64_t> DecodeClockRead(std::span<const uint8_t> payload);

// kRngData: the bytes themselves (1 .. kMaxPayloadBytes).
std::optional<std::span<const uint8_t>> DecodeRngData(std::span<const uint8_t> payload);

// kPacketRx: one Ethernet frame (1 .. kMaxPacketBytes).
std::optional<std::span<const uint8_t>> DecodePacketRx(std::span<const uint8_t> payload);

// kDiskCompletion: `count` requests of virtqueue `queue` complete at this position.
struct DiskCompletion {
  uint16_t queue = 0;
  uint16_t count = 0;
  bool operator==(const DiskCompletion&) const = default;
};
std::array<uint8_t, kDiskCompletionBytes> EncodeDiskCompletion(const DiskCompletion& c);
std::optional<DiskCompletion> DecodeDiskCompletion(std::span<const uint8_t> payload);

// kInterrupt: u8 vector.
std::array<uint8_t, kInterruptBytes> EncodeInterrupt(uint8_t vector);
std::optional<uint8_t> DecodeInterrupt(std::span<const uint8_t> payload);

// kCheckpoint: opaque blob (any size up to kMaxPayloadBytes, usually compressed by
// LogWriter::append(..., compress = true)).
std::optional<std::span<const uint8_t>> DecodeCheckpoint(std::span<const uint8_t> payload);

// kVerify: the primary's state at this position. `digest` covers the position, the
// registers, the device state and all of RAM; the components let a replica name
// what differs: the first register, the device state, or a page (by the hashes of
// the pages written since the previous verification).
struct PageHash {
  uint32_t page = 0;  // guest page number (4 KiB)
  uint16_t hash = 0;  // low 16 bits of the page's content hash: enough to point at
                      // the page (the full digest proves the difference)
  bool operator==(const PageHash&) const = default;
};
struct Verify {
  Digest digest{};
  uint64_t dirty_pages = 0;            // pages written since the previous verification
  Digest devices{};                    // SHA-256 of the serialized device state
  std::array<uint8_t, 16> memory{};    // order-independent digest of all RAM pages
  std::vector<uint8_t> regs;           // the vCPU registers, encoded by the VMM
  std::vector<PageHash> pages;         // those written pages and their hashes
  bool operator==(const Verify&) const = default;
};
std::vector<uint8_t> EncodeVerify(const Verify& v);
std::optional<Verify> DecodeVerify(std::span<const uint8_t> payload);

// kIrqWaitResult: u64.
std::array<uint8_t, kIrqWaitResultBytes> EncodeIrqWaitResult(uint64_t value);
std::optional<uint64_t> DecodeIrqWaitResult(std::span<const uint8_t> payload);

// kDiskError: the request at descriptor `head` failed on the primary's disk.
struct DiskError {
  uint16_t head = 0;
  uint32_t error = 0;  // host errno
  bool operator==(const DiskError&) const = default;
};
std::array<uint8_t, kDiskErrorBytes> EncodeDiskError(const DiskError& e);
std::optional<DiskError> DecodeDiskError(std::span<const uint8_t> payload);

// kOutputCheck (logs with LogHeader.output_checks): the VM produced an output of
// `stream` (vmm::OutputStream: 1 transmitted frames, 2 disk writes) here, and the
// stream's running hash became `hash`. The replica compares its own before it
// consumes the record, so an acknowledgement past it means the replica produced
// the same output (the strict output rule).
struct OutputCheck {
  uint8_t stream = 0;
  uint64_t hash = 0;
  bool operator==(const OutputCheck&) const = default;
};
std::array<uint8_t, kOutputCheckBytes> EncodeOutputCheck(const OutputCheck& c);
std::optional<OutputCheck> DecodeOutputCheck(std::span<const uint8_t> payload);

// kWaitCut: no payload. The guest idled at exit `position` (FTVM_IRQ_WAIT, _WAIT_IF,
// HLT) and the primary ended the wait with no interrupt deliverable, to reach a
// boundary for a VMM task (a migration round, a snapshot); the guest kit's wait is
// allowed to return spuriously. The replica ends its wait there too.

// kGuestReset: no payload. The primary reset its hung guest in place right after
// exit `position` (vmm::Machine::reset_guest); the replica resets there too.

// kEnd: final state digest.
std::array<uint8_t, kEndBytes> EncodeEnd(const Digest& final_digest);
std::optional<Digest> DecodeEnd(std::span<const uint8_t> payload);

}  // namespace ftvm::eventlog
