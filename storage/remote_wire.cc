#include "storage/remote_wire.h"

#include "eventlog/crc32c.h"
#include "eventlog/format.h"

namespace ftvm::storage {

using eventlog::GetLe16;
using eventlog::GetLe32;
using eventlog::GetLe64;
using eventlog::PutLe16;
using eventlog::PutLe32;
using eventlog::PutLe64;

namespace {

bool KnownOp(uint8_t op) { return op >= uint8_t(DiskOp::kRead) && op <= uint8_t(DiskOp::kFlush); }

std::string CheckHeader(std::span<const uint8_t> bytes, size_t header, const char* what) {
  if (bytes.size() < header)
    return std::string(what) + " of " + std::to_string(bytes.size()) + " bytes is shorter than its " +
           std::to_string(header) + "-byte header";
  if (bytes[0] != kRemoteWireVersion)
    return std::string(what) + " in remote disk wire format " + std::to_string(bytes[0]) +
           "; this build speaks format " + std::to_string(kRemoteWireVersion);
  if (!KnownOp(bytes[1])) return std::string(what) + " with unknown op " + std::to_string(bytes[1]);
  if (GetLe16(bytes.data() + 2) != 0) return std::string(what) + " with reserved header bytes that are not 0";
  if (eventlog::Crc32c(bytes.subspan(8)) != GetLe32(bytes.data() + 4))
    return std::string(what) + " fails its CRC (damaged in transit)";
  return "";
}

}  // namespace

void EncodeDiskRequestHeader(const DiskRequest& request, std::span<const iovec> data,
                             uint8_t (&header)[kDiskRequestHeaderBytes]) {
  header[0] = kRemoteWireVersion;
  header[1] = uint8_t(request.op);
  PutLe16(header + 2, 0);
  PutLe64(header + 8, request.id);
  PutLe64(header + 16, request.offset);
  PutLe32(header + 24, request.bytes);
  PutLe32(header + 28, 0);
  uint32_t crc = eventlog::Crc32c(std::span<const uint8_t>(header + 8, kDiskRequestHeaderBytes - 8));
  for (const iovec& v : data) crc = eventlog::Crc32c({static_cast<const uint8_t*>(v.iov_base), v.iov_len}, crc);
  PutLe32(header + 4, crc);
}

std::string DecodeDiskRequest(std::span<const uint8_t> message, DiskRequest& out) {
  if (std::string why = CheckHeader(message, kDiskRequestHeaderBytes, "remote disk request"); !why.empty()) return why;
  if (GetLe32(message.data() + 28) != 0) return "remote disk request with reserved header bytes that are not 0";
  DiskRequest r;
  r.op = DiskOp(message[1]);
  r.id = GetLe64(message.data() + 8);
  r.offset = GetLe64(message.data() + 16);
  r.bytes = GetLe32(message.data() + 24);
  const size_t body = message.size() - kDiskRequestHeaderBytes;
  if (r.bytes > kRemoteMaxBytes)
    return "remote disk request of " + std::to_string(r.bytes) + " bytes (at most " + std::to_string(kRemoteMaxBytes) + ")";
  if (r.op == DiskOp::kFlush && (r.bytes != 0 || r.offset != 0)) return "remote disk flush with an offset or length";
  const size_t want = r.op == DiskOp::kWrite ? r.bytes : 0;
  if (body != want)
    return "remote disk request carries " + std::to_string(body) + " data bytes, its header says " + std::to_string(want);
  r.data = message.subspan(kDiskRequestHeaderBytes);
  out = r;
  return "";
}

void EncodeDiskReply(const DiskReply& reply, std::vector<uint8_t>& out) {
  out.resize(kDiskReplyHeaderBytes);
  out.insert(out.end(), reply.data.begin(), reply.data.end());
  uint8_t* p = out.data();
  p[0] = kRemoteWireVersion;
  p[1] = uint8_t(reply.op);
  PutLe16(p + 2, 0);
  PutLe64(p + 8, reply.id);
  PutLe32(p + 16, reply.error);
  PutLe32(p + 20, uint32_t(reply.data.size()));
  PutLe32(p + 4, eventlog::Crc32c(std::span<const uint8_t>(out).subspan(8)));
}

std::string DecodeDiskReply(std::span<const uint8_t> message, DiskReply& out) {
  if (std::string why = CheckHeader(message, kDiskReplyHeaderBytes, "remote disk reply"); !why.empty()) return why;
  DiskReply r;
  r.op = DiskOp(message[1]);
  r.id = GetLe64(message.data() + 8);
  r.error = GetLe32(message.data() + 16);
  const uint32_t bytes = GetLe32(message.data() + 20);
  if (bytes != message.size() - kDiskReplyHeaderBytes)
    return "remote disk reply carries " + std::to_string(message.size() - kDiskReplyHeaderBytes) +
           " data bytes, its header says " + std::to_string(bytes);
  if (r.error != 0 && bytes != 0) return "remote disk reply with an error and data";
  r.data = message.subspan(kDiskReplyHeaderBytes);
  out = r;
  return "";
}

}  // namespace ftvm::storage
