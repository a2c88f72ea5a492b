// Device snapshots (Device::save/restore, vmm/snapshot.proto) on real device
// models: state is changed through MMIO registers as a guest would, saved, restored
// into a fresh device, and compared both as saved bytes and by behaviour. Virtio
// devices run over real rings in real guest RAM (a memfd) with the test driver of
// tests/vmm/devices, and a real image file.
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/unique_fd.h"
#include "tests/vmm/devices/test_driver.h"
#include "vmm/abi/ftvm_abi.h"
#include "vmm/devices/clock_device.h"
#include "vmm/devices/console.h"
#include "vmm/devices/irq_controller.h"
#include "vmm/devices/power.h"
#include "vmm/devices/rng.h"
#include "vmm/devices/timer.h"
#include "vmm/devices/virtio_blk.h"
#include "vmm/devices/virtio_mmio.h"
#include "vmm/devices/virtio_net.h"
#include "vmm/devices/virtqueue.h"
#include "vmm/output_hash.h"
#include "vmm/snapshot.pb.h"

namespace ftvm::vmm {
namespace {

using testing::Feature;
using testing::InitMmio;
using testing::RecordingSink;
using testing::TestRing;

LiveDeviceIo live_io;

std::string Saved(const Device& d) {
  snapshot::Device s;
  EXPECT_TRUE(d.save(s)) << d.name();
  return s.SerializeAsString();
}

snapshot::Device SavedMessage(const Device& d) {
  snapshot::Device s;
  EXPECT_TRUE(d.save(s)) << d.name();
  return s;
}

// One state of every kind, and none at all: for "restore() of another device's
// state throws".
std::vector<snapshot::Device> StatesOfEveryKind() {
  std::vector<snapshot::Device> v(10);
  v[0].set_name("empty");
  v[1].mutable_irq()->set_pending(1);
  v[2].mutable_timer()->set_fired(1);
  v[3].mutable_console()->set_bytes(1);
  v[4].mutable_power()->set_off(true);
  v[5].mutable_virtio()->mutable_net()->set_tx_frames(1);
  v[5].mutable_virtio()->add_queues();
  v[5].mutable_virtio()->add_queues();
  v[6].mutable_virtio()->mutable_blk()->set_reads(1);
  v[6].mutable_virtio()->add_queues();
  // Virtio states with the other backend's queue count, or no backend at all.
  v[7].mutable_virtio()->mutable_blk()->set_reads(1);
  v[7].mutable_virtio()->add_queues();
  v[7].mutable_virtio()->add_queues();
  v[8].mutable_virtio()->mutable_net()->set_rx_frames(1);
  v[8].mutable_virtio()->add_queues();
  v[9].mutable_virtio()->add_queues();
  return v;
}

// Restoring any state not of `d`'s own kind throws ftvm::Error naming the device.
void ExpectRejectsForeignStates(Device& d, snapshot::Device::StateCase own,
                                std::optional<snapshot::Virtio::BackendCase> own_backend = std::nullopt) {
  for (const snapshot::Device& s : StatesOfEveryKind()) {
    const bool same = s.state_case() == own &&
                      (!own_backend || s.virtio().backend_case() == *own_backend);
    if (same) continue;
    try {
      d.restore(s);
      ADD_FAILURE() << d.name() << " accepted a foreign state: " << s.ShortDebugString();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string(d.name())), std::string::npos)
          << "the message should name the device: " << e.what();
    }
  }
}

// ---- Devices without state -----------------------------------------------------

TEST(DeviceSnapshot, ClockAndRngHaveNoState) {
  auto clock = MakeSystemClock();
  auto random = MakeSystemRandom();
  GuestMemory mem = GuestMemory::Create(1 << 20);
  ClockDevice c(*clock, live_io);
  Rng r(mem, *random, live_io);
  snapshot::Device s;
  EXPECT_FALSE(c.save(s));
  EXPECT_FALSE(r.save(s));
  EXPECT_EQ(s.state_case(), snapshot::Device::STATE_NOT_SET);
}

// ---- Interrupt controller ------------------------------------------------------

