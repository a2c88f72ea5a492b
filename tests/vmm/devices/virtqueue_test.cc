#include "vmm/devices/virtqueue.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "tests/vmm/devices/test_driver.h"

namespace ftvm::vmm {
namespace {

using testing::ActivateOn;
using testing::TestRing;

constexpr uint64_t kRam = 4ull << 20;
constexpr uint64_t kRingBase = 0x10000;
constexpr uint64_t kData = 0x100000;

class VirtqueueTest : public ::testing::Test {
 protected:
  GuestMemory mem = GuestMemory::Create(kRam);
  TestRing ring{mem, 8, kRingBase};
  Virtqueue q{mem, 256};
  DescChain chain;
};

TEST_F(VirtqueueTest, EmptyRingPopsNothing) {
  ASSERT_TRUE(ActivateOn(q, ring, false)) << q.error();
  EXPECT_FALSE(q.has_available());
  EXPECT_EQ(q.pop(chain), PopResult::kEmpty);
  EXPECT_FALSE(q.broken());
}

TEST_F(VirtqueueTest, PopsChainReadableThenWritable) {
  ASSERT_TRUE(ActivateOn(q, ring, false)) << q.error();
  std::memcpy(mem.ptr(kData, 5), "hello", 5);
  const uint16_t head = ring.add({{kData, 5, false}, {kData + 100, 7, false}, {kData + 200, 64, true}});
  ASSERT_TRUE(q.has_available());
  ASSERT_EQ(q.pop(chain), PopResult::kChain);
  EXPECT_EQ(chain.head, head);
  ASSERT_EQ(chain.readable.size(), 2u);
  ASSERT_EQ(chain.writable.size(), 1u);
  EXPECT_EQ(chain.readable_bytes, 12u);
  EXPECT_EQ(chain.writable_bytes, 64u);
  EXPECT_EQ(chain.readable[0].iov_base, mem.ptr(kData, 5));
  EXPECT_EQ(std::memcmp(chain.readable[0].iov_base, "hello", 5), 0);
  EXPECT_EQ(chain.writable[0].iov_base, mem.ptr(kData + 200, 64));
  EXPECT_EQ(q.pop(chain), PopResult::kEmpty);

  q.push(head, 33);
  EXPECT_EQ(ring.used_idx(), 1);
  auto used = ring.take_used();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].id, head);
  EXPECT_EQ(used[0].len, 33u);
}

TEST_F(VirtqueueTest, IovHelpersCrossDescriptorBoundaries) {
  uint8_t a[3] = {1, 2, 3}, b[4] = {4, 5, 6, 7};
  const iovec iov[] = {{a, 3}, {b, 4}};
  uint8_t out[4] = {};
  EXPECT_EQ(CopyFromIov(iov, 2, out, 4), 4u);
  EXPECT_EQ(out[0], 3);
  EXPECT_EQ(out[3], 6);
  EXPECT_EQ(CopyFromIov(iov, 5, out, 4), 2u);  // runs out after 2
  const uint8_t in[3] = {9, 9, 9};
  EXPECT_EQ(CopyToIov(iov, 1, in, 3), 3u);
  EXPECT_EQ(a[1], 9);
  EXPECT_EQ(b[0], 9);
  EXPECT_EQ(b[1], 5);
  std::vector<iovec> slice;
  EXPECT_EQ(SliceIov(iov, 2, 3, slice), 3u);
  ASSERT_EQ(slice.size(), 2u);
  EXPECT_EQ(slice[0].iov_base, a + 2);
  EXPECT_EQ(slice[0].iov_len, 1u);
  EXPECT_EQ(slice[1].iov_len, 2u);
}

