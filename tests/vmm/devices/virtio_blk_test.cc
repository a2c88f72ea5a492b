#include "vmm/devices/virtio_blk.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "tests/vmm/devices/test_driver.h"

namespace ftvm::vmm {
namespace {

LiveDeviceIo live_io;  // a live VM's devices: host results pass through

using testing::Feature;
using testing::InitMmio;
using testing::RecordingSink;
using testing::TestRing;

constexpr uint64_t kSectors = 64;
constexpr uint64_t kHdr = 0x100000;     // request headers, 16 bytes apart
constexpr uint64_t kBufs = 0x200000;    // data buffers
constexpr uint64_t kStatus = 0x300000;  // status bytes, 1 apart

// A temp image filled with a per-sector pattern, removed afterwards.
class TempImage {
 public:
  explicit TempImage(uint64_t bytes) {
    char tmpl[] = "/tmp/ftvm-blk-test-XXXXXX";
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
  std::vector<uint8_t> read(uint64_t off, size_t len) const {
    std::vector<uint8_t> out(len);
    const int fd = ::open(path_.c_str(), O_RDONLY);
    EXPECT_EQ(::pread(fd, out.data(), len, off_t(off)), ssize_t(len));
    ::close(fd);
    return out;
  }

 private:
  std::string path_;
};

uint8_t Pattern(uint64_t byte) { return uint8_t(byte / 512 + byte % 7); }

class VirtioBlkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto b = std::make_unique<VirtioBlk>(image.path(), "", live_io);
    blk = b.get();
    dev = std::make_unique<VirtioMmioDevice>("virtio-blk", mem, sink, FTVM_IRQ_VIRTIO_BLK, std::move(b));
    ASSERT_TRUE(InitMmio(*dev, Feature(VIRTIO_F_VERSION_1) | Feature(VIRTIO_F_RING_EVENT_IDX) |
                                   Feature(VIRTIO_BLK_F_FLUSH),
                         {&ring}));
  }

  // Queues request #n: header, then `data` buffers, then the status byte.
  uint16_t add_request(unsigned n, uint32_t type, uint64_t sector, std::vector<TestRing::Buf> data,
                       bool publish = true) {
    virtio_blk_req_hdr hdr{type, 0, sector};
    EXPECT_TRUE(mem.write_obj(kHdr + 16ull * n, hdr));
    mem.ptr(kStatus + n, 1)[0] = 0xee;
    std::vector<TestRing::Buf> bufs{{kHdr + 16ull * n, 16, false}};
    bufs.insert(bufs.end(), data.begin(), data.end());
    bufs.push_back({kStatus + n, 1, true});
    return ring.add(bufs, publish);
  }
  uint8_t status(unsigned n) { return mem.ptr(kStatus + n, 1)[0]; }
  void notify() { dev->mmio_write(VIRTIO_MMIO_QUEUE_NOTIFY, 4, 0); }

  TempImage image{kSectors * 512};
  GuestMemory mem = GuestMemory::Create(4ull << 20);
  RecordingSink sink;
  TestRing ring{mem, 64, 0x10000};
  VirtioBlk* blk = nullptr;
  std::unique_ptr<VirtioMmioDevice> dev;
};

TEST(VirtioBlkOpen, MissingImageNamesTheFile) {
  try {
    VirtioBlk blk("/nonexistent/ftvm/disk.img", "", live_io);
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "disk image /nonexistent/ftvm/disk.img: No such file or directory");
  }
}

TEST(VirtioBlkOpen, DirectoryIsRejected) {
  try {
    VirtioBlk blk("/tmp", "", live_io);
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("disk image /tmp"), std::string::npos) << e.what();
  }
}

