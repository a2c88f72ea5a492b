// Shared helpers of the event-log tests: a temporary directory, a sample header, a
// small log holding one record of every type, and reading a whole file.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "eventlog/format.h"
#include "eventlog/reader.h"
#include "eventlog/records.h"
#include "eventlog/writer.h"

namespace ftvm::eventlog::testing {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "ftvm-eventlog-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline LogHeader SampleHeader() {
  LogHeader h;
  VmConfig* vm = h.mutable_vm();
  vm->set_app("kvstore");
  vm->add_app_args("--port=7000");
  vm->add_app_args("--quiet");
  vm->set_mem_mib(64);
  vm->set_has_disk(true);
  vm->set_has_net(true);
  vm->set_mac("52:54:00:12:34:56");
  vm->set_ip("10.0.0.2");
  vm->set_gateway("10.0.0.1");
  vm->set_backend("kvm");
  h.set_guest_image_sha256(std::string(32, '\xab'));
  h.set_initial_state_digest(std::string(32, '\x5c'));
  h.set_created_unix_ns(1700000000123456789ull);
  h.set_ftvm_version("0.1.0");
  return h;
}

inline std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void WriteFile(const std::string& path, std::span<const uint8_t> bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

inline Digest MakeDigest(uint8_t seed) {
  Digest d;
  for (size_t i = 0; i < d.size(); ++i) d[i] = static_cast<uint8_t>(seed + i * 7);
  return d;
}

// One record of every type, built in memory with AppendRecord (uncompressed).
// `offsets` receives where each record starts; the last entry is the end of the log.
inline std::vector<uint8_t> SmallLog(std::vector<uint64_t>* offsets = nullptr) {
  std::vector<uint8_t> log = EncodeFileHeader(SampleHeader());
  auto add = [&](RecordType t, uint64_t pos, std::span<const uint8_t> p) {
    if (offsets) offsets->push_back(log.size());
    AppendRecord(log, t, 0, pos, p);
  };
  const uint8_t rng[] = {1, 2, 3, 4, 5};
  const uint8_t frame[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0, 1, 2, 3, 0x08, 0x06, 9};
  const uint8_t blob[] = {'c', 'k', 'p', 't'};
  add(RecordType::kClockRead, 1, EncodeClockRead(0x1122334455667788ull));
  add(RecordType::kRngData, 1, rng);
  add(RecordType::kPacketRx, 7, frame);
  add(RecordType::kDiskCompletion, 9, EncodeDiskCompletion({1, 3}));
  add(RecordType::kInterrupt, 9, EncodeInterrupt(0x21));
  add(RecordType::kCheckpoint, 12, blob);
  add(RecordType::kVerify, 12, EncodeVerify(Verify{MakeDigest(3), 17, MakeDigest(4), {}, {1, 2, 3}, {{5, 6}}}));
  add(RecordType::kEnd, 20, EncodeEnd(MakeDigest(9)));
  if (offsets) offsets->push_back(log.size());
  return log;
}

}  // namespace ftvm::eventlog::testing
