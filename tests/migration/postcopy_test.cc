// Post-copy over a real channel (shared memory) between a sender and a receiver in
// one process. The receiver's "VM" is a set of reader threads touching pages of an
// emptied memory registered with userfaultfd, so each touch of a page that has not
// arrived blocks in the kernel until the sender's answer places it. What must hold:
// every reader sees the source's bytes, every page arrives once, the digest of what
// arrived equals a digest of the source's memory; a source that dies half way is
// reported with the count of missing pages, and the receiver's threads let go.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <future>
#include <mutex>
#include <random>
#include <thread>

#include "common/clock.h"
#include "migration/postcopy.h"
#include "migration/state_transfer.h"
#include "tests/transport/test_util.h"
#include "vmm/guest_memory.h"
#include "vmm/state_digest.h"

namespace ftvm::migration {
namespace {

using namespace std::chrono_literals;
using transport::testutil::Kind;
using transport::testutil::MakePair;

constexpr uint64_t kMemBytes = 32u << 20;
constexpr uint64_t kPages = kMemBytes / vmm::kPageSize;

// Source memory: random data in every third page, a page of zeros that is data,
// and holes elsewhere.
vmm::GuestMemory SourceMemory() {
  vmm::GuestMemory m = vmm::GuestMemory::Create(kMemBytes);
  std::mt19937_64 rng(7);
  for (uint64_t p = 0; p < kPages; p += 3) {
    auto* w = reinterpret_cast<uint64_t*>(m.ptr(p * vmm::kPageSize, vmm::kPageSize));
    for (size_t i = 0; i < vmm::kPageSize / 8; ++i) w[i] = rng();
  }
  std::memset(m.ptr(1 * vmm::kPageSize, vmm::kPageSize), 0, vmm::kPageSize);
  return m;
}

struct Outcome {
  std::string why;
  vmm::MemorySum memory{};
};

TEST(Postcopy, ReadersGetTheSourcesBytesAndTheDigestMatches) {
  auto clock = MakeSystemClock();
  vmm::GuestMemory source = SourceMemory();
  const vmm::MemorySum expected = vmm::MemoryDigest(source).value();
  vmm::GuestMemory dest = vmm::GuestMemory::Create(kMemBytes);
  std::memset(dest.host_base(), 0xAB, vmm::kPageSize * 4);  // stale contents, as a booted image leaves
  auto pair = MakePair(Kind::kShm);
  PostcopyReceiver receiver(dest, *clock);
  receiver.start_requests(*pair.b);
  std::promise<Outcome> done;
  receiver.start(5s, [&](const std::string& why, const vmm::MemorySum& memory) { done.set_value({why, memory}); });
  // Readers fault on pages far apart, in an order the push does not follow.
  std::atomic<uint64_t> mismatches{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 3; ++r)
    readers.emplace_back([&, r] {
      for (uint64_t p = kPages - 1 - uint64_t(r); p > 0 && p < kPages; p -= 97)
        if (std::memcmp(dest.ptr(p * vmm::kPageSize, vmm::kPageSize), source.ptr(p * vmm::kPageSize, vmm::kPageSize),
                        vmm::kPageSize) != 0)
          ++mismatches;
    });
  vmm::PageBitmap first(kPages);
  first.set(10);
  PostcopySender sender(source, *pair.a, *clock, first);
  EXPECT_EQ(sender.serve(5s), "");
  for (auto& t : readers) t.join();
  Outcome o = done.get_future().get();
  EXPECT_EQ(o.why, "");
  EXPECT_EQ(mismatches, 0u);
  EXPECT_EQ(o.memory, expected) << "the digest of what arrived is the source's";
  // Holes stay holes here, but for those the readers touched (a third of the pages
  // hold data). Read before the comparison below, whose reads allocate them.
  struct stat st_dest {};
  ASSERT_EQ(fstat(dest.fd(), &st_dest), 0);
  EXPECT_LT(uint64_t(st_dest.st_blocks) * 512, kMemBytes / 2) << "holes were filled with zeroed pages";
  EXPECT_EQ(std::memcmp(dest.host_base(), source.host_base(), kMemBytes), 0);
  const PostcopyReceiverStats st = receiver.stats();
  EXPECT_EQ(st.received_pages, kPages);
  EXPECT_GT(st.faults, 0u) << "the readers waited for some pages";
  EXPECT_EQ(sender.stats().pages, kPages);
  EXPECT_GT(sender.stats().zero_pages, kPages / 2) << "holes travel as numbers";
}

TEST(Postcopy, AHoleStaysAHoleUntilTheVmTouchesItAndIsThenFilledWithoutARequest) {
  auto clock = MakeSystemClock();
  vmm::GuestMemory dest = vmm::GuestMemory::Create(kMemBytes);
  auto pair = MakePair(Kind::kShm);
  PostcopyReceiver receiver(dest, *clock);
  receiver.start_requests(*pair.b);  // the fault thread, no receive loop: messages come by deliver()
  std::vector<uint8_t> msg(8 + 8);
  msg[4] = 2;  // two zero pages: 4 and 5
  msg[8] = 4;
  msg[12] = 5;
  ASSERT_EQ(receiver.deliver(msg), "");
  struct stat st {};
  ASSERT_EQ(fstat(dest.fd(), &st), 0);
  EXPECT_EQ(st.st_blocks, 0) << "a hole that arrived was filled";
  // The VM touches page 4: zeros, at once, and nothing is asked of the source.
  std::future<uint8_t> read = std::async(std::launch::async, [&] { return dest.host_base()[4 * vmm::kPageSize + 7]; });
  ASSERT_EQ(read.wait_for(10s), std::future_status::ready) << "a touched hole was not filled";
  EXPECT_EQ(read.get(), 0);
  transport::Message req;
  EXPECT_TRUE(pair.a->recv(req, 100ms).timed_out()) << "the destination asked the source for a hole";
  const PostcopyReceiverStats s = receiver.stats();
  EXPECT_EQ(s.holes_filled, 1u);
  EXPECT_EQ(s.faults, 0u);
  EXPECT_EQ(s.received_pages, 2u);
  ASSERT_EQ(fstat(dest.fd(), &st), 0);
  EXPECT_EQ(uint64_t(st.st_blocks) * 512, vmm::kPageSize) << "only the touched hole holds memory";
}

TEST(Postcopy, ASourceLostHalfWayIsReportedAndNobodyHangs) {
  auto clock = MakeSystemClock();
  vmm::GuestMemory dest = vmm::GuestMemory::Create(kMemBytes);
  auto pair = MakePair(Kind::kShm);
  PostcopyReceiver receiver(dest, *clock);
  receiver.start_requests(*pair.b);
  std::promise<Outcome> done;
  receiver.start(5s, [&](const std::string& why, const vmm::MemorySum& memory) { done.set_value({why, memory}); });
  // The source answers with one page, then dies.
  vmm::GuestMemory source = SourceMemory();
  std::thread reader([&] { [[maybe_unused]] volatile uint8_t b = dest.host_base()[5 * vmm::kPageSize]; });
  transport::Message req;
  ASSERT_TRUE(pair.a->recv(req, 5s).is_message());
  {
    vmm::PageBitmap none(kPages);
    PostcopySender sender(source, *pair.a, *clock, none);
    EXPECT_EQ(sender.answer(req), "");
  }
  pair.a->close();
  pair.a.reset();
  Outcome o = done.get_future().get();
  EXPECT_NE(o.why.find("pages missing"), std::string::npos) << o.why;
  EXPECT_NE(o.why.find("source went away"), std::string::npos) << o.why;
  reader.join();  // let go once the receiver gave up (onto a page of zeros)
}

TEST(Postcopy, APageOutsideMemoryIsRefused) {
  auto clock = MakeSystemClock();
  vmm::GuestMemory dest = vmm::GuestMemory::Create(kMemBytes);
  PostcopyReceiver receiver(dest, *clock);
  std::vector<uint8_t> msg(8 + 4);
  msg[4] = 1;  // one zero page ...
  const uint32_t beyond = uint32_t(kPages);  // ... past the end
  std::memcpy(msg.data() + 8, &beyond, 4);
  EXPECT_NE(receiver.deliver(msg).find("beyond"), std::string::npos);
}

}  // namespace
}  // namespace ftvm::migration
