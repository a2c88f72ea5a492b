// PageBitmap, and the userfaultfd dirty tracker against the real kernel: real memfd
// guest RAM, real userfaultfd write-protection, real PAGEMAP_SCAN (Linux 6.7+).
#include "vmm/dirty_tracker.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "common/error.h"
#include "vmm/guest_memory.h"
#include "vmm/page_bitmap.h"

namespace ftvm::vmm {
namespace {

std::vector<uint64_t> Pages(const PageBitmap& b) {
  std::vector<uint64_t> out;
  b.for_each([&](uint64_t p) { out.push_back(p); });
  return out;
}

// ---- PageBitmap -------------------------------------------------------------

TEST(PageBitmap, SetTestCountAndOrder) {
  PageBitmap b(130);
  EXPECT_EQ(b.pages(), 130u);
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(b.count(), 0u);
  for (uint64_t p : {129u, 0u, 64u, 63u, 65u, 64u}) b.set(p);
  EXPECT_FALSE(b.empty());
  EXPECT_EQ(b.count(), 5u);
  EXPECT_EQ(Pages(b), (std::vector<uint64_t>{0, 63, 64, 65, 129}));
  EXPECT_TRUE(b.test(63));
  EXPECT_FALSE(b.test(62));
  b.set(130);  // past the end: ignored
  b.set(1000);
  EXPECT_FALSE(b.test(130));
  EXPECT_EQ(b.count(), 5u);
  b.clear();
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(b.pages(), 130u);
}

TEST(PageBitmap, SetRangeCoversEveryOverlappedPage) {
  PageBitmap b(16);
  b.set_range(0, 0);  // empty range: nothing
  EXPECT_TRUE(b.empty());
  b.set_range(4095, 2);  // straddles pages 0 and 1
  EXPECT_EQ(Pages(b), (std::vector<uint64_t>{0, 1}));
  b.clear();
  b.set_range(3 * kPageSize, kPageSize);  // exactly page 3
  EXPECT_EQ(Pages(b), (std::vector<uint64_t>{3}));
  b.clear();
  b.set_range(5 * kPageSize + 100, 1);
  EXPECT_EQ(Pages(b), (std::vector<uint64_t>{5}));
  b.clear();
  b.set_range(14 * kPageSize, 10 * kPageSize);  // runs past the end: clipped
  EXPECT_EQ(Pages(b), (std::vector<uint64_t>{14, 15}));
}

TEST(PageBitmap, MergeIsUnion) {
  PageBitmap a(200), b(200);
  a.set(1);
  a.set(150);
  b.set(150);
  b.set(199);
  a.merge(b);
  EXPECT_EQ(Pages(a), (std::vector<uint64_t>{1, 150, 199}));
  EXPECT_EQ(Pages(b), (std::vector<uint64_t>{150, 199}));
}

// ---- userfaultfd tracker ------------------------------------------------------

constexpr uint64_t kRamPages = 2048;  // 8 MiB

class UffdTrackerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    try {
      tracker = MakeUffdDirtyTracker(mem);
    } catch (const Error& e) {
      FAIL() << "creating the userfaultfd tracker failed (this host runs Linux 6.7+): " << e.what();
    }
    EXPECT_EQ(tracker->name(), "userfaultfd");
  }

  PageBitmap Collect() {
    PageBitmap b(kRamPages);
    tracker->collect(b);
    return b;
  }

  void Touch(uint64_t page, uint64_t offset = 0, uint8_t value = 0x5a) {
    mem.host_base()[page * kPageSize + offset] = value;
  }

  GuestMemory mem = GuestMemory::Create(kRamPages * kPageSize);
  std::unique_ptr<DirtyTracker> tracker;
};

TEST_F(UffdTrackerTest, NothingWrittenIsEmpty) {
  EXPECT_TRUE(Collect().empty());
  EXPECT_TRUE(Collect().empty());
}