TEST_F(VirtqueueTest, IndexWrapsAroundAt65536) {
  ASSERT_TRUE(ActivateOn(q, ring, true)) << q.error();
  ring.start_at(65533);
  q.restore_indices(65533, 65533);
  std::vector<uint16_t> heads;
  for (int i = 0; i < 6; ++i) heads.push_back(ring.add({{kData + 64ull * i, 16, true}}));
  EXPECT_EQ(ring.avail_idx(), 3);  // wrapped
  ring.set_used_event(2);          // interrupt once used idx passes 2 (after the wrap)
  for (int i = 0; i < 6; ++i) {
    ASSERT_EQ(q.pop(chain), PopResult::kChain) << "chain " << i << ": " << q.error();
    EXPECT_EQ(chain.head, heads[i]);
    EXPECT_EQ(chain.writable[0].iov_base, mem.ptr(kData + 64ull * i, 16));
    q.push(chain.head, uint32_t(i));
  }
  EXPECT_EQ(q.pop(chain), PopResult::kEmpty);
  EXPECT_EQ(q.last_avail_idx(), 3);
  EXPECT_EQ(ring.used_idx(), 3);
  auto used = ring.take_used();
  ASSERT_EQ(used.size(), 6u);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(used[i].id, heads[i]);
  EXPECT_TRUE(q.needs_interrupt());   // used idx moved 65533 -> 3, past used_event 2
  EXPECT_FALSE(q.needs_interrupt());  // nothing new since
}

TEST_F(VirtqueueTest, UsedEventSuppressesInterrupts) {
  ASSERT_TRUE(ActivateOn(q, ring, true)) << q.error();
  ring.set_used_event(2);  // driver: "interrupt me when entry #2 is used"
  for (int i = 0; i < 4; ++i) ring.add({{kData, 16, true}});
  ASSERT_EQ(q.pop(chain), PopResult::kChain);
  q.push(chain.head, 0);  // used idx 1: event 2 not reached
  EXPECT_FALSE(q.needs_interrupt());
  ASSERT_EQ(q.pop(chain), PopResult::kChain);
  q.push(chain.head, 0);  // used idx 2: still not past entry #2
  EXPECT_FALSE(q.needs_interrupt());
  ASSERT_EQ(q.pop(chain), PopResult::kChain);
  q.push(chain.head, 0);  // used idx 3: entry #2 used
  EXPECT_TRUE(q.needs_interrupt());
  ASSERT_EQ(q.pop(chain), PopResult::kChain);
  q.push(chain.head, 0);  // already signalled past the event
  EXPECT_FALSE(q.needs_interrupt());
}

TEST_F(VirtqueueTest, NoInterruptFlagWithoutEventIdx) {
  ASSERT_TRUE(ActivateOn(q, ring, false)) << q.error();
  ring.add({{kData, 16, true}});
  ring.add({{kData, 16, true}});
  ring.set_avail_flags(kVirtqAvailFNoInterrupt);
  ASSERT_EQ(q.pop(chain), PopResult::kChain);
  q.push(chain.head, 0);
  EXPECT_FALSE(q.needs_interrupt());
  ring.set_avail_flags(0);
  ASSERT_EQ(q.pop(chain), PopResult::kChain);
  q.push(chain.head, 0);
  EXPECT_TRUE(q.needs_interrupt());
}

TEST_F(VirtqueueTest, AvailEventSuppressesDriverKicks) {
  ASSERT_TRUE(ActivateOn(q, ring, true)) << q.error();
  ring.add({{kData, 16, false}});
  ASSERT_EQ(q.pop(chain), PopResult::kChain);
  q.push(chain.head, 0);
  q.disable_notifications();
  // The driver adds chain #1 (idx 1 -> 2) and #2: no kick for either.
  EXPECT_FALSE(ring.driver_would_kick(1, 2, true));
  EXPECT_FALSE(ring.driver_would_kick(2, 3, true));
  q.enable_notifications();
  EXPECT_EQ(ring.avail_event(), 1);
  EXPECT_TRUE(ring.driver_would_kick(1, 2, true));
  EXPECT_TRUE(ring.driver_would_kick(1, 5, true));  // a batch across the event kicks once
}