TEST_F(VirtioBlkTest, ConfigHoldsCapacityAndFeatures) {
  EXPECT_EQ(dev->mmio_read(VIRTIO_MMIO_DEVICE_ID, 4), VIRTIO_ID_BLOCK);
  EXPECT_EQ(dev->mmio_read(VIRTIO_MMIO_CONFIG, 8), kSectors);
  EXPECT_EQ(dev->mmio_read(VIRTIO_MMIO_CONFIG, 4), kSectors);
  EXPECT_EQ(dev->mmio_read(VIRTIO_MMIO_CONFIG + 4, 4), 0u);
  EXPECT_EQ(blk->capacity_sectors(), kSectors);
  EXPECT_EQ(blk->device_features(),
            Feature(VIRTIO_F_VERSION_1) | Feature(VIRTIO_F_RING_EVENT_IDX) | Feature(VIRTIO_BLK_F_FLUSH));
}

TEST_F(VirtioBlkTest, ReadAcrossDescriptors) {
  // Sectors 3..5 into three buffers of 700, 324 and 512 bytes.
  add_request(0, VIRTIO_BLK_T_IN, 3, {{kBufs, 700, true}, {kBufs + 4096, 324, true}, {kBufs + 8192, 512, true}});
  notify();
  EXPECT_EQ(status(0), VIRTIO_BLK_S_OK);
  auto used = ring.take_used();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].len, 1536u + 1);
  const uint8_t* a = mem.ptr(kBufs, 700);
  const uint8_t* b = mem.ptr(kBufs + 4096, 324);
  const uint8_t* c = mem.ptr(kBufs + 8192, 512);
  for (uint64_t i = 0; i < 700; ++i) ASSERT_EQ(a[i], Pattern(3 * 512 + i)) << i;
  for (uint64_t i = 0; i < 324; ++i) ASSERT_EQ(b[i], Pattern(3 * 512 + 700 + i)) << i;
  for (uint64_t i = 0; i < 512; ++i) ASSERT_EQ(c[i], Pattern(5 * 512 + i)) << i;
  EXPECT_EQ(sink.raised, std::vector<unsigned>{FTVM_IRQ_VIRTIO_BLK});
  EXPECT_EQ(blk->counters().reads, 1u);
  EXPECT_EQ(blk->counters().bytes_read, 1536u);
}

TEST_F(VirtioBlkTest, WriteThenReadBackAndFlush) {
  std::memset(mem.ptr(kBufs, 1024), 0x5a, 1024);
  add_request(0, VIRTIO_BLK_T_OUT, 10, {{kBufs, 1024, false}});
  add_request(1, VIRTIO_BLK_T_FLUSH, 0, {});
  add_request(2, VIRTIO_BLK_T_IN, 9, {{kBufs + 8192, 1536, true}});
  notify();
  EXPECT_EQ(status(0), VIRTIO_BLK_S_OK);
  EXPECT_EQ(status(1), VIRTIO_BLK_S_OK);
  EXPECT_EQ(status(2), VIRTIO_BLK_S_OK);
  auto used = ring.take_used();
  ASSERT_EQ(used.size(), 3u);
  EXPECT_EQ(used[0].len, 1u);
  EXPECT_EQ(used[1].len, 1u);
  EXPECT_EQ(used[2].len, 1537u);
  // The file holds the data.
  auto file = image.read(10 * 512, 1024);
  for (uint8_t v : file) ASSERT_EQ(v, 0x5a);
  EXPECT_EQ(image.read(9 * 512 + 511, 1)[0], Pattern(9 * 512 + 511));
  EXPECT_EQ(image.read(12 * 512, 1)[0], Pattern(12 * 512));
  // The read after the write sees it.
  const uint8_t* r = mem.ptr(kBufs + 8192, 1536);
  EXPECT_EQ(r[0], Pattern(9 * 512));
  EXPECT_EQ(r[512], 0x5a);
  EXPECT_EQ(r[1535], 0x5a);
  EXPECT_EQ(blk->counters().flushes, 1u);
  EXPECT_EQ(blk->counters().writes, 1u);
  EXPECT_EQ(sink.raised.size(), 1u);  // one interrupt for the whole batch
}

