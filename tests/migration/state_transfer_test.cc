// Live state transfer over a real channel (TCP loopback) between a sender and a
// receiver in one process. The VM being copied is a writer thread that keeps
// changing memory pages and disk blocks while the copy runs, and notes what it
// writes the way a VM's dirty tracking does; "boundaries" pause it. What must hold:
// after the pause the receiver has exactly the sender's memory and disk, however
// the writes raced the copy; a VM that writes faster than allowed makes the copy
// give up cleanly (tracking stopped, nothing throttled); a receiver that already
// has a disk gets only the blocks that differ; a receiver refuses a
// manifest of another format or for another VM, a stream cut short, and data
// outside its memory or disk, each with a message naming the problem.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "common/clock.h"
#include "common/error.h"
#include "eventlog/format.h"
#include "migration/state_transfer.h"
#include "tests/transport/test_util.h"
#include "vmm/guest_memory.h"
#include "vmm/state_digest.h"

namespace ftvm::migration {
namespace {

using namespace std::chrono_literals;
using transport::testutil::Kind;
using transport::testutil::MakePair;

constexpr uint64_t kMemBytes = 16u << 20;
constexpr uint64_t kDiskBytes = 8u << 20;
constexpr uint64_t kZeroPage = kMemBytes / 4096 - 1;  // the random writer leaves it alone

std::string TempFile(const std::string& tag) {
  char path[] = "/tmp/ftvm-migration-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) throw SysError("mkstemp");
  close(fd);
  return std::string(path) + "-" + tag;
}

std::vector<uint8_t> ReadAll(const std::string& path) {
  std::vector<uint8_t> out;
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw SysError(path);
  uint8_t buf[65536];
  for (ssize_t n; (n = read(fd.get(), buf, sizeof buf)) > 0;) out.insert(out.end(), buf, buf + n);
  return out;
}

// A VM stand-in: a thread writing random pages and disk blocks, `pages_per_ms`
// pages (and a quarter as many blocks) per millisecond, that notes what it wrote
// while tracking is on and stops while a boundary task runs. Before each boundary
// task it also writes `per_boundary` pages it has not written before, in order, as
// a guest does between two exits: so every round has something left to copy.
class WritingVm final : public RunningVm {
 public:
  WritingVm(unsigned pages_per_ms, unsigned per_boundary, uint32_t seed)
      : memory_(vmm::GuestMemory::Create(kMemBytes)), disk_(TempFile("disk")), pages_per_ms_(pages_per_ms),
        per_boundary_(per_boundary) {
    migration::CreateSparseDisk(disk_, kDiskBytes);
    disk_fd_ = UniqueFd(open(disk_.c_str(), O_WRONLY | O_CLOEXEC));
    // Some state before the copy starts, with holes left in both.
    std::mt19937 rng(seed);
    for (int i = 0; i < 1000; ++i) WritePage(rng);
    for (int i = 0; i < 300; ++i) WriteBlock(rng);
    // A page of zeros that is data, not a hole: it travels as "zero".
    std::memset(memory_.ptr(kZeroPage * vmm::kPageSize, vmm::kPageSize), 0, vmm::kPageSize);
    writer_ = std::thread([this, seed] { Run(seed + 1); });
  }
  ~WritingVm() override {
    stop_ = true;
    writer_.join();
    unlink(disk_.c_str());
  }

  vmm::GuestMemory& memory() override { return memory_; }
  const std::string& disk_path() const override { return disk_; }
  bool at_boundary(const std::function<void()>& task) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (unsigned i = 0; i < per_boundary_; ++i) {
      const uint64_t page = next_page_++ % (kMemBytes / vmm::kPageSize);
      memory_.ptr(page * vmm::kPageSize, vmm::kPageSize)[0]++;
      if (tracking_) written_.set(page);
    }
    task();
    return true;
  }
  void start_write_tracking(vmm::PageBitmap* disk_blocks) override {
    written_ = vmm::PageBitmap(kMemBytes / vmm::kPageSize);
    tracking_ = true;
    disk_blocks_ = disk_blocks;
  }
  vmm::PageBitmap take_written_pages() override {
    vmm::PageBitmap out(kMemBytes / vmm::kPageSize);
    std::swap(out, written_);
    return out;
  }
  void stop_write_tracking() override {
    tracking_ = false;
    disk_blocks_ = nullptr;
  }
  void set_throttle_percent(unsigned percent) override { throttle_ = percent; }
  bool copy_memory_digest(vmm::MemoryDigest& into) override {
    if (!digest_) return false;
    into.copy_from(*digest_);
    return true;
  }
  // Offers the sender a digest taken now, which every later write makes stale (as a
  // recorder's is between verifications).
  void OfferDigest() {
    std::lock_guard<std::mutex> lock(mu_);
    digest_ = std::make_unique<vmm::MemoryDigest>(memory_);
  }

