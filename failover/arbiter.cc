#include "failover/arbiter.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"
#include "common/log.h"
#include "common/unique_fd.h"

namespace ftvm::failover {
namespace {

constexpr const char* kPrefix = "generation-";

class DirectoryArbiter final : public Arbiter {
 public:
  explicit DirectoryArbiter(std::string dir) : dir_(std::move(dir)) {
    struct stat st {};
    if (stat(dir_.c_str(), &st) != 0) throw SysError("arbiter directory " + dir_);
    if (!S_ISDIR(st.st_mode)) throw Error("arbiter directory " + dir_ + " is not a directory");
    if (access(dir_.c_str(), W_OK) != 0) throw SysError("arbiter directory " + dir_ + " is not writable");
  }

  std::string describe() const override { return "directory " + dir_; }

  uint64_t current_generation() override {
    DIR* d = opendir(dir_.c_str());
    if (d == nullptr) throw SysError("arbiter directory " + dir_);
    uint64_t best = 0;
    while (dirent* e = readdir(d)) {
      uint64_t generation = 0;
      if (ParseGenerationFileName(e->d_name, generation)) best = std::max(best, generation);
    }
    closedir(d);
    return best;
  }

  bool try_claim(uint64_t generation, const std::string& owner, std::string* holder) override {
    const std::string path = dir_ + "/" + GenerationFileName(generation);
    UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (!fd) {
      if (errno != EEXIST) throw SysError("arbiter: claiming " + path);
      if (holder != nullptr) *holder = ReadOwner(path);
      return false;
    }
    // The file's existence is the claim; its contents only say who, for operators.
    // Not synced: a claim is made while a VM waits paused (a failover, a migration's
    // switch), where an fsync took 1-20 ms on this host, and syncing the contents
    // would not make the claim itself (the directory entry) any more durable.
    const std::string text = owner + "\n";
    if (write(fd.get(), text.data(), text.size()) != ssize_t(text.size()))
      log::warn("arbiter.owner_not_written", {{"path", path}, {"error", strerror(errno)}});
    return true;
  }

 private:
  static std::string ReadOwner(const std::string& path) {
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    char buf[256] = {};
    if (!fd) return "?";
    ssize_t n = read(fd.get(), buf, sizeof buf - 1);
    return GenerationOwner(std::string_view(buf, n > 0 ? size_t(n) : 0));
  }

  std::string dir_;
};

}  // namespace

std::string GenerationFileName(uint64_t generation) { return kPrefix + std::to_string(generation); }

bool ParseGenerationFileName(std::string_view name, uint64_t& generation) {
  if (!name.starts_with(kPrefix)) return false;
  const std::string_view digits = name.substr(std::strlen(kPrefix));
  // As GenerationFileName writes them: "generation-007" is not generation 7's file
  // (claiming 7 would create another), and std::stoull would throw on 21 digits.
  if (digits.empty() || digits.size() > 20 || digits.find_first_not_of("0123456789") != std::string_view::npos ||
      (digits.size() > 1 && digits[0] == '0'))
    return false;
  uint64_t v = 0;
  for (char c : digits) {
    const uint64_t d = uint64_t(c - '0');
    if (v > (UINT64_MAX - d) / 10) return false;
    v = v * 10 + d;
  }
  generation = v;
  return true;
}

std::string GenerationOwner(std::string_view text) {
  std::string s(text);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s.empty() ? "(being written)" : s;
}

std::unique_ptr<Arbiter> MakeDirectoryArbiter(const std::string& dir) {
  return std::make_unique<DirectoryArbiter>(dir);
}

}  // namespace ftvm::failover