TEST_F(UffdTrackerTest, PagesPopulatedBeforeTheTrackerAreNotReported) {
  // Pages written before the tracker existed are not "written since it was made".
  tracker.reset();
  for (uint64_t p = 0; p < kRamPages; p += 3) Touch(p);
  tracker = MakeUffdDirtyTracker(mem);
  EXPECT_TRUE(Collect().empty());
  Touch(9, 17);
  EXPECT_EQ(Pages(Collect()), (std::vector<uint64_t>{9}));
}

TEST_F(UffdTrackerTest, ReportsExactlyTheScatteredPagesWritten) {
  const std::vector<uint64_t> written{0, 1, 7, 63, 64, 100, 511, 512, 513, 1000, 2046, 2047};
  for (uint64_t p : written) Touch(p, (p * 37) % kPageSize);
  EXPECT_EQ(Pages(Collect()), written);
  EXPECT_TRUE(Collect().empty()) << "collect() must start a new interval";
}

TEST_F(UffdTrackerTest, EachIntervalReportsOnlyItsOwnWrites) {
  Touch(10);
  Touch(20);
  EXPECT_EQ(Pages(Collect()), (std::vector<uint64_t>{10, 20}));
  Touch(20, 1);  // written again in a later interval: re-armed, so seen again
  Touch(30);
  EXPECT_EQ(Pages(Collect()), (std::vector<uint64_t>{20, 30}));
  Touch(10, 4095);
  EXPECT_EQ(Pages(Collect()), (std::vector<uint64_t>{10}));
}

TEST_F(UffdTrackerTest, PageWrittenManyTimesIsCountedOnce) {
  for (int i = 0; i < 100; ++i) Touch(42, uint64_t(i) * 40, uint8_t(i));
  PageBitmap b = Collect();
  EXPECT_EQ(b.count(), 1u);
  EXPECT_TRUE(b.test(42));
}

TEST_F(UffdTrackerTest, WritesFromOtherThreadsAreSeen) {
  std::vector<uint64_t> a, b;
  for (uint64_t p = 5; p < kRamPages; p += 97) a.push_back(p);
  for (uint64_t p = 11; p < kRamPages; p += 131) b.push_back(p);
  std::thread t1([&] {
    for (uint64_t p : a) Touch(p, 8);
  });
  std::thread t2([&] {
    for (uint64_t p : b) Touch(p, 4000);
  });
  t1.join();
  t2.join();
  std::set<uint64_t> expected(a.begin(), a.end());
  expected.insert(b.begin(), b.end());
  EXPECT_EQ(Pages(Collect()), std::vector<uint64_t>(expected.begin(), expected.end()));
  // And a thread writing while this one collects: every write lands in exactly one
  // of the intervals, none is lost.
  std::atomic<bool> go{false};
  std::thread writer([&] {
    while (!go.load()) {
    }
    for (uint64_t p = 0; p < kRamPages; p += 2) Touch(p, 0, 0x77);
  });
  PageBitmap seen(kRamPages);
  go.store(true);
  for (int i = 0; i < 20; ++i) tracker->collect(seen);
  writer.join();
  tracker->collect(seen);
  for (uint64_t p = 0; p < kRamPages; ++p) ASSERT_EQ(seen.test(p), p % 2 == 0) << "page " << p;
}

TEST_F(UffdTrackerTest, ReadsDoNotCount) {
  Touch(3);
  Touch(4);
  ASSERT_EQ(Collect().count(), 2u);
  // Read every page: populated ones (3, 4) and never-touched ones, whose read fault
  // maps them in for the first time.
  volatile const uint8_t* base = mem.host_base();
  uint64_t sum = 0;
  for (uint64_t p = 0; p < kRamPages; ++p) sum += base[p * kPageSize + (p % 4096)];
  EXPECT_EQ(sum, 0u);  // offsets p%4096 of pages 3, 4 are 3, 4: never written there
  EXPECT_TRUE(Collect().empty()) << "read faults must not count as writes";
  // Pages that were first mapped by a read are still write-protected.
  Touch(700);
  Touch(3, 100);
  EXPECT_EQ(Pages(Collect()), (std::vector<uint64_t>{3, 700}));
}

