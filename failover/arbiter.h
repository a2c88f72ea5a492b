// The split-brain arbiter: an atomic test-and-set both hosts can reach, so that when
// the logging channel is cut between two live hosts exactly one of them carries on.
//
// A protected pair runs in a numbered generation. When either side loses the other,
// it tries to claim the next generation; only one claim can succeed, and the loser
// stops its VM. The default arbiter is a directory both hosts see (shared storage):
// a claim is the exclusive creation of a file named after the generation, which is
// atomic on local file systems and on NFS (O_EXCL). A coordination service (etcd,
// ZooKeeper) fits the same interface.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace ftvm::failover {

class Arbiter {
 public:
  virtual ~Arbiter() = default;
  virtual std::string describe() const = 0;
  // The highest generation claimed so far (0: none).
  virtual uint64_t current_generation() = 0;
  // Claims `generation` for `owner`. True: this caller won it. False: someone else
  // holds it (`holder` receives who). Throws ftvm::Error when the arbiter cannot be
  // reached (a caller must then not go live: it cannot prove it won).
  virtual bool try_claim(uint64_t generation, const std::string& owner, std::string* holder = nullptr) = 0;
};

// Throws ftvm::Error naming the directory when it does not exist or is not writable.
std::unique_ptr<Arbiter> MakeDirectoryArbiter(const std::string& dir);

// The directory arbiter's files: DIR/generation-N, holding its owner and a newline.
std::string GenerationFileName(uint64_t generation);
// True and N for a name GenerationFileName(N) gives; false (and `generation`
// untouched) for any other file.
bool ParseGenerationFileName(std::string_view name, uint64_t& generation);
// Who a generation file says holds it ("(being written)" while it is empty).
std::string GenerationOwner(std::string_view text);

}  // namespace ftvm::failover