TEST_F(VirtqueueTest, NoNotifyFlagWithoutEventIdx) {
  ASSERT_TRUE(ActivateOn(q, ring, false)) << q.error();
  q.disable_notifications();
  EXPECT_EQ(ring.used_flags(), kVirtqUsedFNoNotify);
  EXPECT_FALSE(ring.driver_would_kick(0, 1, false));
  q.enable_notifications();
  EXPECT_EQ(ring.used_flags(), 0);
}

TEST_F(VirtqueueTest, UnpopReturnsTheChain) {
  ASSERT_TRUE(ActivateOn(q, ring, false)) << q.error();
  const uint16_t head = ring.add({{kData, 16, true}});
  ASSERT_EQ(q.pop(chain), PopResult::kChain);
  q.unpop();
  EXPECT_TRUE(q.has_available());
  ASSERT_EQ(q.pop(chain), PopResult::kChain);
  EXPECT_EQ(chain.head, head);
}

TEST_F(VirtqueueTest, ZeroLengthDescriptorsAreSkipped) {
  ASSERT_TRUE(ActivateOn(q, ring, false)) << q.error();
  ring.add({{kData, 0, false}, {kData, 4, false}, {kData + 8, 0, true}});
  ASSERT_EQ(q.pop(chain), PopResult::kChain) << q.error();
  EXPECT_EQ(chain.readable.size(), 1u);
  EXPECT_TRUE(chain.writable.empty());
}

// ---- Malformed rings: the queue breaks with a reason; nothing crashes.

TEST_F(VirtqueueTest, BufferOutsideRamBreaksQueue) {
  ASSERT_TRUE(ActivateOn(q, ring, false)) << q.error();
  ring.add({{kRam - 8, 16, true}});
  EXPECT_EQ(q.pop(chain), PopResult::kBroken);
  EXPECT_TRUE(q.broken());
  EXPECT_NE(q.error().find("outside guest RAM"), std::string::npos) << q.error();
  // Stays stopped: no further pops, pushes or interrupts.
  EXPECT_EQ(q.pop(chain), PopResult::kBroken);
  EXPECT_FALSE(q.has_available());
  q.push(0, 0);
  EXPECT_EQ(ring.used_idx(), 0);
}

TEST_F(VirtqueueTest, AddressOverflowBreaksQueue) {
  ASSERT_TRUE(ActivateOn(q, ring, false)) << q.error();
  ring.add({{~0ull - 4, 16, false}});
  EXPECT_EQ(q.pop(chain), PopResult::kBroken);
  EXPECT_NE(q.error().find("outside guest RAM"), std::string::npos) << q.error();
}

TEST_F(VirtqueueTest, DescriptorLoopBreaksQueue) {
  ASSERT_TRUE(ActivateOn(q, ring, false)) << q.error();
  ring.write_desc(0, kData, 4, VIRTQ_DESC_F_NEXT, 1);
  ring.write_desc(1, kData, 4, VIRTQ_DESC_F_NEXT, 2);
  ring.write_desc(2, kData, 4, VIRTQ_DESC_F_NEXT, 0);
  ring.put_head(0);
  EXPECT_EQ(q.pop(chain), PopResult::kBroken);
  EXPECT_NE(q.error().find("loops back to descriptor 0"), std::string::npos) << q.error();
}

TEST_F(VirtqueueTest, ChainThroughAllDescriptorsThenLoopBreaksQueue) {
  ASSERT_TRUE(ActivateOn(q, ring, false)) << q.error();
  for (uint16_t i = 0; i < 8; ++i) ring.write_desc(i, kData, 4, VIRTQ_DESC_F_NEXT, uint16_t((i + 1) % 8));
  ring.put_head(3);
  EXPECT_EQ(q.pop(chain), PopResult::kBroken);
  EXPECT_NE(q.error().find("longer than the queue size 8"), std::string::npos) << q.error();
}

TEST_F(VirtqueueTest, NextOutOfRangeBreaksQueue) {
  ASSERT_TRUE(ActivateOn(q, ring, false)) << q.error();
  ring.write_desc(0, kData, 4, VIRTQ_DESC_F_NEXT, 8);
  ring.put_head(0);
  EXPECT_EQ(q.pop(chain), PopResult::kBroken);
  EXPECT_NE(q.error().find("links to 8"), std::string::npos) << q.error();
}

