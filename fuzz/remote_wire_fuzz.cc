// Fuzz target for the remote disk protocol (storage/remote_wire.h) a disk server
// decodes from a VMM whose disk moved to it, and the VMM from the server: requests,
// replies, and the RemoteDiskOpen/RemoteDiskOpenReply protobufs.
//
// Input: a selector byte, then the message.
// Invariants: a request or reply that decodes re-encodes to exactly its bytes, its
// data lies inside the message, a request is at most kRemoteMaxBytes and carries data
// only for a write; a failed decode says why and leaves the output untouched;
// protobufs re-serialize stably.
#include <algorithm>

#include "eventlog/crc32c.h"
#include "eventlog/format.h"
#include "fuzz/harness.h"
#include "storage/remote_wire.h"
#include "storage/storage.pb.h"

namespace {

using namespace ftvm::storage;
using ftvm::fuzz::Require;

enum Selector : uint8_t { kRequest, kReply, kOpen, kOpenReply, kSelectors };

bool Inside(std::span<const uint8_t> part, std::span<const uint8_t> whole) {
  return part.empty() || (part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size());
}

void CheckRequest(std::span<const uint8_t> message) {
  DiskRequest out;
  out.id = 0xbeef;
  const std::string error = DecodeDiskRequest(message, out);
  if (!error.empty()) {
    Require(out.id == 0xbeef && out.bytes == 0 && out.data.empty(), "a failed decode touches nothing");
    return;
  }
  Require(Inside(out.data, message), "a write's data lies inside the request");
  Require(out.bytes <= kRemoteMaxBytes, "a request is at most kRemoteMaxBytes");
  Require(out.op == DiskOp::kWrite ? out.data.size() == out.bytes : out.data.empty(), "only a write carries data");
  iovec v{const_cast<uint8_t*>(out.data.data()), out.data.size()};
  uint8_t header[kDiskRequestHeaderBytes];
  EncodeDiskRequestHeader(out, std::span<const iovec>(&v, out.data.empty() ? 0 : 1), header);
  Require(std::equal(header, header + sizeof header, message.begin()), "a decoded request re-encodes to its bytes");
}

void CheckReply(std::span<const uint8_t> message) {
  DiskReply out;
  out.id = 0xbeef;
  const std::string error = DecodeDiskReply(message, out);
  if (!error.empty()) {
    Require(out.id == 0xbeef && out.error == 0 && out.data.empty(), "a failed decode touches nothing");
    return;
  }
  Require(Inside(out.data, message), "a read's data lies inside the reply");
  Require(out.error == 0 || out.data.empty(), "a failed request carries no data");
  std::vector<uint8_t> again;
  EncodeDiskReply(out, again);
  Require(again.size() == message.size() && std::equal(again.begin(), again.end(), message.begin()),
          "a decoded reply re-encodes to its bytes");
}

void Run(std::span<const uint8_t> input) {
  if (input.empty()) return;
  const std::span<const uint8_t> message = input.subspan(1);
  switch (input[0] % kSelectors) {
    case kRequest: CheckRequest(message); break;
    case kReply: CheckReply(message); break;
    case kOpen: {
      RemoteDiskOpen open;
      ftvm::fuzz::ParseProto(message, open);
      break;
    }
    case kOpenReply: {
      RemoteDiskOpenReply reply;
      ftvm::fuzz::ParseProto(message, reply);
      break;
    }
  }
}

void Repair(std::span<uint8_t> input) {
  if (input.size() < 1 + 8) return;
  const uint8_t selector = input[0] % kSelectors;
  if (selector != kRequest && selector != kReply) return;
  const std::span<uint8_t> message = input.subspan(1);
  ftvm::eventlog::PutLe32(message.data() + 4, ftvm::eventlog::Crc32c(message.subspan(8)));
}

std::vector<uint8_t> Bytes(const std::string& s) { return {s.begin(), s.end()}; }

std::vector<uint8_t> Seed(std::minstd_rand& rng) {
  const auto selector = static_cast<uint8_t>(rng() % 8 < 6 ? rng() % 2 : rng() % kSelectors);
  std::vector<uint8_t> out;
  switch (selector) {
    case kRequest: {
      const DiskOp op = DiskOp(1 + rng() % 3);
      std::vector<uint8_t> data(op == DiskOp::kWrite ? 512 * (1 + rng() % 8) : 0);
      for (auto& b : data) b = static_cast<uint8_t>(rng());
      const DiskRequest r{op, rng(), op == DiskOp::kFlush ? 0 : uint64_t(rng() % 4096) * 512,
                          op == DiskOp::kRead ? uint32_t(512 * (1 + rng() % 8)) : uint32_t(data.size()), {}};
      iovec v{data.data(), data.size()};
      uint8_t header[kDiskRequestHeaderBytes];
      EncodeDiskRequestHeader(r, std::span<const iovec>(&v, data.empty() ? 0 : 1), header);
      out.assign(header, header + sizeof header);
      out.insert(out.end(), data.begin(), data.end());
      break;
    }
    case kReply: {
      std::vector<uint8_t> data(rng() % 3 == 0 ? 0 : 512 * (1 + rng() % 4));
      for (auto& b : data) b = static_cast<uint8_t>(rng());
      const uint32_t error = data.empty() && rng() % 2 ? 5 : 0;
      EncodeDiskReply(DiskReply{DiskOp(1 + rng() % 3), rng(), error, data}, out);
      break;
    }
    case kOpen: {
      RemoteDiskOpen open;
      open.set_protocol_version(kRemoteProtocolVersion);
      open.set_disk_bytes(uint64_t(rng()) << 12);
      open.set_vm_name("vm");
      out = Bytes(open.SerializeAsString());
      break;
    }
    default: {
      RemoteDiskOpenReply reply;
      reply.set_protocol_version(kRemoteProtocolVersion);
      reply.set_disk_bytes(uint64_t(rng()) << 12);
      if (rng() % 2) reply.set_error("no disk image here");
      out = Bytes(reply.SerializeAsString());
      break;
    }
  }
  out.insert(out.begin(), selector);
  return out;
}

}  // namespace

const ftvm::fuzz::Target ftvm::fuzz::kTarget = {"remote_wire", Run, Seed, Repair};
