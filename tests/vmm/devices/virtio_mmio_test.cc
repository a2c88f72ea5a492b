#include "vmm/devices/virtio_mmio.h"

#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <memory>

#include "common/error.h"
#include "tests/vmm/devices/test_driver.h"

namespace ftvm::vmm {
namespace {

using testing::Feature;
using testing::InitMmio;
using testing::RecordingSink;
using testing::TestRing;

constexpr uint64_t kData = 0x100000;
constexpr unsigned kLine = 5;

// A two-queue device that copies each chain's readable bytes into its writable
// bytes: enough to see the transport move buffers without a real backend.
class EchoBackend : public VirtioBackend {
 public:
  uint32_t device_id() const override { return 0x7e; }
  uint64_t device_features() const override {
    return Feature(VIRTIO_F_VERSION_1) | Feature(VIRTIO_F_RING_EVENT_IDX) | Feature(3);
  }
  std::span<const uint8_t> config() const override { return config_; }
  unsigned num_queues() const override { return 2; }
  uint16_t queue_max(unsigned q) const override { return q == 0 ? 16 : 8; }
  void process(unsigned queue, std::span<Virtqueue> queues) override {
    ++processed;
    Virtqueue& q = queues[queue];
    while (q.pop(chain_) == PopResult::kChain) {
      uint8_t buf[256];
      const size_t n = CopyFromIov(chain_.readable, 0, buf, sizeof buf);
      const size_t w = CopyToIov(chain_.writable, 0, buf, n);
      q.push(chain_.head, uint32_t(w));
    }
  }
  void poll(std::span<Virtqueue>) override { ++polled; }
  void reset() override { ++resets; }

  int processed = 0, polled = 0, resets = 0;

 private:
  std::array<uint8_t, 12> config_{0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc};
  DescChain chain_;
};

class VirtioMmioTest : public ::testing::Test {
 protected:
  VirtioMmioTest() {
    auto b = std::make_unique<EchoBackend>();
    echo = b.get();
    dev = std::make_unique<VirtioMmioDevice>("virtio-echo", mem, sink, kLine, std::move(b));
  }
  uint32_t r(uint64_t off) { return uint32_t(dev->mmio_read(off, 4)); }
  void w(uint64_t off, uint32_t v) { dev->mmio_write(off, 4, v); }
  uint64_t all_features() { return Feature(VIRTIO_F_VERSION_1) | Feature(VIRTIO_F_RING_EVENT_IDX); }

