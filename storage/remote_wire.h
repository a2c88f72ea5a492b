// A remote disk: what a VMM whose disk moved to another host (storage/remote_disk.h)
// and the `ftvm disk-server` holding it (storage/dr_replica.h) say to each other over
// a channel.
//
//   client                                   server
//   kMsgDiskOpen (RemoteDiskOpen)     --->   the disk's size, protocol version
//                                     <---   kMsgDiskOpenReply (RemoteDiskOpenReply):
//                                            its size, or why not
//   kMsgDiskRequest                   --->   read, write or flush; one at a time
//                                     <---   kMsgDiskReply: done (a read's data), or
//                                            the server's errno
//
// A write is answered once it is on the server's image (pwrite); a flush once the
// image is durable (fdatasync). A client that lost the connection sends its request
// again on a new one (same id): writing the same bytes twice, or reading twice,
// changes nothing.
//
// Control messages are protobuf (storage.proto); requests and replies are binary,
// versioned and CRC32C-checked, little-endian:
//
//   request (kMsgDiskRequest)
//   +0   u8   format version (kRemoteWireVersion)
//   +1   u8   op (DiskOp)
//   +2   u16  0
//   +4   u32  CRC32C of bytes [8, end)
//   +8   u64  request id
//   +16  u64  byte offset
//   +24  u32  bytes (at most kRemoteMaxBytes; 0 for a flush)
//   +28  u32  0
//   +32  a write's data (`bytes` bytes); nothing for a read or flush
//
//   reply (kMsgDiskReply)
//   +0   u8   format version, +1 u8 op, +2 u16 0
//   +4   u32  CRC32C of bytes [8, end)
//   +8   u64  request id
//   +16  u32  errno on the server (0: done)
//   +20  u32  data bytes (a read's, when done; else 0)
//   +24  data
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace ftvm::storage {

inline constexpr uint32_t kRemoteProtocolVersion = 1;  // the open messages'
inline constexpr uint8_t kRemoteWireVersion = 1;       // requests and replies

// Numbered apart from the write stream's (storage/write_stream.h): a disk server
// tells a mirror source from a remote disk client by its first message.
inline constexpr uint8_t kMsgDiskOpen = 50;
inline constexpr uint8_t kMsgDiskOpenReply = 51;
inline constexpr uint8_t kMsgDiskRequest = 52;
inline constexpr uint8_t kMsgDiskReply = 53;

inline constexpr size_t kDiskRequestHeaderBytes = 32;
inline constexpr size_t kDiskReplyHeaderBytes = 24;
// One request's bytes at most; a longer transfer is several requests.
inline constexpr uint32_t kRemoteMaxBytes = 1u << 20;

enum class DiskOp : uint8_t { kRead = 1, kWrite = 2, kFlush = 3 };

struct DiskRequest {
  DiskOp op = DiskOp::kRead;
  uint64_t id = 0;
  uint64_t offset = 0;
  uint32_t bytes = 0;
  std::span<const uint8_t> data;  // a write's, pointing into the message
};

struct DiskReply {
  DiskOp op = DiskOp::kRead;
  uint64_t id = 0;
  uint32_t error = 0;
  std::span<const uint8_t> data;  // a read's, pointing into the message
};

// The header of a request whose data (a write's) is `data`, sent after it as more
// parts of the same message (no copy).
void EncodeDiskRequestHeader(const DiskRequest& request, std::span<const iovec> data,
                             uint8_t (&header)[kDiskRequestHeaderBytes]);
// "" or what is wrong (version, CRC, an unknown op, a length that does not match).
std::string DecodeDiskRequest(std::span<const uint8_t> message, DiskRequest& out);

// A whole reply (the server's side).
void EncodeDiskReply(const DiskReply& reply, std::vector<uint8_t>& out);
std::string DecodeDiskReply(std::span<const uint8_t> message, DiskReply& out);

}  // namespace ftvm::storage