  bool tracking() const { return tracking_; }
  unsigned throttle() const { return throttle_; }
  // From a boundary task: the writer writes nothing more (the VM "ends" at the
  // pause), so the final states can be compared.
  void StopWriting() { stop_ = true; }

 private:
  void WritePage(std::mt19937& rng) {
    const uint64_t page = rng() % (kMemBytes / vmm::kPageSize - 1);
    uint8_t* p = memory_.ptr(page * vmm::kPageSize, vmm::kPageSize);
    const uint32_t v = rng();
    // Word by word, so a copy racing with it may see half of the change.
    for (size_t i = 0; i < vmm::kPageSize; i += 4) std::memcpy(p + i, &v, 4);
    if (tracking_) written_.set(page);
  }
  void WriteBlock(std::mt19937& rng) {
    const uint64_t block = rng() % (kDiskBytes / vmm::kPageSize);
    std::vector<uint8_t> data(vmm::kPageSize, uint8_t(rng()));
    ASSERT_EQ(pwrite(disk_fd_.get(), data.data(), data.size(), off_t(block * vmm::kPageSize)),
              ssize_t(data.size()));
    if (disk_blocks_ != nullptr) disk_blocks_->set(block);
  }
  void Run(uint32_t seed) {
    std::mt19937 rng(seed);
    while (!stop_) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stop_) break;
        for (unsigned i = 0; i < pages_per_ms_; ++i) {
          WritePage(rng);
          if (i % 4 == 0) WriteBlock(rng);
        }
      }
      std::this_thread::sleep_for(std::chrono::microseconds(1000 + 1000 * throttle_.load() / 100));
    }
  }

  vmm::GuestMemory memory_;
  std::string disk_;
  UniqueFd disk_fd_;
  unsigned pages_per_ms_;
  unsigned per_boundary_;
  uint64_t next_page_ = 0;
  std::mutex mu_;  // held by the writer while it writes and by boundary tasks
  vmm::PageBitmap written_;
  bool tracking_ = false;
  vmm::PageBitmap* disk_blocks_ = nullptr;
  std::atomic<unsigned> throttle_{0};
  std::atomic<bool> stop_{false};
  std::unique_ptr<vmm::MemoryDigest> digest_;
  std::thread writer_;
};

