// Image streaming: what an `ftvm serve-image` (storage/image_server.h) and a VM
// started from one of its images (storage/image_stream.h) say to each other over a
// channel (plain TCP is enough).
//
//   client                                   server
//   kMsgImageHello (ImageHello)       --->
//                                     <---   kMsgImageHelloReply: size, block size,
//                                            image id, profile length (or an error)
//   kMsgImageStart (ImageStart)       --->   the blocks the client already holds
//                                     <---   kMsgImageBlocks: demanded blocks at
//                                            once, then the boot profile's blocks,
//                                            then the rest in ascending order
//   kMsgImageRequest: demanded blocks --->   (also progress, which moves the
//                     and blocks it no        server's window, and blocks the
//                     longer needs            guest overwrote whole)
//   kMsgImageProfile (ImageProfile)   --->   when the copy is complete or the VM
//                                            stopped: the order the VM first read
//                                            blocks in, kept as DIR/NAME.profile
//
// Control messages are protobuf (storage.proto); the hot path is binary, versioned
// and CRC32C-checked, like the disk-write stream (write_stream.h). Little-endian.
//
//   block batch (kMsgImageBlocks)
//   +0   u8   format version (kImageWireVersion)
//   +1   u8   0
//   +2   u16  block count
//   +4   u32  CRC32C of bytes [8, end)
//   +8   u64  0 (reserved)
//   blocks, back to back
//   +0   u32  block index
//   +4   u8   flags (kBlockDemanded: sent because the client asked for it)
//   +5   u8   0, u16 0
//   +8   u32  data bytes (the block size; less for the image's last block)
//   +12  data
//
//   request (kMsgImageRequest)
//   +0   u8   format version, +1 u8 0, +2 u16 0
//   +4   u32  CRC32C of bytes [8, end)
//   +8   u64  block batch bytes the client has received so far (the window)
//   +16  u32  demanded block count D
//   +20  u32  unneeded block count U
//   +24  u32 x D demanded block indices, then u32 x U unneeded ones
//
// Each block is sent at most once per session: a demand for a block already sent
// is answered by the copy on its way.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace ftvm::storage {

inline constexpr uint32_t kImageProtocolVersion = 1;  // the hellos'
inline constexpr uint8_t kImageWireVersion = 1;       // batches and requests
inline constexpr uint32_t kImageProfileVersion = 1;   // DIR/NAME.profile

inline constexpr uint8_t kMsgImageHello = 40;
inline constexpr uint8_t kMsgImageHelloReply = 41;
inline constexpr uint8_t kMsgImageStart = 42;
inline constexpr uint8_t kMsgImageBlocks = 43;
inline constexpr uint8_t kMsgImageRequest = 44;
inline constexpr uint8_t kMsgImageProfile = 45;

inline constexpr uint8_t kBlockDemanded = 1;
inline constexpr size_t kImageBatchHeaderBytes = 16;
inline constexpr size_t kImageBlockHeaderBytes = 12;
// Prefetched bytes the server keeps in flight beyond what the client reported
// received: a demanded block never queues behind more than this.
inline constexpr uint64_t kImageWindowBytes = 1u << 20;

struct ImageBlock {
  uint32_t index = 0;
  uint8_t flags = 0;
  std::span<const uint8_t> data;  // points into the batch
};

// Appends one block to a batch being built (start it with kImageBatchHeaderBytes of
// room: StartImageBatch).
void StartImageBatch(std::vector<uint8_t>& batch);
void AppendImageBlock(std::vector<uint8_t>& batch, uint32_t index, uint8_t flags, std::span<const uint8_t> data);
// Writes the header and CRC.
void SealImageBatch(std::vector<uint8_t>& batch, uint16_t count);
// "" or what is wrong (version, CRC, a block cut short, a count that does not match).
std::string DecodeImageBatch(std::span<const uint8_t> batch, std::vector<ImageBlock>& out);

struct ImageRequest {
  uint64_t received_bytes = 0;
  std::vector<uint32_t> demanded;
  std::vector<uint32_t> unneeded;
};
std::vector<uint8_t> EncodeImageRequest(const ImageRequest& request);
std::string DecodeImageRequest(std::span<const uint8_t> payload, ImageRequest& out);

// Parses "HOST:PORT/NAME". "" or what is wrong.
struct ImageAddress {
  std::string host;
  uint16_t port = 0;
  std::string name;
};
std::string ParseImageAddress(const std::string& text, ImageAddress& out);
// "" or why `name` cannot name an image in a server's directory (a plain file name).
std::string CheckImageName(const std::string& name);

// Decodes a boot profile (a storage.ImageProfile, as kept in DIR/NAME.profile) of the
// image `image_id` of `image_bytes` in blocks of `block_bytes` (not 0): "" and its
// blocks inside the image in `out`, or what is wrong as "is not a boot profile" (to
// follow the file's name), leaving `out` untouched.
std::string DecodeImageProfile(std::span<const uint8_t> bytes, uint64_t image_bytes, uint32_t block_bytes,
                               const std::string& image_id, std::vector<uint32_t>& out);

}  // namespace ftvm::storage