TEST_F(VirtioBlkTest, AdjacentRequestsShareOneHostCall) {
  for (unsigned n = 0; n < 8; ++n)
    add_request(n, VIRTIO_BLK_T_IN, 20 + n, {{kBufs + 512ull * n, 512, true}}, /*publish=*/n == 7);
  notify();
  for (unsigned n = 0; n < 8; ++n) EXPECT_EQ(status(n), VIRTIO_BLK_S_OK) << n;
  EXPECT_EQ(blk->counters().reads, 8u);
  EXPECT_EQ(blk->counters().host_ops, 1u);
  const uint8_t* d = mem.ptr(kBufs, 4096);
  for (uint64_t i = 0; i < 4096; ++i) ASSERT_EQ(d[i], Pattern(20 * 512 + i)) << i;
  auto used = ring.take_used();
  ASSERT_EQ(used.size(), 8u);
  for (unsigned n = 1; n < 8; ++n) EXPECT_EQ(used[n].id, (used[0].id + 3 * n) % 64);  // request order
}

TEST_F(VirtioBlkTest, NonAdjacentRequestsAreSeparateCalls) {
  add_request(0, VIRTIO_BLK_T_IN, 1, {{kBufs, 512, true}}, false);
  add_request(1, VIRTIO_BLK_T_IN, 5, {{kBufs + 512, 512, true}}, false);
  add_request(2, VIRTIO_BLK_T_OUT, 6, {{kBufs + 1024, 512, false}});
  notify();
  EXPECT_EQ(blk->counters().host_ops, 3u);
  EXPECT_EQ(mem.ptr(kBufs + 512, 1)[0], Pattern(5 * 512));
}

TEST_F(VirtioBlkTest, OutOfRangeIsIoErrorWithStatusLast) {
  add_request(0, VIRTIO_BLK_T_IN, kSectors - 1, {{kBufs, 1024, true}}, false);  // runs 1 sector past the end
  add_request(1, VIRTIO_BLK_T_OUT, kSectors, {{kBufs, 512, false}}, false);
  add_request(2, VIRTIO_BLK_T_IN, ~0ull, {{kBufs, 512, true}}, false);  // sector overflow
  add_request(3, VIRTIO_BLK_T_IN, 0, {{kBufs, 100, true}}, false);      // not a sector multiple
  add_request(4, VIRTIO_BLK_T_IN, kSectors - 1, {{kBufs + 4096, 512, true}});  // last sector: fine
  notify();
  for (unsigned n = 0; n < 4; ++n) EXPECT_EQ(status(n), VIRTIO_BLK_S_IOERR) << n;
  EXPECT_EQ(status(4), VIRTIO_BLK_S_OK);
  EXPECT_EQ(blk->counters().io_errors, 4u);
  EXPECT_EQ(ring.take_used().size(), 5u);
  EXPECT_EQ(image.read(kSectors * 512 - 1, 1)[0], Pattern(kSectors * 512 - 1));
  struct stat st {};
  ASSERT_EQ(stat(image.path().c_str(), &st), 0);
  EXPECT_EQ(uint64_t(st.st_size), kSectors * 512);  // nothing written past the end
}

TEST_F(VirtioBlkTest, GetIdAndUnsupported) {
  add_request(0, VIRTIO_BLK_T_GET_ID, 0, {{kBufs, 20, true}}, false);
  add_request(1, 77, 0, {{kBufs + 64, 16, true}});
  notify();
  EXPECT_EQ(status(0), VIRTIO_BLK_S_OK);
  EXPECT_EQ(status(1), VIRTIO_BLK_S_UNSUPP);
  const std::string base = image.path().substr(image.path().rfind('/') + 1);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(mem.ptr(kBufs, base.size())), base.size()), base);
  auto used = ring.take_used();
  ASSERT_EQ(used.size(), 2u);
  EXPECT_EQ(used[0].len, 21u);
}