// `offer_digest`: the VM offers a stale digest of its memory to start from (as a
// primary does); else the sender starts from zeros.
void CopiesAVmThatKeepsWritingExactly(bool offer_digest) {
  auto clock = MakeSystemClock();
  auto pair = MakePair(Kind::kTcp);
  WritingVm vm(20, 16, 7);
  if (offer_digest) vm.OfferDigest();
  auto replica = vmm::GuestMemory::Create(kMemBytes);
  // The replica starts with other contents where the VM has a page of zeros.
  std::memset(replica.ptr(kZeroPage * vmm::kPageSize, vmm::kPageSize), 0xee, vmm::kPageSize);
  const std::string replica_disk = TempFile("replica");
  CreateSparseDisk(replica_disk, kDiskBytes);
  // Both sides keep a digest of memory from the pages as they travel.
  vmm::MemoryDigest replica_digest(replica);
  StateReceiver receiver(replica, replica_disk, kDiskBytes, &replica_digest);
  std::optional<StateManifest> got;
  std::string receive_error;
  std::thread rx([&] {
    try {
      got = receiver.receive(*pair.b, 30s);
    } catch (const Error& e) {
      receive_error = e.what();
    }
  });

  PrecopyOptions options;
  options.downtime_target = 5ms;
  options.max_downtime = 10s;  // on a loaded test machine, never give up here
  PrecopySender sender(vm, *pair.a, *clock, options);
  ASSERT_EQ(sender.copy_while_running(), "");
  vmm::PageBitmap final_pages;
  std::string why;
  ASSERT_TRUE(vm.at_boundary([&] {
    why = sender.finish_at_boundary(final_pages);
    if (why.empty()) {
      StateManifest m;
      m.set_log_header("header");
      why = sender.send_manifest(m);
    }
    vm.StopWriting();
  }));
  ASSERT_EQ(why, "");
  rx.join();
  ASSERT_EQ(receive_error, "");
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->log_header(), "header");
  EXPECT_EQ(got->memory_pages_sent(), receiver.pages_received());
  EXPECT_EQ(got->disk_bytes_sent(), receiver.disk_bytes_received());
  EXPECT_FALSE(vm.tracking());
  EXPECT_GE(sender.stats().rounds, 1u);
  // What a log's opening checkpoint would carry: the pages written in the last round.
  final_pages.for_each([&](uint64_t p) {
    std::memcpy(replica.ptr(p * vmm::kPageSize, vmm::kPageSize), vm.memory().ptr(p * vmm::kPageSize, vmm::kPageSize),
                vmm::kPageSize);
  });
  EXPECT_EQ(std::memcmp(replica.host_base(), vm.memory().host_base(), kMemBytes), 0)
      << "the replica's memory differs";
  EXPECT_TRUE(ReadAll(replica_disk) == ReadAll(vm.disk_path())) << "the replica's disk differs";
  // The digests kept on the way equal one computed afresh over the VM's memory: the
  // sender's stands for a rehash of everything written in the pause, the receiver's
  // (with the final pages, as the opening checkpoint brings them) for one of its own.
  final_pages.for_each([&](uint64_t p) {
    replica_digest.set_page(p, std::span<const uint8_t, vmm::kPageSize>(replica.ptr(p * vmm::kPageSize, vmm::kPageSize),
                                                                       vmm::kPageSize));
  });
  const vmm::MemorySum fresh = vmm::MemoryDigest(vm.memory()).value();
  std::unique_ptr<vmm::MemoryDigest> sent_digest = sender.take_memory_digest();
  ASSERT_NE(sent_digest, nullptr);
  EXPECT_EQ(vmm::DigestHex(sent_digest->value()), vmm::DigestHex(fresh)) << "the sender's digest is not the VM's";
  EXPECT_EQ(vmm::DigestHex(replica_digest.value()), vmm::DigestHex(fresh)) << "the receiver's digest is not the VM's";
  // Holes were not sent: the first round, every page holding data, is far smaller than
  // RAM (the 1000 random writes before the copy touch at most 1000 pages, and the
  // writer at most a few hundred more by then). Later rounds resend pages the writer
  // dirtied, as many as it had time to (a slow run, e.g. under ThreadSanitizer, may
  // send more pages in all than RAM has).
  EXPECT_LT(sender.stats().first_round_pages, kMemBytes / vmm::kPageSize / 2);
  EXPECT_GE(sender.stats().first_round_pages, 1u);
  std::printf("[          ] first round %llu pages of %llu, %llu in all\n",
              static_cast<unsigned long long>(sender.stats().first_round_pages),
              static_cast<unsigned long long>(kMemBytes / vmm::kPageSize),
              static_cast<unsigned long long>(sender.stats().memory_pages_sent));
  EXPECT_GE(sender.stats().zero_pages_sent, 1u);
  unlink(replica_disk.c_str());
}

TEST(StateTransfer, CopiesAVmThatKeepsWritingExactly) { CopiesAVmThatKeepsWritingExactly(false); }
TEST(StateTransfer, CopiesAVmThatKeepsWritingExactlyFromItsOwnDigest) { CopiesAVmThatKeepsWritingExactly(true); }

TEST(StateTransfer, GivesUpCleanlyWhenTheVmWritesFasterThanAllowed) {
  auto clock = MakeSystemClock();
  auto pair = MakePair(Kind::kTcp);
  WritingVm vm(200, 64, 9);
  auto replica = vmm::GuestMemory::Create(kMemBytes);
  const std::string replica_disk = TempFile("replica");
  CreateSparseDisk(replica_disk, kDiskBytes);
  std::thread rx([&] {
    StateReceiver receiver(replica, replica_disk, kDiskBytes);
    EXPECT_THROW(receiver.receive(*pair.b, 30s), Error);  // the sender hangs up
  });
  PrecopyOptions options;
  options.downtime_target = std::chrono::nanoseconds(0);
  options.max_downtime = std::chrono::nanoseconds(0);
  options.max_rounds = 2;
  options.throttle_step = 0;
  std::string why;
  {
    PrecopySender sender(vm, *pair.a, *clock, options);
    why = sender.copy_while_running();
  }
  pair.a->close();
  rx.join();
  EXPECT_NE(why.find("does not converge"), std::string::npos) << why;
  EXPECT_NE(why.find("after 2 rounds"), std::string::npos) << why;
  EXPECT_FALSE(vm.tracking()) << "a copy that gave up must stop tracking";
  EXPECT_EQ(vm.throttle(), 0u);
  unlink(replica_disk.c_str());
}

