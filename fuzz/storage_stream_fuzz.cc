// Fuzz target for the disk-write stream (storage/write_stream.h) a DR replica or a
// disk move's target decodes from its source, and the source from the replica:
// write batches, acknowledgements, and the MirrorHello/MirrorHelloReply protobufs.
//
// Input: a selector byte (batch, ack, hello, hello reply), then the message.
// Invariants: a batch that decodes re-encodes (AppendRecord + SealBatch) to exactly
// its bytes, its records' data lies inside the batch and adds up with the record
// headers to its size; a failed decode says why and leaves the output untouched; an
// ack that decodes re-encodes to its bytes; protobufs re-serialize stably.
#include "eventlog/crc32c.h"
#include "eventlog/format.h"
#include "fuzz/harness.h"
#include "storage/storage.pb.h"
#include "storage/write_stream.h"

namespace {

using namespace ftvm::storage;
using ftvm::fuzz::Require;

enum Selector : uint8_t { kBatch, kAck, kHello, kHelloReply, kSelectors };

void CheckBatch(std::span<const uint8_t> batch) {
  DecodedBatch out;
  out.header.count = 0xbeef;  // a failed decode must leave this alone
  const std::string error = DecodeBatch(batch, out);
  if (!error.empty()) {
    Require(out.header.count == 0xbeef && out.records.empty(), "a failed decode touches nothing");
    return;
  }
  Require(out.records.size() == out.header.count, "the count matches the records");
  std::vector<uint8_t> again(kBatchHeaderBytes);
  for (const Record& r : out.records) {
    const bool has_data = r.kind == RecordKind::kWrite || r.kind == RecordKind::kBlock;
    Require(has_data ? r.data.size() == r.b : r.data.empty(), "data as long as the record says");
    if (has_data)
      Require(r.data.data() >= batch.data() && r.data.data() + r.data.size() <= batch.data() + batch.size(),
              "record data lies inside the batch");
    const std::span<const uint8_t> parts[] = {r.data};
    AppendRecord(again, r.kind, r.delta_us, r.a, r.b, has_data ? parts : std::span<const std::span<const uint8_t>>());
  }
  SealBatch(again, out.header);
  Require(again.size() == batch.size() && std::equal(again.begin(), again.end(), batch.begin()),
          "a decoded batch re-encodes to its bytes");
}

void CheckAck(std::span<const uint8_t> payload) {
  Ack ack;
  if (!DecodeAck(payload, ack).empty()) return;
  const std::vector<uint8_t> again = EncodeAck(ack);
  Require(again.size() == payload.size() && std::equal(again.begin(), again.end(), payload.begin()),
          "a decoded ack re-encodes to its bytes");
}

void Run(std::span<const uint8_t> input) {
  if (input.empty()) return;
  const std::span<const uint8_t> message = input.subspan(1);
  switch (input[0] % kSelectors) {
    case kBatch: CheckBatch(message); break;
    case kAck: CheckAck(message); break;
    case kHello: {
      MirrorHello hello;
      ftvm::fuzz::ParseProto(message, hello);
      break;
    }
    case kHelloReply: {
      MirrorHelloReply reply;
      ftvm::fuzz::ParseProto(message, reply);
      break;
    }
  }
}

void Repair(std::span<uint8_t> input) {
  if (input.size() < 1 + kBatchHeaderBytes || input[0] % kSelectors != kBatch) return;
  const std::span<uint8_t> batch = input.subspan(1);
  ftvm::eventlog::PutLe32(batch.data() + 4, ftvm::eventlog::Crc32c(batch.subspan(8)));
}

std::vector<uint8_t> Seed(std::minstd_rand& rng) {
  const auto selector = static_cast<uint8_t>(rng() % 8 < 5 ? uint32_t{kBatch} : rng() % kSelectors);
  std::vector<uint8_t> out;
  switch (selector) {
    case kBatch: {
      std::vector<uint8_t> batch(kBatchHeaderBytes);
      BatchHeader h;
      h.first_seq = 1 + rng() % 100;
      h.head_seq = h.first_seq + rng() % 10;
      for (int n = int(rng() % 6); n > 0; --n, ++h.count) {
        const auto kind = RecordKind(1 + rng() % 5);
        std::vector<uint8_t> data(kind == RecordKind::kWrite || kind == RecordKind::kBlock ? 512 * (rng() % 3) : 0);
        for (auto& b : data) b = static_cast<uint8_t>(rng());
        const std::span<const uint8_t> parts[] = {data};
        AppendRecord(batch, kind, rng() % 1000, 512 * (rng() % 64), data.size(), parts);
      }
      SealBatch(batch, h);
      out = std::move(batch);
      break;
    }
    case kAck: {
      Ack ack;
      ack.applied_seq = rng();
      ack.durable_seq = ack.applied_seq / 2;
      ack.state = Ack::State(rng() % 3);
      if (ack.state == Ack::State::kStopped) ack.reason = "No space left on device";
      out = EncodeAck(ack);
      break;
    }
    case kHello: {
      MirrorHello hello;
      hello.set_protocol_version(kMirrorProtocolVersion);
      hello.set_disk_bytes(rng() << 9);
      hello.set_vm_name("vm");
      const std::string s = hello.SerializeAsString();
      out.assign(s.begin(), s.end());
      break;
    }
    default: {
      MirrorHelloReply reply;
      reply.set_protocol_version(kMirrorProtocolVersion);
      reply.set_durable_seq(rng());
      reply.set_consistent(rng() % 2);
      const std::string s = reply.SerializeAsString();
      out.assign(s.begin(), s.end());
      break;
    }
  }
  out.insert(out.begin(), selector);
  return out;
}

}  // namespace

const ftvm::fuzz::Target ftvm::fuzz::kTarget = {"storage_stream", Run, Seed, Repair};