  GuestMemory mem = GuestMemory::Create(4ull << 20);
  RecordingSink sink;
  EchoBackend* echo = nullptr;
  std::unique_ptr<VirtioMmioDevice> dev;
  TestRing q0{mem, 16, 0x10000};
  TestRing q1{mem, 8, 0x20000};
};

TEST_F(VirtioMmioTest, IdentityRegisters) {
  EXPECT_EQ(r(VIRTIO_MMIO_MAGIC_VALUE), 0x74726976u);
  EXPECT_EQ(r(VIRTIO_MMIO_VERSION), 2u);
  EXPECT_EQ(r(VIRTIO_MMIO_DEVICE_ID), 0x7eu);
  EXPECT_EQ(r(VIRTIO_MMIO_VENDOR_ID), FTVM_VIRTIO_VENDOR);
  EXPECT_EQ(r(VIRTIO_MMIO_STATUS), 0u);
  EXPECT_EQ(r(VIRTIO_MMIO_CONFIG_GENERATION), 0u);
  EXPECT_EQ(r(0x0f0), 0u);  // undefined register
  EXPECT_EQ(dev->name(), "virtio-echo");
}

TEST_F(VirtioMmioTest, DeviceFeatureWordsFollowSelect) {
  w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
  EXPECT_EQ(r(VIRTIO_MMIO_DEVICE_FEATURES), (1u << VIRTIO_F_RING_EVENT_IDX) | (1u << 3));
  w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
  EXPECT_EQ(r(VIRTIO_MMIO_DEVICE_FEATURES), 1u << (VIRTIO_F_VERSION_1 - 32));
  w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
  EXPECT_EQ(r(VIRTIO_MMIO_DEVICE_FEATURES), 0u);
}

TEST_F(VirtioMmioTest, RegistersNeedAligned32BitAccess) {
  EXPECT_EQ(dev->mmio_read(VIRTIO_MMIO_MAGIC_VALUE, 1), 0u);
  EXPECT_EQ(dev->mmio_read(VIRTIO_MMIO_MAGIC_VALUE, 8), 0u);
  EXPECT_EQ(dev->mmio_read(VIRTIO_MMIO_MAGIC_VALUE + 2, 4), 0u);
  dev->mmio_write(VIRTIO_MMIO_STATUS, 1, VIRTIO_STATUS_ACKNOWLEDGE);
  EXPECT_EQ(r(VIRTIO_MMIO_STATUS), 0u);
}

TEST_F(VirtioMmioTest, ConfigSpaceReadsAnySize) {
  EXPECT_EQ(dev->mmio_read(VIRTIO_MMIO_CONFIG + 0, 1), 0x11u);
  EXPECT_EQ(dev->mmio_read(VIRTIO_MMIO_CONFIG + 1, 2), 0x3322u);
  EXPECT_EQ(dev->mmio_read(VIRTIO_MMIO_CONFIG + 3, 4), 0x77665544u);
  EXPECT_EQ(dev->mmio_read(VIRTIO_MMIO_CONFIG + 4, 8), 0xccbbaa9988776655ull);
  EXPECT_EQ(dev->mmio_read(VIRTIO_MMIO_CONFIG + 10, 4), 0xccbbu);  // past the end reads 0
  EXPECT_EQ(dev->mmio_read(VIRTIO_MMIO_CONFIG + 100, 4), 0u);
  dev->mmio_write(VIRTIO_MMIO_CONFIG, 1, 0);  // read-only: ignored
  EXPECT_EQ(dev->mmio_read(VIRTIO_MMIO_CONFIG, 1), 0x11u);
}

TEST_F(VirtioMmioTest, FullInitSequenceNotifyAndInterrupt) {
  ASSERT_TRUE(InitMmio(*dev, all_features(), {&q0, &q1}));
  EXPECT_EQ(dev->driver_features(), all_features());
  EXPECT_TRUE(dev->queue(0).event_idx());
  std::memcpy(mem.ptr(kData, 4), "ping", 4);
  const uint16_t head = q0.add({{kData, 4, false}, {kData + 64, 16, true}});
  w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
  EXPECT_EQ(echo->processed, 1);
  auto used = q0.take_used();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].id, head);
  EXPECT_EQ(used[0].len, 4u);
  EXPECT_EQ(std::memcmp(mem.ptr(kData + 64, 4), "ping", 4), 0);
  ASSERT_EQ(sink.raised.size(), 1u);
  EXPECT_EQ(sink.raised[0], kLine);
  EXPECT_EQ(r(VIRTIO_MMIO_INTERRUPT_STATUS), kVirtioInterruptUsedRing);
  w(VIRTIO_MMIO_INTERRUPT_ACK, kVirtioInterruptUsedRing);
  EXPECT_EQ(r(VIRTIO_MMIO_INTERRUPT_STATUS), 0u);
}

TEST_F(VirtioMmioTest, UsedEventSuppressesInterrupt) {
  ASSERT_TRUE(InitMmio(*dev, all_features(), {&q0, &q1}));
  q0.set_used_event(1);  // interrupt only once the second entry is used
  q0.add({{kData, 4, false}, {kData + 64, 16, true}});
  w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
  EXPECT_EQ(q0.used_idx(), 1);
  EXPECT_TRUE(sink.raised.empty());
  EXPECT_EQ(r(VIRTIO_MMIO_INTERRUPT_STATUS), 0u);
  q0.add({{kData, 4, false}, {kData + 64, 16, true}});
  w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
  EXPECT_EQ(sink.raised.size(), 1u);
}