TEST(StateTransfer, ThrottlesAVmThatOutrunsTheCopy) {
  auto clock = MakeSystemClock();
  auto pair = MakePair(Kind::kTcp);
  WritingVm vm(0, 64, 11);  // the same amount left after every round
  auto replica = vmm::GuestMemory::Create(kMemBytes);
  const std::string replica_disk = TempFile("replica");
  CreateSparseDisk(replica_disk, kDiskBytes);
  std::thread rx([&] {
    StateReceiver receiver(replica, replica_disk, kDiskBytes);
    try {
      receiver.receive(*pair.b, 30s);
    } catch (const Error&) {
    }
  });
  PrecopyOptions options;
  options.downtime_target = std::chrono::nanoseconds(0);  // never fits: every round throttles more
  options.max_downtime = 60s;
  options.max_rounds = 4;
  options.throttle_step = 30;
  options.max_throttle = 60;
  unsigned throttle_seen = 0;
  {
    PrecopySender sender(vm, *pair.a, *clock, options);
    EXPECT_EQ(sender.copy_while_running(), "");
    throttle_seen = vm.throttle();
    EXPECT_EQ(sender.stats().throttle_percent, throttle_seen);
  }
  pair.a->close();
  rx.join();
  unlink(replica_disk.c_str());
  // Rounds 2 and 3 found as much left as the round before: 30%, then 60% (the cap).
  EXPECT_EQ(throttle_seen, 60u);
  EXPECT_EQ(vm.throttle(), 0u) << "the sender must unthrottle when it is done";
}

// A receiver that already has a disk (back after an outage) gets only the blocks
// that differ, holes on the sender's side included, and ends with the same disk.
TEST(StateTransfer, ResyncSendsOnlyTheBlocksThatDiffer) {
  auto clock = MakeSystemClock();
  auto pair = MakePair(Kind::kTcp);
  WritingVm vm(0, 0, 13);  // 300 random blocks written, none while the copy runs
  const std::string replica_disk = TempFile("replica");
  {
    const std::vector<uint8_t> source = ReadAll(vm.disk_path());
    UniqueFd fd(open(replica_disk.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644));
    ASSERT_TRUE(fd);
    ASSERT_EQ(write(fd.get(), source.data(), source.size()), ssize_t(source.size()));
    // The outage: 7 blocks written differently here, and one where the source has
    // nothing (a hole), which must come back as zeros.
    const std::vector<uint8_t> junk(vmm::kPageSize, 0x77);
    std::set<uint64_t> changed;
    for (uint64_t b = 0; changed.size() < 7; b += 97) {
      ASSERT_EQ(pwrite(fd.get(), junk.data(), junk.size(), off_t(b * vmm::kPageSize)), ssize_t(junk.size()));
      changed.insert(b);
    }
    const auto hashes = DiskBlockHashes(vm.disk_path());
    const uint64_t zero_hash = BlockHash(std::vector<uint8_t>(vmm::kPageSize, 0));
    uint64_t hole = 1;
    while (hashes[hole] != zero_hash || changed.count(hole)) ++hole;
    ASSERT_EQ(pwrite(fd.get(), junk.data(), junk.size(), off_t(hole * vmm::kPageSize)), ssize_t(junk.size()));
  }
  auto replica = vmm::GuestMemory::Create(kMemBytes);
  std::string receive_error;
  std::thread rx([&] {
    try {
      ASSERT_EQ(SendDiskHashes(*pair.b, DiskBlockHashes(replica_disk), 10s), "");
      StateReceiver receiver(replica, replica_disk, kDiskBytes);
      receiver.receive(*pair.b, 30s);
    } catch (const Error& e) {
      receive_error = e.what();
    }
  });
  PrecopySender sender(vm, *pair.a, *clock, {});
  sender.set_receiver_disk(ReceiveDiskHashes(*pair.a, kDiskBytes / vmm::kPageSize, 10s));
  ASSERT_EQ(sender.copy_while_running(), "");
  vmm::PageBitmap final_pages;
  std::string why;
  ASSERT_TRUE(vm.at_boundary([&] {
    why = sender.finish_at_boundary(final_pages);
    if (why.empty()) why = sender.send_manifest({});
  }));
  ASSERT_EQ(why, "");
  rx.join();
  ASSERT_EQ(receive_error, "");
  EXPECT_EQ(sender.stats().disk_blocks_compared, kDiskBytes / vmm::kPageSize);
  EXPECT_EQ(sender.stats().disk_blocks_resynced, 8u);
  EXPECT_EQ(sender.stats().disk_bytes_sent, 8 * vmm::kPageSize);
  EXPECT_TRUE(ReadAll(replica_disk) == ReadAll(vm.disk_path())) << "the resynced disk differs";
  unlink(replica_disk.c_str());
}

