#include "storage/image_wire.h"

#include "eventlog/crc32c.h"
#include "eventlog/format.h"
#include "storage/storage.pb.h"

namespace ftvm::storage {

using eventlog::GetLe16;
using eventlog::GetLe32;
using eventlog::GetLe64;
using eventlog::PutLe16;
using eventlog::PutLe32;
using eventlog::PutLe64;

void StartImageBatch(std::vector<uint8_t>& batch) { batch.assign(kImageBatchHeaderBytes, 0); }

void AppendImageBlock(std::vector<uint8_t>& batch, uint32_t index, uint8_t flags, std::span<const uint8_t> data) {
  const size_t at = batch.size();
  batch.resize(at + kImageBlockHeaderBytes);
  uint8_t* p = batch.data() + at;
  PutLe32(p, index);
  p[4] = flags;
  p[5] = 0;
  PutLe16(p + 6, 0);
  PutLe32(p + 8, uint32_t(data.size()));
  batch.insert(batch.end(), data.begin(), data.end());
}

void SealImageBatch(std::vector<uint8_t>& batch, uint16_t count) {
  uint8_t* p = batch.data();
  p[0] = kImageWireVersion;
  p[1] = 0;
  PutLe16(p + 2, count);
  PutLe64(p + 8, 0);
  PutLe32(p + 4, eventlog::Crc32c(std::span<const uint8_t>(batch).subspan(8)));
}

namespace {

std::string CheckHeader(std::span<const uint8_t> bytes, size_t header, const char* what) {
  if (bytes.size() < header)
    return std::string(what) + " of " + std::to_string(bytes.size()) + " bytes is shorter than its " +
           std::to_string(header) + "-byte header";
  if (bytes[0] != kImageWireVersion)
    return std::string(what) + " in image wire format " + std::to_string(bytes[0]) + "; this build speaks format " +
           std::to_string(kImageWireVersion);
  if (bytes[1] != 0) return std::string(what) + " with reserved byte " + std::to_string(bytes[1]) + " (not 0)";
  if (eventlog::Crc32c(bytes.subspan(8)) != GetLe32(bytes.data() + 4))
    return std::string(what) + " fails its CRC (damaged in transit or on the server)";
  return "";
}

}  // namespace

std::string DecodeImageBatch(std::span<const uint8_t> batch, std::vector<ImageBlock>& out) {
  if (std::string why = CheckHeader(batch, kImageBatchHeaderBytes, "image block batch"); !why.empty()) return why;
  if (GetLe64(batch.data() + 8) != 0) return "image block batch with reserved header bytes that are not 0";
  const uint16_t count = GetLe16(batch.data() + 2);
  // Decoded aside: a batch that fails leaves `out` as it was.
  std::vector<ImageBlock> blocks;
  size_t at = kImageBatchHeaderBytes;
  while (at < batch.size()) {
    if (batch.size() - at < kImageBlockHeaderBytes)
      return "image block " + std::to_string(blocks.size()) + " of the batch is cut short";
    const uint8_t* p = batch.data() + at;
    ImageBlock b;
    b.index = GetLe32(p);
    b.flags = p[4];
    if (p[5] != 0 || GetLe16(p + 6) != 0)
      return "image block " + std::to_string(b.index) + " with reserved header bytes that are not 0";
    const uint32_t len = GetLe32(p + 8);
    at += kImageBlockHeaderBytes;
    if (len > batch.size() - at)
      return "image block " + std::to_string(b.index) + " says " + std::to_string(len) + " bytes, but only " +
             std::to_string(batch.size() - at) + " follow";
    b.data = batch.subspan(at, len);
    at += len;
    blocks.push_back(b);
  }
  if (blocks.size() != count)
    return "image block batch header says " + std::to_string(count) + " blocks, but it holds " +
           std::to_string(blocks.size());
  out = std::move(blocks);
  return "";
}

std::vector<uint8_t> EncodeImageRequest(const ImageRequest& r) {
  std::vector<uint8_t> out(24 + 4 * (r.demanded.size() + r.unneeded.size()));
  uint8_t* p = out.data();
  p[0] = kImageWireVersion;
  PutLe64(p + 8, r.received_bytes);
  PutLe32(p + 16, uint32_t(r.demanded.size()));
  PutLe32(p + 20, uint32_t(r.unneeded.size()));
  size_t at = 24;
  for (uint32_t b : r.demanded) PutLe32(p + (at += 4) - 4, b);
  for (uint32_t b : r.unneeded) PutLe32(p + (at += 4) - 4, b);
  PutLe32(p + 4, eventlog::Crc32c(std::span<const uint8_t>(out).subspan(8)));
  return out;
}

std::string DecodeImageRequest(std::span<const uint8_t> payload, ImageRequest& out) {
  if (std::string why = CheckHeader(payload, 24, "image request"); !why.empty()) return why;
  const uint8_t* p = payload.data();
  if (GetLe16(p + 2) != 0) return "image request with reserved header bytes that are not 0";
  const uint64_t d = GetLe32(p + 16), u = GetLe32(p + 20);
  if (payload.size() != 24 + 4 * (d + u))
    return "image request says " + std::to_string(d) + "+" + std::to_string(u) + " blocks in " +
           std::to_string(payload.size()) + " bytes";
  out.received_bytes = GetLe64(p + 8);
  out.demanded.resize(d);
  out.unneeded.resize(u);
  for (uint64_t i = 0; i < d; ++i) out.demanded[i] = GetLe32(p + 24 + 4 * i);
  for (uint64_t i = 0; i < u; ++i) out.unneeded[i] = GetLe32(p + 24 + 4 * (d + i));
  return "";
}

std::string CheckImageName(const std::string& name) {
  if (name.empty()) return "no image name";
  if (name.size() > 200) return "image name longer than 200 bytes";
  if (name[0] == '.') return "image name '" + name + "' starts with '.'";
  for (char c : name)
    if (c == '/' || c == '\0' || static_cast<unsigned char>(c) < 0x20)
      return "image name '" + name + "' is not a plain file name";
  if (name.ends_with(".profile")) return "'" + name + "' is a boot profile, not an image";
  return "";
}

std::string ParseImageAddress(const std::string& text, ImageAddress& out) {
  const std::string want = " (want HOST:PORT/NAME)";
  const size_t slash = text.find('/');
  if (slash == std::string::npos) return "'" + text + "' names no image" + want;
  const std::string hostport = text.substr(0, slash);
  const size_t colon = hostport.rfind(':');
  if (colon == std::string::npos || colon == 0) return "'" + text + "' has no HOST:PORT" + want;
  const std::string port = hostport.substr(colon + 1);
  // Digits only: stoul alone would take " 80" and "+80".
  unsigned long p = 0;
  if (!port.empty() && port.size() <= 5 && port.find_first_not_of("0123456789") == std::string::npos) p = std::stoul(port);
  if (p == 0 || p > 65535) return "'" + text + "' has a bad port '" + port + "'" + want;
  ImageAddress a;
  a.host = hostport.substr(0, colon);
  a.port = uint16_t(p);
  a.name = text.substr(slash + 1);
  if (std::string why = CheckImageName(a.name); !why.empty()) return "'" + text + "': " + why;
  out = std::move(a);
  return "";
}

std::string DecodeImageProfile(std::span<const uint8_t> bytes, uint64_t image_bytes, uint32_t block_bytes,
                               const std::string& image_id, std::vector<uint32_t>& out) {
  ImageProfile p;
  if (!p.ParseFromArray(bytes.data(), int(bytes.size()))) return "is not a boot profile";
  if (p.version() != kImageProfileVersion)
    return "is in profile version " + std::to_string(p.version()) + "; this build reads version " +
           std::to_string(kImageProfileVersion);
  if (p.image_bytes() != image_bytes || p.block_bytes() != block_bytes || p.image_id() != image_id)
    return "was recorded for another version of the image or another block size";
  const uint64_t blocks = (image_bytes + block_bytes - 1) / block_bytes;
  std::vector<uint32_t> kept;
  kept.reserve(size_t(p.blocks_size()));
  for (uint32_t b : p.blocks())
    if (b < blocks) kept.push_back(b);
  out = std::move(kept);
  return "";
}

}  // namespace ftvm::storage