TEST(DeviceSnapshot, InterruptControllerRoundTrip) {
  InterruptController a([] { return false; }, live_io);
  a.raise(0);
  a.raise(3);
  a.raise(5);
  a.raise(31);
  a.mmio_write(FTVM_IRQ_MASK, 4, 1u << 3);
  a.mmio_write(FTVM_IRQ_ACK, 4, 1u << 31);
  ASSERT_EQ(a.next_vector(), std::optional<uint8_t>(FTVM_IRQ_VECTOR_BASE + 0));
  a.delivered(FTVM_IRQ_VECTOR_BASE + 0);
  ASSERT_EQ(a.mmio_read(FTVM_IRQ_PENDING, 4), (1u << 3) | (1u << 5));
  ASSERT_EQ(a.mmio_read(FTVM_IRQ_DELIVERED, 8), 1u);

  const snapshot::Device s = SavedMessage(a);
  EXPECT_EQ(s.irq().pending(), (1u << 3) | (1u << 5));
  EXPECT_EQ(s.irq().mask(), 1u << 3);
  EXPECT_EQ(s.irq().delivered(), 1u);

  // Into a fresh controller, and into one with other state of its own.
  InterruptController fresh([] { return false; }, live_io);
  InterruptController busy([] { return false; }, live_io);
  busy.raise(7);
  busy.mmio_write(FTVM_IRQ_MASK, 4, 0xffff);
  busy.delivered(FTVM_IRQ_VECTOR_BASE + 9);
  for (InterruptController* b : {&fresh, &busy}) {
    b->restore(s);
    EXPECT_EQ(Saved(*b), Saved(a));
    EXPECT_EQ(b->mmio_read(FTVM_IRQ_PENDING, 4), (1u << 3) | (1u << 5));
    EXPECT_EQ(b->mmio_read(FTVM_IRQ_MASK, 4), 1u << 3);
    EXPECT_EQ(b->mmio_read(FTVM_IRQ_DELIVERED, 8), 1u);
    EXPECT_TRUE(b->has_deliverable());
    // Line 3 is masked: line 5 goes next, then nothing.
    EXPECT_EQ(b->next_vector(), std::optional<uint8_t>(FTVM_IRQ_VECTOR_BASE + 5));
    b->delivered(FTVM_IRQ_VECTOR_BASE + 5);
    EXPECT_FALSE(b->has_deliverable());
    EXPECT_EQ(b->delivered_count(), 2u);
    b->mmio_write(FTVM_IRQ_MASK, 4, 0);
    EXPECT_EQ(b->next_vector(), std::optional<uint8_t>(FTVM_IRQ_VECTOR_BASE + 3));
  }
  ExpectRejectsForeignStates(fresh, snapshot::Device::kIrq);
}

// ---- Timer ---------------------------------------------------------------------