TEST(StateTransfer, DiskHashesOfAnotherLengthAreRefused) {
  auto pair = MakePair(Kind::kTcp);
  const std::vector<uint64_t> hashes(10, 1);
  ASSERT_EQ(SendDiskHashes(*pair.a, hashes, 5s), "");
  try {
    ReceiveDiskHashes(*pair.b, 5, 5s);
    ADD_FAILURE() << "accepted 10 hashes for 5 blocks";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("expected 0 of 5"), std::string::npos) << e.what();
  }
}

// A raw peer sends `messages` then (unless it sent a manifest) hangs up; the
// receiver's error must contain `expected`.
void ExpectRefused(const std::vector<std::pair<uint8_t, std::vector<uint8_t>>>& messages, const std::string& expected) {
  auto pair = MakePair(Kind::kTcp);
  auto replica = vmm::GuestMemory::Create(kMemBytes);
  const std::string replica_disk = TempFile("replica");
  CreateSparseDisk(replica_disk, kDiskBytes);
  for (const auto& [type, payload] : messages) ASSERT_TRUE(pair.a->send(type, payload, 5s).ok());
  pair.a->close();
  StateReceiver receiver(replica, replica_disk, kDiskBytes);
  try {
    receiver.receive(*pair.b, 5s);
    ADD_FAILURE() << "accepted; expected: " << expected;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
  }
  unlink(replica_disk.c_str());
}

std::vector<uint8_t> Manifest(uint32_t version, uint64_t memory, uint64_t disk) {
  StateManifest m;
  m.set_format_version(version);
  m.set_memory_bytes(memory);
  m.set_disk_bytes(disk);
  const std::string s = m.SerializeAsString();
  return {s.begin(), s.end()};
}

std::vector<uint8_t> Pages(uint32_t page, size_t extra_bytes = 0) {
  std::vector<uint8_t> p(8 + 4 + vmm::kPageSize + extra_bytes, 0x5a);
  eventlog::PutLe32(p.data(), 1);
  eventlog::PutLe32(p.data() + 4, 0);
  eventlog::PutLe32(p.data() + 8, page);
  return p;
}

TEST(StateTransfer, ReceiverRefusesAManifestOfAnotherVersion) {
  ExpectRefused({{kMsgStateManifest, Manifest(99, kMemBytes, kDiskBytes)}}, "format version 99");
}
TEST(StateTransfer, ReceiverRefusesAManifestForAnotherVm) {
  ExpectRefused({{kMsgStateManifest, Manifest(kStateFormatVersion, 2 * kMemBytes, kDiskBytes)}}, "32 MiB of memory");
  ExpectRefused({{kMsgStateManifest, Manifest(kStateFormatVersion, kMemBytes, 4096)}}, "a disk of 4096 bytes");
}
TEST(StateTransfer, ReceiverReportsAStreamCutShort) {
  ExpectRefused({{kMsgMemoryPages, Pages(3)}, {kMsgMemoryPages, Pages(4)}}, "stopped after 2 pages");
}
TEST(StateTransfer, ReceiverRefusesDataOutsideItsMemoryOrDisk) {
  ExpectRefused({{kMsgMemoryPages, Pages(uint32_t(kMemBytes / vmm::kPageSize))}}, "beyond the replica's 16 MiB");
  ExpectRefused({{kMsgMemoryPages, Pages(1, 1)}}, "has 4109 bytes, not 4108");
  std::vector<uint8_t> disk(8 + 4096);
  eventlog::PutLe64(disk.data(), kDiskBytes - 100);
  ExpectRefused({{kMsgDiskData, disk}}, "beyond the disk's");
  ExpectRefused({{42, {1, 2, 3}}}, "message type 42");
}

}  // namespace
}  // namespace ftvm::migration