TEST_F(VirtioBlkTest, RequestWithoutStatusByteNeedsReset) {
  virtio_blk_req_hdr hdr{VIRTIO_BLK_T_IN, 0, 0};
  ASSERT_TRUE(mem.write_obj(kHdr, hdr));
  ring.add({{kHdr, 16, false}});
  notify();
  EXPECT_TRUE(dev->needs_reset());
  EXPECT_EQ(ring.used_idx(), 0);
}

TEST_F(VirtioBlkTest, ShortHeaderNeedsReset) {
  ring.add({{kHdr, 8, false}, {kStatus, 1, true}});
  notify();
  EXPECT_TRUE(dev->needs_reset());
}

TEST_F(VirtioBlkTest, KickRequestedAfterDrain) {
  add_request(0, VIRTIO_BLK_T_IN, 0, {{kBufs, 512, true}});
  notify();
  // The device wants a kick for the very next request.
  EXPECT_EQ(ring.avail_event(), 1);
  EXPECT_TRUE(ring.driver_would_kick(1, 2, true));
}

TEST_F(VirtioBlkTest, UsedEventSuppressesCompletionInterrupt) {
  ring.set_used_event(5);
  add_request(0, VIRTIO_BLK_T_IN, 0, {{kBufs, 512, true}});
  notify();
  EXPECT_EQ(status(0), VIRTIO_BLK_S_OK);
  EXPECT_TRUE(sink.raised.empty());
}

// An image being streamed in (storage/image_stream.h) is asked before each read
// and write and told after each write; what it refuses fails the request.
struct RecordingSource final : DiskBlockSource {
  struct Call {
    char kind;  // 'p' prepare, 'w' written
    bool write;
    uint64_t offset, bytes;
  };
  std::vector<Call> calls;
  int refuse = 0;
  int prepare(bool write, uint64_t offset, uint64_t bytes) override {
    calls.push_back({'p', write, offset, bytes});
    return refuse;
  }
  void written(uint64_t offset, uint64_t bytes) override { calls.push_back({'w', true, offset, bytes}); }
};

TEST_F(VirtioBlkTest, BlockSourceIsAskedBeforeEachTransferAndCanFailIt) {
  RecordingSource src;
  blk->set_block_source(&src);
  add_request(0, VIRTIO_BLK_T_IN, 3, {{kBufs, 1024, true}}, false);
  add_request(1, VIRTIO_BLK_T_OUT, 9, {{kBufs + 4096, 512, false}});
  notify();
  EXPECT_EQ(status(0), VIRTIO_BLK_S_OK);
  EXPECT_EQ(status(1), VIRTIO_BLK_S_OK);
  ASSERT_EQ(src.calls.size(), 3u);
  EXPECT_EQ(src.calls[0].kind, 'p');
  EXPECT_FALSE(src.calls[0].write);
  EXPECT_EQ(src.calls[0].offset, 3u * 512);
  EXPECT_EQ(src.calls[0].bytes, 1024u);
  EXPECT_EQ(src.calls[1].kind, 'p');
  EXPECT_TRUE(src.calls[1].write);
  EXPECT_EQ(src.calls[1].offset, 9u * 512);
  EXPECT_EQ(src.calls[2].kind, 'w');
  EXPECT_EQ(src.calls[2].offset, 9u * 512);
  EXPECT_EQ(src.calls[2].bytes, 512u);
  // Refused: the request fails and the file is not read.
  src.refuse = EIO;
  add_request(2, VIRTIO_BLK_T_IN, 20, {{kBufs, 512, true}});
  notify();
  EXPECT_EQ(status(2), VIRTIO_BLK_S_IOERR);
  // Detached: not asked any more.
  blk->set_block_source(nullptr);
  src.calls.clear();
  add_request(3, VIRTIO_BLK_T_IN, 20, {{kBufs, 512, true}});
  notify();
  EXPECT_EQ(status(3), VIRTIO_BLK_S_OK);
  EXPECT_TRUE(src.calls.empty());
}