TEST_F(UffdTrackerTest, ManyDisjointRunsAreAllReported) {
  // Every other page: 1024 separate runs, more than one PAGEMAP_SCAN call returns.
  for (uint64_t p = 1; p < kRamPages; p += 2) Touch(p);
  PageBitmap b = Collect();
  EXPECT_EQ(b.count(), kRamPages / 2);
  for (uint64_t p = 0; p < kRamPages; ++p) ASSERT_EQ(b.test(p), p % 2 == 1) << "page " << p;
  // A whole-RAM run is reported too.
  std::memset(mem.host_base(), 1, mem.size());
  EXPECT_EQ(Collect().count(), kRamPages);
  EXPECT_TRUE(Collect().empty());
}

TEST_F(UffdTrackerTest, VmmWritesThroughGuestMemoryAreReported) {
  const uint8_t data[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  ASSERT_TRUE(mem.write(5 * kPageSize - 4, data, sizeof data));  // straddles pages 4 and 5
  EXPECT_EQ(Pages(Collect()), (std::vector<uint64_t>{4, 5}));
  EXPECT_TRUE(Collect().empty());
  ASSERT_TRUE(mem.write_obj(1234 * kPageSize + 8, uint64_t(99)));
  EXPECT_EQ(Pages(Collect()), (std::vector<uint64_t>{1234}));
}

TEST_F(UffdTrackerTest, NotedWritesAreReportedEvenWithoutAWrite) {
  // Device code notes pages it may write (a descriptor's buffer): they count even if
  // the bytes happen not to change, and even though no fault happened here.
  mem.note_write(77 * kPageSize + 10, 1);
  mem.note_write(mem.host_base() + 300 * kPageSize + 4000, 200);  // pages 300, 301
  mem.note_write(uint64_t(0), 0);                                     // empty: nothing
  EXPECT_EQ(Pages(Collect()), (std::vector<uint64_t>{77, 300, 301}));
  EXPECT_TRUE(Collect().empty()) << "noted pages are forgotten once collected";
}

TEST_F(UffdTrackerTest, CollectAddsToWhatTheBitmapHeld) {
  PageBitmap b(kRamPages);
  b.set(1);
  Touch(2);
  mem.note_write(3 * kPageSize, 1);
  tracker->collect(b);
  EXPECT_EQ(Pages(b), (std::vector<uint64_t>{1, 2, 3}));
}

TEST_F(UffdTrackerTest, NotesStopWhenTheTrackerGoesAndANewOneStartsClean) {
  tracker.reset();
  mem.note_write(5 * kPageSize, 1);  // no tracker: not recorded anywhere
  Touch(6);
  tracker = MakeUffdDirtyTracker(mem);
  EXPECT_TRUE(Collect().empty());
  Touch(8);
  mem.note_write(9 * kPageSize, 1);
  EXPECT_EQ(Pages(Collect()), (std::vector<uint64_t>{8, 9}));
}

TEST_F(UffdTrackerTest, RandomWritesOverManyIntervals) {
  // Each collect must name exactly the pages written in its interval, and every page
  // whose bytes differ from a shadow copy taken at the previous collect.
  std::mt19937_64 rng(12345);
  std::vector<uint8_t> shadow(mem.host_base(), mem.host_base() + mem.size());
  for (int round = 0; round < 8; ++round) {
    std::set<uint64_t> written;
    const int writes = 1 + int(rng() % 300);
    for (int i = 0; i < writes; ++i) {
      const uint64_t at = rng() % mem.size();
      mem.host_base()[at] = uint8_t(mem.host_base()[at] + 1 + rng() % 200);
      written.insert(at / kPageSize);
    }
    PageBitmap got = Collect();
    EXPECT_EQ(Pages(got), std::vector<uint64_t>(written.begin(), written.end())) << "round " << round;
    for (uint64_t p = 0; p < kRamPages; ++p) {
      const bool changed =
          std::memcmp(shadow.data() + p * kPageSize, mem.host_base() + p * kPageSize, kPageSize) != 0;
      if (changed) {
        ASSERT_TRUE(got.test(p)) << "round " << round << ": page " << p << " changed, not reported";
      }
    }
    shadow.assign(mem.host_base(), mem.host_base() + mem.size());
  }
}

}  // namespace
}  // namespace ftvm::vmm