TEST(DeviceSnapshot, TimerRoundTrip) {
  RecordingSink sink_a;
  Timer a(sink_a, live_io);
  EXPECT_FALSE(a.armed());
  a.mmio_write(FTVM_TIMER_ARM_NS, 8, 10'000'000'000ull);  // 10 s: never fires in this test
  EXPECT_TRUE(a.armed());
  EXPECT_TRUE(a.expire());
  EXPECT_EQ(sink_a.raised, std::vector<unsigned>{FTVM_IRQ_TIMER});
  a.mmio_write(FTVM_TIMER_ARM_NS, 8, 10'000'000'000ull);
  ASSERT_EQ(a.mmio_read(FTVM_TIMER_FIRED, 8), 1u);

  const snapshot::Device armed = SavedMessage(a);
  EXPECT_TRUE(armed.timer().armed());
  EXPECT_EQ(armed.timer().fired(), 1u);

  RecordingSink sink_b;
  Timer b(sink_b, live_io);
  b.restore(armed);
  EXPECT_EQ(Saved(b), Saved(a));
  EXPECT_TRUE(b.armed());
  EXPECT_EQ(b.mmio_read(FTVM_TIMER_FIRED, 8), 1u);
  EXPECT_TRUE(sink_b.raised.empty()) << "restoring raises nothing";
  // Armed: a (replayed) expiry fires it, exactly once.
  EXPECT_TRUE(b.expire());
  EXPECT_FALSE(b.expire());
  EXPECT_EQ(b.fired(), 2u);
  EXPECT_EQ(sink_b.raised, std::vector<unsigned>{FTVM_IRQ_TIMER});

  // A disarmed state restored over an armed timer disarms it.
  a.mmio_write(FTVM_TIMER_ARM_NS, 8, 0);
  const snapshot::Device disarmed = SavedMessage(a);
  EXPECT_FALSE(disarmed.timer().armed());
  Timer c(sink_b, live_io);
  c.mmio_write(FTVM_TIMER_ARM_NS, 8, 10'000'000'000ull);
  c.restore(disarmed);
  EXPECT_FALSE(c.armed());
  EXPECT_FALSE(c.expire());
  EXPECT_EQ(c.fired(), 1u);
  ExpectRejectsForeignStates(c, snapshot::Device::kTimer);
}

// A VM that goes live from a snapshot (a replica joined live taking over, a
// migration) re-arms its host timer with the interval the guest armed it with.
TEST(DeviceSnapshot, RestoredArmedTimerGoesLiveWithTheGuestsInterval) {
  RecordingSink sink_a, sink_b;
  Timer a(sink_a, live_io);
  a.mmio_write(FTVM_TIMER_ARM_NS, 8, 20'000'000);
  const snapshot::Device armed = SavedMessage(a);
  EXPECT_EQ(armed.timer().interval_ns(), 20'000'000u);
  Timer b(sink_b, live_io);
  b.restore(armed);
  b.go_live();
  pollfd p{b.host_fds().at(0), POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 2000), 1) << "the host timer must run";
}

// ---- Console -------------------------------------------------------------------

class ConsoleSnapshotTest : public ::testing::Test {
 protected:
  static UniqueFd MemFile() { return UniqueFd(memfd_create("console-out", MFD_CLOEXEC)); }
  static std::string Contents(int fd) {
    std::string out(4096, '\0');
    const ssize_t n = pread(fd, out.data(), out.size(), 0);
    out.resize(n > 0 ? size_t(n) : 0);
    return out;
  }
  GuestMemory mem = GuestMemory::Create(1 << 20);
};

TEST_F(ConsoleSnapshotTest, RoundTripKeepsCountAndOutputHash) {
  UniqueFd out_a = MemFile();
  const int fd_a = out_a.get();
  Console a(mem, -1, std::move(out_a));
  // The three paths a guest prints through: PUTC, WRITE_IOV, the port.
  a.mmio_write(FTVM_CONSOLE_PUTC, 1, 'h');
  ASSERT_TRUE(mem.write(0x2000, "ello", 4));
  ASSERT_TRUE(mem.write_obj(0x1000, ftvm_iovec{0x2000, 4}));
  a.mmio_write(FTVM_CONSOLE_WRITE_IOV, 8, 0x1000);
  a.port_write(FTVM_PORT_CONSOLE, 1, '!');
  EXPECT_EQ(Contents(fd_a), "hello!");
  uint64_t expected = 0;
  for (const char* piece : {"h", "ello", "!"})
    expected = OutputHash(expected, {reinterpret_cast<const uint8_t*>(piece), std::strlen(piece)});
  EXPECT_EQ(a.output_hash(), expected);

  const snapshot::Device s = SavedMessage(a);
  EXPECT_EQ(s.console().bytes(), 6u);
  EXPECT_EQ(s.console().output_hash(), expected);

  UniqueFd out_b = MemFile();
  const int fd_b = out_b.get();
  Console b(mem, -1, std::move(out_b));
  b.mmio_write(FTVM_CONSOLE_PUTC, 1, 'z');  // state of its own, overwritten
  b.restore(s);
  EXPECT_EQ(Saved(b), Saved(a));
  EXPECT_EQ(b.bytes_written(), 6u);
  // Both go on printing the same: the same hash, and it moved.
  a.mmio_write(FTVM_CONSOLE_PUTC, 1, 'X');
  b.mmio_write(FTVM_CONSOLE_PUTC, 1, 'X');
  EXPECT_EQ(b.output_hash(), a.output_hash());
  EXPECT_NE(b.output_hash(), expected);
  EXPECT_EQ(b.bytes_written(), 7u);
  EXPECT_EQ(Contents(fd_b), "zX") << "restoring prints nothing";
  ExpectRejectsForeignStates(b, snapshot::Device::kConsole);
}

// ---- Power ---------------------------------------------------------------------

TEST(DeviceSnapshot, PowerRoundTrip) {
  Power a;
  a.mmio_write(FTVM_POWER_OFF, 4, 0x107);  // the exit code is the low byte
  ASSERT_EQ(a.exit_code(), std::optional<int>(7));
  const snapshot::Device off = SavedMessage(a);
  EXPECT_TRUE(off.power().off());
  EXPECT_EQ(off.power().exit_code(), 7);

  Power b;
  b.restore(off);
  EXPECT_EQ(Saved(b), Saved(a));
  EXPECT_EQ(b.exit_code(), std::optional<int>(7));
  b.port_write(FTVM_PORT_POWER, 1, 9);  // the first power-off wins
  EXPECT_EQ(b.exit_code(), std::optional<int>(7));

  // Off with exit code 0 is not "on".
  Power zero;
  zero.port_write(FTVM_PORT_POWER, 1, 0);
  Power z2;
  z2.restore(SavedMessage(zero));
  EXPECT_EQ(z2.exit_code(), std::optional<int>(0));

  // An "on" state restored over a powered-off device turns it back on.
  const snapshot::Device on = SavedMessage(Power());
  EXPECT_FALSE(on.power().off());
  b.restore(on);
  EXPECT_EQ(b.exit_code(), std::nullopt);
  b.port_write(FTVM_PORT_POWER, 1, 3);
  EXPECT_EQ(b.exit_code(), std::optional<int>(3));
  ExpectRejectsForeignStates(b, snapshot::Device::kPower);
}

// ---- Virtqueue -----------------------------------------------------------------

class VirtqueueSnapshotTest : public ::testing::Test {
 protected:
  std::string SavedQueue(const Virtqueue& q) {
    snapshot::Virtqueue s;
    q.save(s);
    return s.SerializeAsString();
  }
  GuestMemory mem = GuestMemory::Create(1 << 20);
  TestRing ring{mem, 16, 0x4000};
};

TEST_F(VirtqueueSnapshotTest, ReadyQueueRoundTrip) {
  Virtqueue a(mem, 256);
  ASSERT_TRUE(testing::ActivateOn(a, ring, true));
  // Indices part-way round (and wrapped), as a running driver leaves them.
  ring.start_at(65530);
  a.restore_indices(65530, 65530);
  for (int i = 0; i < 4; ++i) ring.add({{0x20000 + 0x100ull * i, 64, true}});
  DescChain c;
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(a.pop(c), PopResult::kChain);
    a.push(c.head, 10);
  }
  a.needs_interrupt();
  snapshot::Virtqueue s;
  a.save(s);
  EXPECT_TRUE(s.ready());
  EXPECT_TRUE(s.event_idx());
  EXPECT_EQ(s.size(), 16u);
  EXPECT_EQ(s.last_avail(), uint16_t(65533));
  EXPECT_EQ(s.used_idx(), uint16_t(65533));
  EXPECT_EQ(s.desc_gpa(), ring.desc);
  EXPECT_EQ(s.driver_gpa(), ring.avail);
  EXPECT_EQ(s.device_gpa(), ring.used);

  Virtqueue b(mem, 256);
  b.restore(s);
  EXPECT_EQ(SavedQueue(b), SavedQueue(a));
  EXPECT_TRUE(b.ready());
  EXPECT_FALSE(b.broken());
  // It goes on where `a` stopped: the fourth chain, used index 65533 -> 65534.
  EXPECT_TRUE(b.has_available());
  ASSERT_EQ(b.pop(c), PopResult::kChain);
  EXPECT_EQ(c.head, 3);
  b.push(c.head, 20);
  EXPECT_EQ(ring.used_idx(), uint16_t(65534));
  EXPECT_EQ(ring.used_elem(65533).id, 3u);
  EXPECT_EQ(ring.used_elem(65533).len, 20u);
  EXPECT_EQ(b.pop(c), PopResult::kEmpty);
}

TEST_F(VirtqueueSnapshotTest, ConfiguredButNotReadyQueueRoundTrip) {
  Virtqueue a(mem, 256);
  a.set_size(8);
  a.set_desc_gpa(0x8000);
  a.set_driver_gpa(0x9000);
  a.set_device_gpa(0xa000);
  Virtqueue b(mem, 256);
  ASSERT_TRUE(testing::ActivateOn(b, ring, false));  // a ready queue, overwritten
  snapshot::Virtqueue s;
  a.save(s);
  b.restore(s);
  EXPECT_EQ(SavedQueue(b), SavedQueue(a));
  EXPECT_FALSE(b.ready());
  EXPECT_EQ(b.size(), 8);
  EXPECT_EQ(b.desc_gpa(), 0x8000u);
  EXPECT_EQ(b.driver_gpa(), 0x9000u);
  EXPECT_EQ(b.device_gpa(), 0xa000u);
  EXPECT_FALSE(b.has_available());
}

TEST_F(VirtqueueSnapshotTest, ReadyQueueOutsideRamIsRestoredBroken) {
  Virtqueue a(mem, 256);
  ASSERT_TRUE(testing::ActivateOn(a, ring, false));
  snapshot::Virtqueue s;
  a.save(s);
  s.set_device_gpa(mem.size() - 8);  // the used ring no longer fits
  Virtqueue b(mem, 256);
  b.restore(s);
  EXPECT_TRUE(b.broken());
  EXPECT_FALSE(b.ready());
  EXPECT_NE(b.error().find("outside guest RAM"), std::string::npos) << b.error();
  DescChain c;
  EXPECT_EQ(b.pop(c), PopResult::kBroken);
}

TEST_F(VirtqueueSnapshotTest, SizeBeyond16BitsIsRestoredBroken) {
  // 65536 + 16 would truncate to the valid size 16 (found by fuzz/virtqueue_fuzz.cc).
  Virtqueue a(mem, 256);
  ASSERT_TRUE(testing::ActivateOn(a, ring, false));
  snapshot::Virtqueue s;
  a.save(s);
  s.set_size(65536 + 16);
  Virtqueue b(mem, 256);
  b.restore(s);
  EXPECT_TRUE(b.broken());
  EXPECT_NE(b.error().find("size 65552 does not fit"), std::string::npos) << b.error();
  DescChain c;
  EXPECT_EQ(b.pop(c), PopResult::kBroken);
}

TEST_F(VirtqueueSnapshotTest, QueueBrokenWhileReadyRoundTrip) {
  // A driver publishes a head past the queue size: the ready queue breaks. It stays
  // "ready" (the guest reads QUEUE_READY=1 until it resets the device), so a
  // restored copy must read the same and save the same.
  Virtqueue a(mem, 256);
  ASSERT_TRUE(testing::ActivateOn(a, ring, false));
  ring.add({{0x20000, 64, true}});
  DescChain c;
  ASSERT_EQ(a.pop(c), PopResult::kChain);
  a.push(c.head, 1);
  ring.put_head(200);
  ASSERT_EQ(a.pop(c), PopResult::kBroken);
  ASSERT_TRUE(a.broken());
  snapshot::Virtqueue s;
  a.save(s);
  Virtqueue b(mem, 256);
  b.restore(s);
  EXPECT_TRUE(b.broken());
  EXPECT_EQ(b.error(), a.error());
  EXPECT_EQ(b.ready(), a.ready());
  EXPECT_EQ(b.last_avail_idx(), a.last_avail_idx());
  EXPECT_EQ(b.used_idx(), a.used_idx());
  EXPECT_EQ(SavedQueue(b), SavedQueue(a));
  EXPECT_EQ(b.pop(c), PopResult::kBroken);
  b.push(0, 1);  // a broken queue writes nothing
  EXPECT_EQ(ring.used_idx(), 1);
}

// ---- virtio-mmio with virtio-blk -----------------------------------------------

class TempImage {
 public:
  explicit TempImage(uint64_t bytes) {
    char tmpl[] = "/tmp/ftvm-snapshot-test-XXXXXX";
    const int fd = mkstemp(tmpl);
    if (fd < 0) throw SysError("mkstemp");
    path_ = tmpl;
    std::vector<uint8_t> data(bytes);
    for (uint64_t i = 0; i < bytes; ++i) data[i] = uint8_t(i / 512 + i % 7);
    const bool ok = ::write(fd, data.data(), bytes) == ssize_t(bytes);
    ::close(fd);
    if (!ok) throw Error("writing test image");
  }
  ~TempImage() { ::unlink(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

constexpr uint64_t kBlkHdr = 0x100000;
constexpr uint64_t kBlkBufs = 0x200000;
constexpr uint64_t kBlkStatus = 0x300000;

class VirtioBlkSnapshotTest : public ::testing::Test {
 protected:
  std::unique_ptr<VirtioMmioDevice> MakeDevice(RecordingSink& sink) {
    return std::make_unique<VirtioMmioDevice>("virtio-blk", mem, sink, FTVM_IRQ_VIRTIO_BLK,
                                              std::make_unique<VirtioBlk>(image.path(), "", live_io));
  }
  // Request #n: header, data buffers, status byte; published.
  void AddRequest(TestRing& ring, unsigned n, uint32_t type, uint64_t sector, std::vector<TestRing::Buf> data) {
    virtio_blk_req_hdr hdr{type, 0, sector};
    ASSERT_TRUE(mem.write_obj(kBlkHdr + 16ull * n, hdr));
    mem.ptr(kBlkStatus + n, 1)[0] = 0xee;
    std::vector<TestRing::Buf> bufs{{kBlkHdr + 16ull * n, 16, false}};
    bufs.insert(bufs.end(), data.begin(), data.end());
    bufs.push_back({kBlkStatus + n, 1, true});
    ring.add(bufs);
  }
  std::vector<uint8_t> Ram() const { return {mem.host_base(), mem.host_base() + mem.size()}; }
  void SetRam(const std::vector<uint8_t>& bytes) { std::memcpy(mem.host_base(), bytes.data(), bytes.size()); }

  TempImage image{64 * 512};
  GuestMemory mem = GuestMemory::Create(4ull << 20);
  TestRing ring{mem, 16, 0x10000};
};

TEST_F(VirtioBlkSnapshotTest, RestoredDeviceContinuesExactlyLikeTheOriginal) {
  RecordingSink sink_a;
  auto a = MakeDevice(sink_a);
  ASSERT_TRUE(InitMmio(*a, Feature(VIRTIO_F_VERSION_1) | Feature(VIRTIO_F_RING_EVENT_IDX) | Feature(VIRTIO_BLK_F_FLUSH),
                       {&ring}));
  // Some traffic: a write, a flush, a read; interrupt acknowledged in part.
  std::memset(mem.ptr(kBlkBufs, 512), 0x5a, 512);
  AddRequest(ring, 0, VIRTIO_BLK_T_OUT, 4, {{kBlkBufs, 512, false}});
  AddRequest(ring, 1, VIRTIO_BLK_T_FLUSH, 0, {});
  AddRequest(ring, 2, VIRTIO_BLK_T_IN, 3, {{kBlkBufs + 4096, 1024, true}});
  a->mmio_write(VIRTIO_MMIO_QUEUE_NOTIFY, 4, 0);
  ASSERT_EQ(ring.take_used().size(), 3u);
  ASSERT_EQ(mem.ptr(kBlkStatus + 2, 1)[0], VIRTIO_BLK_S_OK);
  a->mmio_write(VIRTIO_MMIO_QUEUE_SEL, 4, 0);
  a->mmio_write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 4, 1);
  ASSERT_EQ(a->interrupt_status(), kVirtioInterruptUsedRing);

  const snapshot::Device s = SavedMessage(*a);
  ASSERT_TRUE(s.has_virtio());
  EXPECT_EQ(s.virtio().status(), a->status());
  EXPECT_EQ(s.virtio().driver_features(), a->driver_features());
  EXPECT_EQ(s.virtio().device_features_sel(), 1u);
  EXPECT_EQ(s.virtio().interrupt_status(), kVirtioInterruptUsedRing);
  ASSERT_EQ(s.virtio().queues_size(), 1);
  EXPECT_TRUE(s.virtio().queues(0).ready());
  EXPECT_EQ(s.virtio().queues(0).used_idx(), 3u);
  ASSERT_TRUE(s.virtio().has_blk());
  EXPECT_EQ(s.virtio().blk().reads(), 1u);
  EXPECT_EQ(s.virtio().blk().writes(), 1u);
  EXPECT_EQ(s.virtio().blk().flushes(), 1u);

  // Go on with `a`: more requests, recording the outcome...
  const std::vector<uint8_t> ram_at_save = Ram();
  TestRing ring_b = ring;  // the driver's own bookkeeping at the save point
  auto more = [&](TestRing& r, Device& d) {
    AddRequest(r, 3, VIRTIO_BLK_T_IN, 4, {{kBlkBufs + 8192, 512, true}});
    AddRequest(r, 4, VIRTIO_BLK_T_IN, 10, {{kBlkBufs + 12288, 2048, true}});
    d.mmio_write(VIRTIO_MMIO_QUEUE_NOTIFY, 4, 0);
    d.mmio_write(VIRTIO_MMIO_INTERRUPT_ACK, 4, kVirtioInterruptUsedRing);
  };
  const size_t raised_before = sink_a.raised.size();
  more(ring, *a);
  const std::vector<unsigned> raised_a(sink_a.raised.begin() + long(raised_before), sink_a.raised.end());
  ASSERT_EQ(mem.ptr(kBlkStatus + 3, 1)[0], VIRTIO_BLK_S_OK);
  ASSERT_EQ(mem.ptr(kBlkBufs + 8192, 1)[0], 0x5a);  // the write before the save
  const std::vector<uint8_t> ram_a = Ram();
  const std::string state_a = Saved(*a);

  // ...then rewind RAM to the save point, restore a fresh device there, and do the
  // same: RAM, device state and interrupts must come out identical.
  SetRam(ram_at_save);
  RecordingSink sink_b;
  auto b = MakeDevice(sink_b);
  b->restore(s);
  {
    snapshot::Device again;
    ASSERT_TRUE(b->save(again));
    EXPECT_EQ(again.SerializeAsString(), s.SerializeAsString()) << "save(restore(s)) != s";
  }
  EXPECT_EQ(b->mmio_read(VIRTIO_MMIO_STATUS, 4), s.virtio().status());
  EXPECT_EQ(b->mmio_read(VIRTIO_MMIO_QUEUE_READY, 4), 1u);
  EXPECT_EQ(b->mmio_read(VIRTIO_MMIO_INTERRUPT_STATUS, 4), kVirtioInterruptUsedRing);
  EXPECT_EQ(b->mmio_read(VIRTIO_MMIO_DEVICE_FEATURES, 4), a->mmio_read(VIRTIO_MMIO_DEVICE_FEATURES, 4))
      << "DEVICE_FEATURES_SEL restored";
  more(ring_b, *b);
  EXPECT_EQ(Saved(*b), state_a);
  EXPECT_TRUE(Ram() == ram_a) << "the restored device wrote guest RAM differently";
  EXPECT_EQ(sink_b.raised, raised_a) << "the same interrupts (EVENT_IDX: none, used_event was passed)";
  ExpectRejectsForeignStates(*b, snapshot::Device::kVirtio, snapshot::Virtio::kBlk);
}

TEST_F(VirtioBlkSnapshotTest, ResetAndHalfInitialisedDevicesRoundTrip) {
  RecordingSink sink;
  auto a = MakeDevice(sink);
  auto w = [&](uint64_t off, uint32_t v) { a->mmio_write(off, 4, v); };
  // Features negotiated, the queue configured but not yet ready.
  w(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
  w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
  w(VIRTIO_MMIO_DRIVER_FEATURES, 1);  // VERSION_1 (bit 32)
  w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
  w(VIRTIO_MMIO_DRIVER_FEATURES, 1u << VIRTIO_BLK_F_FLUSH);
  w(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
  w(VIRTIO_MMIO_QUEUE_SEL, 0);
  w(VIRTIO_MMIO_QUEUE_NUM, 16);
  w(VIRTIO_MMIO_QUEUE_DESC_LOW, uint32_t(ring.desc));
  w(VIRTIO_MMIO_QUEUE_DRIVER_LOW, uint32_t(ring.avail));
  w(VIRTIO_MMIO_QUEUE_DEVICE_LOW, uint32_t(ring.used));
  ASSERT_TRUE(a->status() & VIRTIO_STATUS_FEATURES_OK);
  const snapshot::Device half = SavedMessage(*a);
  EXPECT_FALSE(half.virtio().queues(0).ready());

  RecordingSink sink_b;
  auto b = MakeDevice(sink_b);
  b->restore(half);
  EXPECT_EQ(Saved(*b), Saved(*a));
  EXPECT_EQ(b->driver_features(), (uint64_t(1) << VIRTIO_F_VERSION_1) | (uint64_t(1) << VIRTIO_BLK_F_FLUSH));
  // The driver finishes initialisation on the restored device, and it works.
  b->mmio_write(VIRTIO_MMIO_QUEUE_READY, 4, 1);
  EXPECT_EQ(b->mmio_read(VIRTIO_MMIO_QUEUE_READY, 4), 1u);
  b->mmio_write(VIRTIO_MMIO_STATUS, 4, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK |
                                           VIRTIO_STATUS_DRIVER_OK);
  EXPECT_FALSE(b->needs_reset());
  AddRequest(ring, 0, VIRTIO_BLK_T_IN, 1, {{kBlkBufs, 512, true}});
  b->mmio_write(VIRTIO_MMIO_QUEUE_NOTIFY, 4, 0);
  EXPECT_EQ(mem.ptr(kBlkStatus, 1)[0], VIRTIO_BLK_S_OK);

  // A device reset state restored over a live one resets it.
  b->restore(SavedMessage(*MakeDevice(sink_b)));
  EXPECT_EQ(b->status(), 0u);
  EXPECT_EQ(b->mmio_read(VIRTIO_MMIO_QUEUE_READY, 4), 0u);
  EXPECT_EQ(b->driver_features(), 0u);
}

TEST_F(VirtioBlkSnapshotTest, NeedsResetAfterABrokenRingRoundTrips) {
  RecordingSink sink_a;
  auto a = MakeDevice(sink_a);
  ASSERT_TRUE(InitMmio(*a, Feature(VIRTIO_F_VERSION_1), {&ring}));
  ring.put_head(99);  // past the queue size
  a->mmio_write(VIRTIO_MMIO_QUEUE_NOTIFY, 4, 0);
  ASSERT_TRUE(a->needs_reset());
  ASSERT_EQ(a->mmio_read(VIRTIO_MMIO_QUEUE_READY, 4), 1u);
  const snapshot::Device s = SavedMessage(*a);
  RecordingSink sink_b;
  auto b = MakeDevice(sink_b);
  b->restore(s);
  EXPECT_TRUE(b->needs_reset());
  EXPECT_EQ(b->interrupt_status(), a->interrupt_status());
  // What the guest reads back is the same.
  for (uint64_t reg : {VIRTIO_MMIO_STATUS, VIRTIO_MMIO_QUEUE_READY, VIRTIO_MMIO_INTERRUPT_STATUS})
    EXPECT_EQ(b->mmio_read(reg, 4), a->mmio_read(reg, 4)) << "register " << reg;
  EXPECT_EQ(Saved(*b), Saved(*a));
}

TEST_F(VirtioBlkSnapshotTest, RejectsAVirtioStateWithAnotherQueueCount) {
  RecordingSink sink;
  auto a = MakeDevice(sink);
  snapshot::Device s = SavedMessage(*a);
  s.mutable_virtio()->add_queues();
  try {
    a->restore(s);
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("virtio-blk"), std::string::npos) << e.what();
  }
}

// ---- virtio-mmio with virtio-net (no tap: frames come in through deliver_frame,
// the replayer's path; transmitted frames are hashed and counted) ----------------

constexpr std::array<uint8_t, 6> kMac{0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
constexpr uint64_t kRxBufs = 0x100000;
constexpr uint64_t kTxBufs = 0x200000;
constexpr size_t kNetHdr = VirtioNet::kHdrBytes;

class VirtioNetSnapshotTest : public ::testing::Test {
 protected:
  std::unique_ptr<VirtioMmioDevice> MakeDevice(RecordingSink& sink) {
    return std::make_unique<VirtioMmioDevice>("virtio-net", mem, sink, FTVM_IRQ_VIRTIO_NET,
                                              std::make_unique<VirtioNet>(std::nullopt, kMac, live_io));
  }
  static VirtioNet& Net(VirtioMmioDevice& d) { return static_cast<VirtioNet&>(d.backend()); }
  std::vector<uint8_t> Frame(size_t len, uint8_t seed) {
    std::vector<uint8_t> f(len);
    for (size_t i = 0; i < len; ++i) f[i] = uint8_t(seed * 7 + i);
    return f;
  }
  // One frame received (replayed) and one transmitted.
  void Traffic(VirtioMmioDevice& d, TestRing& rx, TestRing& tx, unsigned n) {
    rx.add({{kRxBufs + 4096ull * n, uint32_t(kNetHdr + 1514), true}});
    std::span<Virtqueue> q = d.live_queues();
    ASSERT_EQ(q.size(), 2u);
    ASSERT_EQ(Net(d).deliver_frame(q[VirtioNet::kRxQueue], Frame(60 + n, uint8_t(n))),
              VirtioNet::RxResult::kDelivered);
    Net(d).finish_rx(q[VirtioNet::kRxQueue]);
    d.notify_backend_progress();
    const auto f = Frame(100 + n, uint8_t(100 + n));
    std::memset(mem.ptr(kTxBufs + 4096ull * n, kNetHdr), 0, kNetHdr);
    std::memcpy(mem.ptr(kTxBufs + 4096ull * n + kNetHdr, f.size()), f.data(), f.size());
    tx.add({{kTxBufs + 4096ull * n, uint32_t(kNetHdr + f.size()), false}});
    d.poll();  // the guest's next exit
  }
  std::vector<uint8_t> Ram() const { return {mem.host_base(), mem.host_base() + mem.size()}; }

  GuestMemory mem = GuestMemory::Create(4ull << 20);
  TestRing rx{mem, 16, 0x10000};
  TestRing tx{mem, 16, 0x20000};
};

TEST_F(VirtioNetSnapshotTest, RestoredDeviceContinuesExactlyLikeTheOriginal) {
  RecordingSink sink_a;
  auto a = MakeDevice(sink_a);
  ASSERT_TRUE(InitMmio(*a, Feature(VIRTIO_F_VERSION_1) | Feature(VIRTIO_F_RING_EVENT_IDX) | Feature(VIRTIO_NET_F_MAC),
                       {&rx, &tx}));
  for (unsigned n = 0; n < 3; ++n) ASSERT_NO_FATAL_FAILURE(Traffic(*a, rx, tx, n));
  ASSERT_EQ(rx.take_used().size(), 3u);
  ASSERT_EQ(tx.take_used().size(), 3u);
  ASSERT_EQ(Net(*a).counters().tx_frames, 3u);
  ASSERT_NE(Net(*a).tx_hash(), 0u);

  const snapshot::Device s = SavedMessage(*a);
  ASSERT_TRUE(s.virtio().has_net());
  EXPECT_EQ(s.virtio().net().tx_frames(), 3u);
  EXPECT_EQ(s.virtio().net().rx_frames(), 3u);
  EXPECT_EQ(s.virtio().net().tx_hash(), Net(*a).tx_hash());
  ASSERT_EQ(s.virtio().queues_size(), 2);
  EXPECT_TRUE(s.virtio().queues(0).event_idx());

  const std::vector<uint8_t> ram_at_save = Ram();
  TestRing rx_b = rx, tx_b = tx;
  ASSERT_NO_FATAL_FAILURE(Traffic(*a, rx, tx, 3));
  const std::vector<uint8_t> ram_a = Ram();
  const std::string state_a = Saved(*a);
  const uint64_t tx_hash_a = Net(*a).tx_hash();

  std::memcpy(mem.host_base(), ram_at_save.data(), ram_at_save.size());
  RecordingSink sink_b;
  auto b = MakeDevice(sink_b);
  b->restore(s);
  {
    snapshot::Device again;
    ASSERT_TRUE(b->save(again));
    EXPECT_EQ(again.SerializeAsString(), s.SerializeAsString()) << "save(restore(s)) != s";
  }
  EXPECT_EQ(Net(*b).tx_hash(), s.virtio().net().tx_hash());
  EXPECT_EQ(Net(*b).counters().rx_frames, 3u);
  ASSERT_NO_FATAL_FAILURE(Traffic(*b, rx_b, tx_b, 3));
  EXPECT_EQ(Saved(*b), state_a);
  EXPECT_EQ(Net(*b).tx_hash(), tx_hash_a);
  EXPECT_NE(tx_hash_a, s.virtio().net().tx_hash());
  EXPECT_TRUE(Ram() == ram_a) << "the restored device wrote guest RAM differently";
  ExpectRejectsForeignStates(*b, snapshot::Device::kVirtio, snapshot::Virtio::kNet);
}

}  // namespace
}  // namespace ftvm::vmm