// A disk that is not a file (a disk server's, storage/remote_disk.h), in memory: the
// device reads, writes and flushes through it after switch_backend, and its
// observers and dirty tracking see the same as on a file.
struct MemoryBackend final : BlockBackend {
  explicit MemoryBackend(uint64_t bytes) : data(bytes, 0x11) {}
  std::string describe() const override { return "tcp:10.0.0.9:7300"; }
  uint64_t size_bytes() const override { return data.size(); }
  int transfer(bool write, std::span<const iovec> iov, uint64_t offset) override {
    if (fail != 0) return fail;
    for (const iovec& v : iov) {
      if (write)
        std::memcpy(data.data() + offset, v.iov_base, v.iov_len);
      else
        std::memcpy(v.iov_base, data.data() + offset, v.iov_len);
      offset += v.iov_len;
    }
    ++transfers;
    return 0;
  }
  int flush() override {
    ++flushes;
    return fail;
  }
  std::vector<uint8_t> data;
  int transfers = 0, flushes = 0, fail = 0;
};

struct CountingObserver final : DiskWriteObserver {
  void disk_written(uint64_t offset, std::span<const iovec> d) override {
    last_offset = offset;
    for (const iovec& v : d) bytes += v.iov_len;
  }
  void disk_flushed() override { ++flushes; }
  uint64_t last_offset = 0, bytes = 0;
  int flushes = 0;
};

TEST_F(VirtioBlkTest, RunsOnABackendAfterTheSwitch) {
  // Another size is refused: the device keeps its file.
  EXPECT_THROW(blk->switch_backend(std::make_unique<MemoryBackend>(kSectors * 512 + 4096)), Error);
  EXPECT_EQ(blk->path(), image.path());
  auto owned = std::make_unique<MemoryBackend>(kSectors * 512);
  MemoryBackend* backend = owned.get();
  blk->switch_backend(std::move(owned));
  EXPECT_EQ(blk->path(), "tcp:10.0.0.9:7300");
  CountingObserver observer;
  blk->set_write_observer(&observer);
  PageBitmap dirty(kSectors * 512 / 4096);
  blk->track_writes(&dirty);
  std::memset(mem.ptr(kBufs, 1024), 0x5a, 1024);
  add_request(0, VIRTIO_BLK_T_OUT, 10, {{kBufs, 1024, false}});
  add_request(1, VIRTIO_BLK_T_FLUSH, 0, {});
  add_request(2, VIRTIO_BLK_T_IN, 9, {{kBufs + 8192, 1536, true}});
  notify();
  EXPECT_EQ(status(0), VIRTIO_BLK_S_OK);
  EXPECT_EQ(status(1), VIRTIO_BLK_S_OK);
  EXPECT_EQ(status(2), VIRTIO_BLK_S_OK);
  EXPECT_EQ(backend->data[10 * 512], 0x5a);
  EXPECT_EQ(backend->flushes, 1);
  const uint8_t* r = mem.ptr(kBufs + 8192, 1536);
  EXPECT_EQ(r[0], 0x11) << "read from the backend, not the file";
  EXPECT_EQ(r[512], 0x5a) << "a read after a write sees it";
  EXPECT_EQ(image.read(10 * 512, 1)[0], Pattern(10 * 512)) << "the old file is not written";
  EXPECT_EQ(observer.last_offset, 10u * 512);
  EXPECT_EQ(observer.bytes, 1024u);
  EXPECT_EQ(observer.flushes, 1);
  EXPECT_TRUE(dirty.test(10 * 512 / 4096));
  // The backend fails (its server is lost): the guest gets IOERR, never stale data.
  backend->fail = EIO;
  add_request(3, VIRTIO_BLK_T_IN, 9, {{kBufs, 512, true}});
  add_request(4, VIRTIO_BLK_T_FLUSH, 0, {});
  notify();
  EXPECT_EQ(status(3), VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(status(4), VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(observer.flushes, 1) << "a failed flush is not reported to observers";
  blk->set_write_observer(nullptr);
  blk->track_writes(nullptr);
}

}  // namespace
}  // namespace ftvm::vmm
