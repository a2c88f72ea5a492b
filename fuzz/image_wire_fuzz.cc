// Fuzz target for the image-streaming protocol (storage/image_wire.h) a VM started
// from a served image decodes from its server, and the server from its clients:
// block batches, requests, the ImageHello/ImageHelloReply/ImageStart protobufs, a
// boot profile (a client sends one; the server reads it back from DIR/NAME.profile),
// and the HOST:PORT/NAME address and image name a user or a client gives.
//
// Input: a selector byte, then the message.
// Invariants: a batch or request that decodes re-encodes to exactly its bytes, a
// batch's block data lies inside the batch; a failed decode says why and leaves the
// output untouched; a profile's blocks lie inside the image, in the profile's order;
// an address that parses is HOST:PORT/NAME again with a decimal port in 1..65535 and
// a name CheckImageName accepts; protobufs re-serialize stably.
#include <algorithm>

#include "eventlog/crc32c.h"
#include "eventlog/format.h"
#include "fuzz/harness.h"
#include "storage/image_wire.h"
#include "storage/storage.pb.h"

namespace {

using namespace ftvm::storage;
using ftvm::fuzz::Require;

enum Selector : uint8_t { kBatch, kRequest, kHello, kHelloReply, kStart, kProfile, kAddress, kSelectors };

bool Same(const std::vector<uint8_t>& a, std::span<const uint8_t> b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

void CheckBatch(std::span<const uint8_t> batch) {
  static const uint8_t kMarker[] = {7};
  std::vector<ImageBlock> out{{0xbeef, 0, kMarker}};  // a failed decode must leave this alone
  const std::string error = DecodeImageBatch(batch, out);
  if (!error.empty()) {
    Require(out.size() == 1 && out[0].index == 0xbeef && out[0].data.data() == kMarker,
            "a failed decode touches nothing");
    return;
  }
  std::vector<uint8_t> again;
  StartImageBatch(again);
  for (const ImageBlock& b : out) {
    Require(b.data.empty() || (b.data.data() >= batch.data() && b.data.data() + b.data.size() <= batch.data() + batch.size()),
            "block data lies inside the batch");
    AppendImageBlock(again, b.index, b.flags, b.data);
  }
  Require(out.size() <= 0xffff, "no more blocks than the count can say");
  SealImageBatch(again, uint16_t(out.size()));
  Require(Same(again, batch), "a decoded batch re-encodes to its bytes");
}

void CheckRequest(std::span<const uint8_t> payload) {
  ImageRequest out;
  out.received_bytes = 0xbeef;
  out.demanded = {1};
  const std::string error = DecodeImageRequest(payload, out);
  if (!error.empty()) {
    Require(out.received_bytes == 0xbeef && out.demanded == std::vector<uint32_t>{1} && out.unneeded.empty(),
            "a failed decode touches nothing");
    return;
  }
  Require(Same(EncodeImageRequest(out), payload), "a decoded request re-encodes to its bytes");
}

// The first 12 bytes choose the image the profile is checked against (as the
// server's file and options would), the rest is the profile.
void CheckProfile(std::span<const uint8_t> input) {
  if (input.size() < 12) return;
  const uint64_t image_bytes = ftvm::eventlog::GetLe64(input.data()) >> 24;  // up to 1 TiB
  const uint32_t block_bytes = std::max<uint32_t>(1, ftvm::eventlog::GetLe32(input.data() + 8) >> 8);
  const std::span<const uint8_t> bytes = input.subspan(12);
  ImageProfile p;
  const bool parses = ftvm::fuzz::ParseProto(bytes, p);
  std::vector<uint32_t> out{0xbeef};
  const std::string error = DecodeImageProfile(bytes, image_bytes, block_bytes, "id", out);
  if (!error.empty()) {
    Require(out == std::vector<uint32_t>{0xbeef}, "a failed decode touches nothing");
    return;
  }
  Require(parses && p.version() == kImageProfileVersion && p.image_bytes() == image_bytes &&
              p.block_bytes() == block_bytes && p.image_id() == "id",
          "only a profile of this image decodes");
  const uint64_t blocks = (image_bytes + block_bytes - 1) / block_bytes;
  std::vector<uint32_t> want;
  for (uint32_t b : p.blocks())
    if (b < blocks) want.push_back(b);
  Require(out == want, "the profile's blocks inside the image, in its order");
}

void CheckAddress(std::span<const uint8_t> bytes) {
  const std::string text(bytes.begin(), bytes.end());
  const bool name_ok = CheckImageName(text).empty();
  if (name_ok)
    Require(!text.empty() && text.size() <= 200 && text[0] != '.' &&
                std::none_of(text.begin(), text.end(), [](char c) { return c == '/' || static_cast<unsigned char>(c) < 0x20; }),
            "an accepted image name is a plain file name");
  ImageAddress out;
  out.host = "untouched";
  if (!ParseImageAddress(text, out).empty()) {
    Require(out.host == "untouched" && out.port == 0 && out.name.empty(), "a failed parse touches nothing");
    return;
  }
  Require(out.port != 0 && CheckImageName(out.name).empty(), "a parsed address has a port and an image name");
  const size_t colon = text.find('/') == std::string::npos ? 0 : text.substr(0, text.find('/')).rfind(':');
  const std::string port = text.substr(colon + 1, text.find('/') - colon - 1);
  Require(!port.empty() && std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
              std::stoul(port) == out.port,
          "the port is written in decimal digits");
  Require(text == out.host + ":" + port + "/" + out.name, "a parsed address is HOST:PORT/NAME again");
}

void Run(std::span<const uint8_t> input) {
  if (input.empty()) return;
  const std::span<const uint8_t> message = input.subspan(1);
  switch (input[0] % kSelectors) {
    case kBatch: CheckBatch(message); break;
    case kRequest: CheckRequest(message); break;
    case kHello: {
      ImageHello hello;
      ftvm::fuzz::ParseProto(message, hello);
      break;
    }
    case kHelloReply: {
      ImageHelloReply reply;
      ftvm::fuzz::ParseProto(message, reply);
      break;
    }
    case kStart: {
      ImageStart start;
      ftvm::fuzz::ParseProto(message, start);
      break;
    }
    case kProfile: CheckProfile(message); break;
    case kAddress: CheckAddress(message); break;
  }
}

void Repair(std::span<uint8_t> input) {
  if (input.size() < 1 + 8) return;
  const uint8_t selector = input[0] % kSelectors;
  if (selector != kBatch && selector != kRequest) return;
  const std::span<uint8_t> message = input.subspan(1);
  ftvm::eventlog::PutLe32(message.data() + 4, ftvm::eventlog::Crc32c(message.subspan(8)));
}

std::vector<uint8_t> Bytes(const std::string& s) { return {s.begin(), s.end()}; }

std::vector<uint8_t> Seed(std::minstd_rand& rng) {
  const auto selector = static_cast<uint8_t>(rng() % 8 < 4 ? rng() % 2 : rng() % kSelectors);
  std::vector<uint8_t> out;
  switch (selector) {
    case kBatch: {
      StartImageBatch(out);
      const int n = int(rng() % 5);
      for (int i = 0; i < n; ++i) {
        std::vector<uint8_t> data(rng() % 3 == 0 ? rng() % 700 : 512);
        for (auto& b : data) b = static_cast<uint8_t>(rng());
        AppendImageBlock(out, rng() % 4096, rng() % 2 ? kBlockDemanded : 0, data);
      }
      SealImageBatch(out, uint16_t(n));
      break;
    }
    case kRequest: {
      ImageRequest r;
      r.received_bytes = rng();
      for (int n = int(rng() % 5); n > 0; --n) r.demanded.push_back(rng() % 4096);
      for (int n = int(rng() % 5); n > 0; --n) r.unneeded.push_back(rng() % 4096);
      out = EncodeImageRequest(r);
      break;
    }
    case kHello: {
      ImageHello hello;
      hello.set_protocol_version(kImageProtocolVersion);
      hello.set_image("base.img");
      hello.set_client("vm");
      out = Bytes(hello.SerializeAsString());
      break;
    }
    case kHelloReply: {
      ImageHelloReply reply;
      reply.set_protocol_version(kImageProtocolVersion);
      reply.set_image_bytes(uint64_t(rng()) << 12);
      reply.set_block_bytes(64u << 10);
      reply.set_image_id("1000-2a-5f.000000001");
      reply.set_profile_blocks(rng() % 100);
      out = Bytes(reply.SerializeAsString());
      break;
    }
    case kStart: {
      ImageStart start;
      std::string present(rng() % 64, '\0');
      for (auto& c : present) c = static_cast<char>(rng());
      start.set_present(present);
      out = Bytes(start.SerializeAsString());
      break;
    }
    case kProfile: {
      const uint64_t image_bytes = 1 + rng() % (64u << 20);
      const uint32_t block_bytes = 1u << (12 + rng() % 5);
      out.resize(12);
      ftvm::eventlog::PutLe64(out.data(), image_bytes << 24);
      ftvm::eventlog::PutLe32(out.data() + 8, block_bytes << 8);
      ImageProfile p;
      p.set_version(kImageProfileVersion);
      p.set_image_bytes(image_bytes);
      p.set_block_bytes(block_bytes);
      p.set_image_id("id");
      for (int n = int(rng() % 20); n > 0; --n) p.add_blocks(rng() % (2 + image_bytes / block_bytes));
      const std::string s = p.SerializeAsString();
      out.insert(out.end(), s.begin(), s.end());
      break;
    }
    default: {
      static const char* const kAddresses[] = {"127.0.0.1:7000/base.img", "images:1/a", "[::1]:65535/disk-2.raw",
                                               "host:80/x.profile", "h:0/a", "h:99999/a", "h:80/.hidden", "h:80/"};
      out = Bytes(kAddresses[rng() % std::size(kAddresses)]);
      break;
    }
  }
  out.insert(out.begin(), selector);
  return out;
}

}  // namespace

const ftvm::fuzz::Target ftvm::fuzz::kTarget = {"image_wire", Run, Seed, Repair};