TEST_F(VirtqueueTest, HeadOutOfRangeBreaksQueue) {
  ASSERT_TRUE(ActivateOn(q, ring, false)) << q.error();
  ring.put_head(9);
  EXPECT_EQ(q.pop(chain), PopResult::kBroken);
  EXPECT_NE(q.error().find("head 9"), std::string::npos) << q.error();
}

TEST_F(VirtqueueTest, AvailIndexTooFarAheadBreaksQueue) {
  ASSERT_TRUE(ActivateOn(q, ring, false)) << q.error();
  ring.start_at(9);  // 9 chains outstanding on an 8-entry ring
  EXPECT_EQ(q.pop(chain), PopResult::kBroken);
  EXPECT_NE(q.error().find("ahead of the device"), std::string::npos) << q.error();
}

TEST_F(VirtqueueTest, IndirectDescriptorBreaksQueue) {
  ASSERT_TRUE(ActivateOn(q, ring, false)) << q.error();
  ring.write_desc(0, kData, 16, kVirtqDescFIndirect, 0);
  ring.put_head(0);
  EXPECT_EQ(q.pop(chain), PopResult::kBroken);
  EXPECT_NE(q.error().find("indirect"), std::string::npos) << q.error();
}

TEST_F(VirtqueueTest, ReadableAfterWritableBreaksQueue) {
  ASSERT_TRUE(ActivateOn(q, ring, false)) << q.error();
  ring.add({{kData, 4, true}, {kData + 8, 4, false}});
  EXPECT_EQ(q.pop(chain), PopResult::kBroken);
  EXPECT_NE(q.error().find("follows a device-writable"), std::string::npos) << q.error();
}

TEST_F(VirtqueueTest, ActivateRejectsBadLayouts) {
  {
    Virtqueue bad(mem, 256);
    bad.set_size(6);
    bad.set_desc_gpa(ring.desc);
    bad.set_driver_gpa(ring.avail);
    bad.set_device_gpa(ring.used);
    EXPECT_FALSE(bad.activate());
    EXPECT_NE(bad.error().find("power of two"), std::string::npos) << bad.error();
  }
  {
    Virtqueue bad(mem, 256);
    bad.set_size(8);
    bad.set_desc_gpa(ring.desc + 8);  // not 16-byte aligned
    bad.set_driver_gpa(ring.avail);
    bad.set_device_gpa(ring.used);
    EXPECT_FALSE(bad.activate());
    EXPECT_NE(bad.error().find("aligned"), std::string::npos) << bad.error();
  }
  {
    Virtqueue bad(mem, 256);
    bad.set_size(8);
    bad.set_desc_gpa(ring.desc);
    bad.set_driver_gpa(ring.avail);
    bad.set_device_gpa(kRam - 16);  // device area runs past the end of RAM
    EXPECT_FALSE(bad.activate());
    EXPECT_NE(bad.error().find("outside guest RAM"), std::string::npos) << bad.error();
  }
  {
    Virtqueue bad(mem, 4);
    bad.set_size(8);  // above the maximum
    EXPECT_FALSE(bad.activate());
  }
}

TEST_F(VirtqueueTest, ResetClearsBrokenState) {
  ASSERT_TRUE(ActivateOn(q, ring, false)) << q.error();
  ring.put_head(9);
  ASSERT_EQ(q.pop(chain), PopResult::kBroken);
  q.reset();
  EXPECT_FALSE(q.broken());
  EXPECT_FALSE(q.ready());
  TestRing fresh(mem, 8, kRingBase);
  ASSERT_TRUE(ActivateOn(q, fresh, false)) << q.error();
  fresh.add({{kData, 4, true}});
  EXPECT_EQ(q.pop(chain), PopResult::kChain);
}

}  // namespace
}  // namespace ftvm::vmm