TEST_F(VirtioMmioTest, FeaturesOkRefusedForUnofferedFeature) {
  w(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
  w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
  w(VIRTIO_MMIO_DRIVER_FEATURES, 1u << 4);  // not offered
  w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
  w(VIRTIO_MMIO_DRIVER_FEATURES, 1u);
  w(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
  EXPECT_EQ(r(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK, 0u);
}

TEST_F(VirtioMmioTest, FeaturesOkRefusedWithoutVersion1) {
  w(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
  w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
  w(VIRTIO_MMIO_DRIVER_FEATURES, 1u << VIRTIO_F_RING_EVENT_IDX);
  w(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
  EXPECT_EQ(r(VIRTIO_MMIO_STATUS), VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
}

TEST_F(VirtioMmioTest, FeatureWritesAfterFeaturesOkIgnored) {
  ASSERT_TRUE(InitMmio(*dev, Feature(VIRTIO_F_VERSION_1), {&q0, &q1}));
  w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
  w(VIRTIO_MMIO_DRIVER_FEATURES, 1u << VIRTIO_F_RING_EVENT_IDX);
  EXPECT_EQ(dev->driver_features(), Feature(VIRTIO_F_VERSION_1));
}

TEST_F(VirtioMmioTest, QueueRegistersFollowSelect) {
  w(VIRTIO_MMIO_QUEUE_SEL, 0);
  EXPECT_EQ(r(VIRTIO_MMIO_QUEUE_NUM_MAX), 16u);
  w(VIRTIO_MMIO_QUEUE_SEL, 1);
  EXPECT_EQ(r(VIRTIO_MMIO_QUEUE_NUM_MAX), 8u);
  w(VIRTIO_MMIO_QUEUE_SEL, 2);  // no such queue
  EXPECT_EQ(r(VIRTIO_MMIO_QUEUE_NUM_MAX), 0u);
  EXPECT_EQ(r(VIRTIO_MMIO_QUEUE_READY), 0u);
  w(VIRTIO_MMIO_QUEUE_READY, 1);
  EXPECT_EQ(r(VIRTIO_MMIO_QUEUE_READY), 0u);
  EXPECT_FALSE(dev->needs_reset());
}

TEST_F(VirtioMmioTest, QueueConfigIgnoredWhileReadyAndClearedByReadyZero) {
  ASSERT_TRUE(InitMmio(*dev, all_features(), {&q0, &q1}));
  w(VIRTIO_MMIO_QUEUE_SEL, 0);
  w(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x40000);
  EXPECT_EQ(dev->queue(0).desc_gpa(), q0.desc);
  w(VIRTIO_MMIO_QUEUE_READY, 0);
  EXPECT_EQ(r(VIRTIO_MMIO_QUEUE_READY), 0u);
  EXPECT_FALSE(dev->queue(0).ready());
  w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);  // not ready: ignored
  EXPECT_EQ(echo->processed, 0);
}

TEST_F(VirtioMmioTest, NotifyBeforeDriverOkIgnored) {
  w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
  w(VIRTIO_MMIO_QUEUE_NOTIFY, 7);
  dev->poll();
  EXPECT_EQ(echo->processed, 0);
  EXPECT_EQ(echo->polled, 0);
  EXPECT_FALSE(dev->wants_host_events());
}

TEST_F(VirtioMmioTest, PollReachesBackendOnceLive) {
  ASSERT_TRUE(InitMmio(*dev, all_features(), {&q0, &q1}));
  dev->poll();
  dev->poll();
  EXPECT_EQ(echo->polled, 2);
  EXPECT_TRUE(sink.raised.empty());  // nothing used, no interrupt
}

TEST_F(VirtioMmioTest, ResetClearsDeviceState) {
  ASSERT_TRUE(InitMmio(*dev, all_features(), {&q0, &q1}));
  q0.add({{kData, 4, false}, {kData + 64, 16, true}});
  w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
  ASSERT_NE(r(VIRTIO_MMIO_INTERRUPT_STATUS), 0u);
  const int resets_before = echo->resets;
  w(VIRTIO_MMIO_STATUS, 0);
  EXPECT_EQ(r(VIRTIO_MMIO_STATUS), 0u);
  EXPECT_EQ(r(VIRTIO_MMIO_INTERRUPT_STATUS), 0u);
  EXPECT_EQ(dev->driver_features(), 0u);
  EXPECT_EQ(echo->resets, resets_before + 1);
  for (unsigned i = 0; i < 2; ++i) {
    w(VIRTIO_MMIO_QUEUE_SEL, i);
    EXPECT_EQ(r(VIRTIO_MMIO_QUEUE_READY), 0u);
    EXPECT_EQ(dev->queue(i).desc_gpa(), 0u);
  }
  // A second initialisation on fresh rings works from index 0 again.
  TestRing f0(mem, 16, 0x10000), f1(mem, 8, 0x20000);
  ASSERT_TRUE(InitMmio(*dev, all_features(), {&f0, &f1}));
  f0.add({{kData, 4, false}, {kData + 64, 16, true}});
  w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
  EXPECT_EQ(f0.used_idx(), 1);
}

TEST_F(VirtioMmioTest, MalformedRingSetsNeedsResetAndStops) {
  ASSERT_TRUE(InitMmio(*dev, all_features(), {&q0, &q1}));
  q0.write_desc(0, kData, 4, VIRTQ_DESC_F_NEXT, 0);  // loops onto itself
  q0.put_head(0);
  w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
  EXPECT_TRUE(dev->needs_reset());
  EXPECT_NE(r(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET, 0u);
  EXPECT_EQ(r(VIRTIO_MMIO_INTERRUPT_STATUS) & kVirtioInterruptConfig, kVirtioInterruptConfig);
  EXPECT_EQ(sink.raised.size(), 1u);
  // Stopped: further notifies and polls do nothing; the driver cannot clear the bit.
  q1.add({{kData, 4, false}, {kData + 64, 16, true}});
  w(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
  dev->poll();
  EXPECT_EQ(echo->processed, 1);
  EXPECT_EQ(echo->polled, 0);
  EXPECT_EQ(q1.used_idx(), 0);
  w(VIRTIO_MMIO_STATUS, r(VIRTIO_MMIO_STATUS) & ~VIRTIO_STATUS_NEEDS_RESET);
  EXPECT_TRUE(dev->needs_reset());
  // Reset recovers.
  w(VIRTIO_MMIO_STATUS, 0);
  EXPECT_FALSE(dev->needs_reset());
  TestRing f0(mem, 16, 0x10000), f1(mem, 8, 0x20000);
  ASSERT_TRUE(InitMmio(*dev, all_features(), {&f0, &f1}));
}

TEST_F(VirtioMmioTest, EveryRingMalformationSetsNeedsReset) {
  struct Case {
    const char* what;
    void (*corrupt)(TestRing&);
  } cases[] = {
      {"buffer outside RAM", [](TestRing& r) { r.add({{(4ull << 20) - 2, 16, true}}); }},
      {"loop",
       [](TestRing& r) {
         r.write_desc(0, kData, 4, VIRTQ_DESC_F_NEXT, 1);
         r.write_desc(1, kData, 4, VIRTQ_DESC_F_NEXT, 0);
         r.put_head(0);
       }},
      {"chain longer than the queue",
       [](TestRing& r) {
         for (uint16_t i = 0; i < 16; ++i) r.write_desc(i, kData, 4, VIRTQ_DESC_F_NEXT, uint16_t((i + 1) % 16));
         r.put_head(5);
       }},
      {"indirect", [](TestRing& r) {
         r.write_desc(0, kData, 16, kVirtqDescFIndirect, 0);
         r.put_head(0);
       }},
  };
  for (const Case& c : cases) {
    TestRing f0(mem, 16, 0x10000), f1(mem, 8, 0x20000);
    ASSERT_TRUE(InitMmio(*dev, all_features(), {&f0, &f1})) << c.what;
    c.corrupt(f0);
    w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    EXPECT_TRUE(dev->needs_reset()) << c.what;
    EXPECT_EQ(f0.used_idx(), 0) << c.what;
  }
}

TEST_F(VirtioMmioTest, BadQueueSizeAtReadySetsNeedsReset) {
  w(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
  w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
  w(VIRTIO_MMIO_DRIVER_FEATURES, 1);
  w(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
  w(VIRTIO_MMIO_QUEUE_SEL, 0);
  w(VIRTIO_MMIO_QUEUE_NUM, 32);  // above QueueNumMax 16
  w(VIRTIO_MMIO_QUEUE_READY, 1);
  EXPECT_EQ(r(VIRTIO_MMIO_QUEUE_READY), 0u);
  EXPECT_TRUE(dev->needs_reset());
}

TEST_F(VirtioMmioTest, DriverOkWithoutFeaturesOkSetsNeedsReset) {
  w(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_DRIVER_OK);
  EXPECT_TRUE(dev->needs_reset());
  EXPECT_EQ(sink.raised.size(), 1u);
}

TEST_F(VirtioMmioTest, ConstructionRejectsBadBackends) {
  struct NoVersion1 : EchoBackend {
    uint64_t device_features() const override { return 0; }
  };
  struct OddQueue : EchoBackend {
    uint16_t queue_max(unsigned) const override { return 12; }
  };
  EXPECT_THROW(VirtioMmioDevice("x", mem, sink, 1, std::make_unique<NoVersion1>()), Error);
  EXPECT_THROW(VirtioMmioDevice("x", mem, sink, 1, std::make_unique<OddQueue>()), Error);
  EXPECT_THROW(VirtioMmioDevice("x", mem, sink, 1, nullptr), Error);
  EXPECT_THROW(VirtioMmioDevice("x", mem, sink, FTVM_IRQ_LINES, std::make_unique<EchoBackend>()), Error);
}

}  // namespace
}  // namespace ftvm::vmm
