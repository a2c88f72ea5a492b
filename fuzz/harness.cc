#include "fuzz/harness.h"

#include <google/protobuf/stubs/logging.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace ftvm::fuzz {

void Require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "%s fuzz target: invariant violated: %s\n", kTarget.name, what);
    std::abort();
  }
}

void AppendLe(std::vector<uint8_t>& out, uint64_t v, size_t bytes) {
  for (size_t i = 0; i < bytes; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

namespace {

// Protobuf logs every message whose strings are not UTF-8 before the parse fails
// (which the decoders report); mutated inputs hit that constantly.
void QuietProtobuf() { google::protobuf::SetLogHandler(nullptr); }

}  // namespace

}  // namespace ftvm::fuzz

using ftvm::fuzz::kTarget;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kTarget.run(std::span<const uint8_t>(data, size));
  return 0;
}

#ifndef FTVM_FUZZ_STANDALONE

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  ftvm::fuzz::QuietProtobuf();
  return 0;
}

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size, unsigned int seed) {
  std::minstd_rand rng(seed);
  if (size == 0 || rng() % 32 == 0) {
    const std::vector<uint8_t> fresh = kTarget.seed(rng);
    if (fresh.size() <= max_size) {
      std::memcpy(data, fresh.data(), fresh.size());
      size = fresh.size();
      if (rng() % 4 == 0) return size;
    }
  }
  size = LLVMFuzzerMutate(data, size, max_size);
  if (kTarget.repair != nullptr && rng() % 4 != 0) kTarget.repair(std::span<uint8_t>(data, size));
  return size;
}

#else  // FTVM_FUZZ_STANDALONE

#include <filesystem>
#include <fstream>
#include <iterator>

namespace {

std::vector<uint8_t> ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// One to three of the edits libFuzzer would make (and varints), chosen by `rng`.
void Mutate(std::vector<uint8_t>& v, std::minstd_rand& rng) {
  static constexpr uint64_t kInteresting[] = {0, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000,
                                              0x7fffffff, 0xffffffff, 0x100000000, UINT64_MAX};
  const int edits = 1 + static_cast<int>(rng() % 3);
  for (int e = 0; e < edits && !v.empty(); ++e) {
    const size_t at = rng() % v.size();
    switch (rng() % 8) {
      case 0: v[at] ^= static_cast<uint8_t>(1u << (rng() % 8)); break;
      case 1: v[at] = static_cast<uint8_t>(rng()); break;
      case 2: v.resize(at); break;
      case 3: v.insert(v.begin() + static_cast<long>(at), 1 + rng() % 8, static_cast<uint8_t>(rng())); break;
      case 4:
        v.erase(v.begin() + static_cast<long>(at),
                v.begin() + static_cast<long>(std::min(v.size(), at + 1 + rng() % 8)));
        break;
      case 5: {  // an interesting integer, little-endian, in a 2-, 4- or 8-byte field
        const uint64_t value = kInteresting[rng() % std::size(kInteresting)];
        const size_t width = size_t{2} << (rng() % 3);
        for (size_t i = 0; i < width && at + i < v.size(); ++i) v[at + i] = static_cast<uint8_t>(value >> (8 * i));
        break;
      }
      case 7: {  // an interesting integer as a varint (event-log lengths and positions), or an overlong 0
        const uint64_t value = kInteresting[rng() % std::size(kInteresting)];
        if (rng() % 4 == 0 && at + 2 <= v.size()) {
          v[at] = 0x80;
          v[at + 1] = 0;
          break;
        }
        for (uint64_t rest = value, i = at; i < v.size(); rest >>= 7, ++i) {
          v[i] = static_cast<uint8_t>((rest & 0x7f) | (rest >= 0x80 ? 0x80 : 0));
          if (rest < 0x80) break;
        }
        break;
      }
      case 6: {  // a chunk appended again (a record or message appearing twice)
        const size_t len = std::min<size_t>(v.size() - at, 1 + rng() % 64);
        const std::vector<uint8_t> chunk(v.begin() + static_cast<long>(at), v.begin() + static_cast<long>(at + len));
        v.insert(v.end(), chunk.begin(), chunk.end());
        break;
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  ftvm::fuzz::QuietProtobuf();
  std::minstd_rand rng(20240601);
  uint64_t runs = 0;
  for (int s = 0; s < 200; ++s) {
    const std::vector<uint8_t> seed = kTarget.seed(rng);
    kTarget.run(seed);
    ++runs;
    for (int m = 0; m < 30; ++m) {
      std::vector<uint8_t> v = seed;
      Mutate(v, rng);
      kTarget.run(v);
      ++runs;
      if (kTarget.repair != nullptr) {
        kTarget.repair(v);
        kTarget.run(v);
        ++runs;
      }
    }
  }
  uint64_t files = 0;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path arg(argv[i]);
    std::vector<std::filesystem::path> paths;
    if (std::filesystem::is_directory(arg)) {
      for (const auto& entry : std::filesystem::directory_iterator(arg))
        if (entry.is_regular_file()) paths.push_back(entry.path());
      std::sort(paths.begin(), paths.end());
    } else {
      paths.push_back(arg);
    }
    for (const auto& path : paths) {
      kTarget.run(ReadFile(path));
      ++files;
    }
  }
  std::printf("%s fuzz regression: %llu generated inputs and %llu files ok\n", kTarget.name,
              static_cast<unsigned long long>(runs), static_cast<unsigned long long>(files));
  return 0;
}

#endif
