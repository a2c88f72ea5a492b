// Image streaming in one process: an ImageServer over TCP loopback (or a fake
// server where the test must control exactly what is sent when) and an ImageStream
// driven as virtio-blk drives it (prepare, the file I/O, written). What must hold:
// a read of a block that is not local fetches it on demand and sees the image's
// bytes; the background copy follows the boot profile the previous client left;
// a block a guest write took over is never overwritten by a copy arriving late; a
// partial write fetches first; a restarted stream resumes from LOCAL.present; the
// copy completes with LOCAL equal to the image; an unknown image, a server of
// another protocol version, a damaged batch and a lost server are clear errors, the
// last two stopping the VM ("VM lost") — a lost server only once it has not come
// back within the timeout: one that comes back in time with the same image is
// reconnected to, and a read made meanwhile is served; another image is refused.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include "common/error.h"
#include "common/unique_fd.h"
#include "storage/image_server.h"
#include "storage/image_stream.h"
#include "storage/image_wire.h"
#include "storage/storage.pb.h"
#include "tests/storage/test_util.h"
#include "transport/channel.h"

namespace ftvm::storage {
namespace {

using namespace std::chrono_literals;
using testutil::ReadAll;
using testutil::ScratchDir;

constexpr uint32_t kBlock = 64u << 10;
constexpr uint64_t kBlocks = 65;
constexpr uint64_t kImageBytes = (kBlocks - 1) * kBlock + 4096;  // the last block is short

std::vector<uint8_t> RandomBytes(uint64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> out(n);
  for (auto& b : out) b = uint8_t(rng() | 1);  // never 0: a hole reads as zeros
  return out;
}

void WriteFile(const std::string& path, const std::vector<uint8_t>& data) {
  UniqueFd fd(open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644));
  ASSERT_TRUE(fd);
  ASSERT_EQ(write(fd.get(), data.data(), data.size()), ssize_t(data.size()));
}

std::vector<uint8_t> ReadRange(const std::string& path, uint64_t offset, uint64_t n) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  std::vector<uint8_t> out(n);
  EXPECT_EQ(pread(fd.get(), out.data(), n, off_t(offset)), ssize_t(n));
  return out;
}

std::vector<uint8_t> Slice(const std::vector<uint8_t>& v, uint64_t offset, uint64_t n) {
  return std::vector<uint8_t>(v.begin() + offset, v.begin() + offset + n);
}

uint64_t BlockLen(uint64_t b) { return std::min<uint64_t>(kBlock, kImageBytes - b * kBlock); }

// What the VM's disk does around each request.
int Read(ImageStream& s, uint64_t offset, uint64_t bytes) { return s.prepare(false, offset, bytes); }
void GuestWrite(ImageStream& s, const std::string& local, uint64_t offset, const std::vector<uint8_t>& data) {
  ASSERT_EQ(s.prepare(true, offset, data.size()), 0);
  UniqueFd fd(open(local.c_str(), O_WRONLY | O_CLOEXEC));
  ASSERT_EQ(pwrite(fd.get(), data.data(), data.size(), off_t(offset)), ssize_t(data.size()));
  s.written(offset, data.size());
}

// A real server over loopback, run on its own thread.
class Server {
 public:
  Server(const std::string& dir, uint64_t rate_bytes, const std::string& listen = "127.0.0.1:0") {
    ImageServerOptions o;
    o.dir = dir;
    o.block_bytes = kBlock;
    o.rate_bytes = rate_bytes;
    server_.emplace(listen, o);
    thread_ = std::thread([this] { server_->run(); });
  }
  ~Server() { Stop(); }
  void Stop() {
    if (!server_) return;
    server_->stop();
    thread_.join();
    server_.reset();
  }
  uint16_t port() const {
    const std::string a = server_->address();
    return uint16_t(std::stoul(a.substr(a.rfind(':') + 1)));
  }

 private:
  std::optional<ImageServer> server_;
  std::thread thread_;
};

// A server that says what the test tells it to: answers the hello with `reply`,
// then hands the channel to the test.
class FakeServer {
 public:
  explicit FakeServer(ImageHelloReply reply) : listener_("127.0.0.1", 0), reply_(std::move(reply)) {
    thread_ = std::thread([this] {
      channel_ = listener_.accept(10s);
      if (!channel_) return;
      transport::Message m;
      if (!channel_->recv(m, 10s).is_message()) return;
      const std::string r = reply_.SerializeAsString();
      (void)channel_->send(kMsgImageHelloReply, std::span(reinterpret_cast<const uint8_t*>(r.data()), r.size()), 10s);
      if (!reply_.error().empty() || reply_.protocol_version() != kImageProtocolVersion) return;
      if (!channel_->recv(m, 10s).is_message() || m.type() != kMsgImageStart) return;
      ready_ = true;
    });
  }
  ~FakeServer() {
    if (thread_.joinable()) thread_.join();
  }
  uint16_t port() const { return listener_.port(); }
  // After the client's start message: the channel, the handshake done.
  transport::Channel& Channel() {
    if (thread_.joinable()) thread_.join();
    EXPECT_TRUE(ready_);
    return *channel_;
  }
  void SendBlock(uint32_t index, const std::vector<uint8_t>& data, uint8_t flags, bool damage = false) {
    std::vector<uint8_t> batch;
    StartImageBatch(batch);
    AppendImageBlock(batch, index, flags, data);
    SealImageBatch(batch, 1);
    if (damage) batch.back() ^= 0x40;
    ASSERT_TRUE(Channel().send(kMsgImageBlocks, batch, 10s).ok());
  }
  // The next request from the client (skipping none).
  ImageRequest NextRequest() {
    transport::Message m;
    ImageRequest r;
    for (;;) {
      transport::RecvResult res = Channel().recv(m, 10s);
      EXPECT_TRUE(res.is_message()) << res.message;
      if (!res.is_message()) return r;
      if (m.type() == kMsgImageRequest) {
        EXPECT_EQ(DecodeImageRequest(m.payload(), r), "");
        return r;
      }
    }
  }

 private:
  transport::TcpListener listener_;
  ImageHelloReply reply_;
  std::unique_ptr<transport::Channel> channel_;
  std::thread thread_;
  bool ready_ = false;
};

ImageHelloReply GoodReply() {
  ImageHelloReply r;
  r.set_protocol_version(kImageProtocolVersion);
  r.set_image_bytes(kImageBytes);
  r.set_block_bytes(kBlock);
  r.set_image_id("fake-1");
  return r;
}

class ImageStreamTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = ScratchDir("image");
    image_ = RandomBytes(kImageBytes, 42);
    WriteFile(dir_ + "/mail", image_);
    local_ = dir_ + "/local.img";
  }
  void TearDown() override { std::system(("rm -rf " + dir_).c_str()); }

  ImageStreamOptions Options(uint16_t port, const std::string& name = "mail") {
    ImageStreamOptions o;
    o.server = {"127.0.0.1", port, name};
    o.local_path = local_;
    o.timeout = 5s;
    o.client_name = "test";
    return o;
  }
  std::vector<uint8_t> ImageBlock(uint64_t b) const { return Slice(image_, b * kBlock, BlockLen(b)); }
  std::vector<uint8_t> LocalBlock(uint64_t b) const { return ReadRange(local_, b * kBlock, BlockLen(b)); }

  std::string dir_, local_;
  std::vector<uint8_t> image_;
};

// A background copy this slow sends one batch and then nothing the test waits for.
constexpr uint64_t kStalled = 1;

TEST_F(ImageStreamTest, ReadOfAbsentBlockFetchesItOnDemand) {
  Server server(dir_, kStalled);
  ImageStream s(Options(server.port()));
  std::atomic<int> lost{0};
  s.start([&](const std::string&) { ++lost; });
  EXPECT_EQ(LocalBlock(40), std::vector<uint8_t>(kBlock, 0)) << "nothing there before it is read";
  ASSERT_EQ(Read(s, 40 * kBlock + 100, 5000), 0);
  EXPECT_EQ(LocalBlock(40), ImageBlock(40));
  // A read across two blocks, one of them the image's short last block.
  ASSERT_EQ(Read(s, 64 * kBlock - 512, 1024), 0);
  EXPECT_EQ(LocalBlock(63), ImageBlock(63));
  EXPECT_EQ(LocalBlock(64), ImageBlock(64));
  ImageStreamStats st = s.stats();
  EXPECT_EQ(st.demand_fetched, 3u);
  EXPECT_EQ(st.blocks_read, 3u);
  EXPECT_EQ(st.blocks, kBlocks);
  // Read again: local now, nothing fetched.
  ASSERT_EQ(Read(s, 40 * kBlock, kBlock), 0);
  EXPECT_EQ(s.stats().demand_fetched, 3u);
  EXPECT_FALSE(s.complete());
  s.stop();
  EXPECT_EQ(lost.load(), 0);
}

TEST_F(ImageStreamTest, CopyCompletesAndTheLocalFileIsTheImage) {
  Server server(dir_, 0);
  {
    ImageStream s(Options(server.port()));
    s.start([](const std::string& why) { ADD_FAILURE() << why; });
    ASSERT_EQ(Read(s, 7 * kBlock, 4096), 0);
    ASSERT_TRUE(s.wait_complete(20s));
    ImageStreamStats st = s.stats();
    EXPECT_TRUE(st.complete);
    EXPECT_EQ(st.demand_fetched + st.prefetched, kBlocks) << "every block fetched exactly once";
    // Complete: the stream is out of the way.
    EXPECT_EQ(Read(s, 0, kImageBytes), 0);
    s.stop();
  }
  EXPECT_EQ(ReadAll(local_), image_);
  // The server is gone; the local copy is complete and needs it no more.
  server.Stop();
  ImageStream again(Options(1));
  EXPECT_TRUE(again.complete());
  EXPECT_EQ(again.stats().local_at_start, kBlocks);
}

TEST_F(ImageStreamTest, BackgroundCopyFollowsTheBootProfileOfTheLastClient) {
  const std::vector<uint32_t> boot = {50, 7, 33, 2, 61};
  {
    Server server(dir_, kStalled);
    ImageStream s(Options(server.port()));
    s.start([](const std::string& why) { ADD_FAILURE() << why; });
    for (uint32_t b : boot) ASSERT_EQ(Read(s, uint64_t(b) * kBlock + 512, 512), 0);
    s.stop();  // sends the profile
    // The server keeps it next to the image.
    for (int i = 0; i < 100 && access((dir_ + "/mail.profile").c_str(), F_OK) != 0; ++i) std::this_thread::sleep_for(20ms);
  }
  struct stat st {};
  ASSERT_EQ(stat((dir_ + "/mail").c_str(), &st), 0);
  std::string why;
  ImageProfile p;
  {
    const std::string bytes = itest::ReadFile(dir_ + "/mail.profile");
    ASSERT_TRUE(p.ParseFromString(bytes));
  }
  EXPECT_EQ(std::vector<uint32_t>(p.blocks().begin(), p.blocks().end()), boot);

  unlink(local_.c_str());
  unlink(ImageStream::PresencePath(local_).c_str());
  Server server(dir_, kStalled);
  ImageStream s(Options(server.port()));
  EXPECT_EQ(s.stats().profile_blocks, boot.size());
  s.start([](const std::string& why) { ADD_FAILURE() << why; });
  // The profile's blocks arrive without being asked for, the stalled rest does not
  // (past the first background batch: blocks 0..3).
  for (int i = 0; i < 200 && LocalBlock(61) != ImageBlock(61); ++i) std::this_thread::sleep_for(20ms);
  for (uint32_t b : boot) EXPECT_EQ(LocalBlock(b), ImageBlock(b)) << "profile block " << b;
  EXPECT_EQ(LocalBlock(20), std::vector<uint8_t>(kBlock, 0));
  EXPECT_EQ(LocalBlock(45), std::vector<uint8_t>(kBlock, 0));
  // The boot reads them: nothing on demand.
  for (uint32_t b : boot) ASSERT_EQ(Read(s, uint64_t(b) * kBlock, 512), 0);
  EXPECT_EQ(s.stats().demand_fetched, 0u);
  EXPECT_GE(s.stats().prefetched, boot.size());
  s.stop();
}

TEST_F(ImageStreamTest, WriteOverAbsentBlockIsNotOverwrittenByACopyArrivingLate) {
  FakeServer fake(GoodReply());
  ImageStream s(Options(fake.port()));
  std::atomic<int> lost{0};
  s.start([&](const std::string&) { ++lost; });
  transport::Channel& ch = fake.Channel();
  (void)ch;
  // The guest writes block 9 whole: nothing is fetched, the server is told it need
  // not send it.
  const std::vector<uint8_t> guest = RandomBytes(kBlock, 7);
  GuestWrite(s, local_, 9 * kBlock, guest);
  ImageRequest r = fake.NextRequest();
  EXPECT_TRUE(r.demanded.empty());
  EXPECT_EQ(r.unneeded, std::vector<uint32_t>{9});
  // ...but a copy of it was already on its way.
  fake.SendBlock(9, ImageBlock(9), 0);
  // A partial write of block 12 needs the rest of it first.
  std::thread server_side([&] {
    ImageRequest d = fake.NextRequest();
    EXPECT_EQ(d.demanded, std::vector<uint32_t>{12});
    fake.SendBlock(12, ImageBlock(12), kBlockDemanded);
  });
  const std::vector<uint8_t> part = RandomBytes(1024, 8);
  GuestWrite(s, local_, 12 * kBlock + 2048, part);
  server_side.join();
  for (int i = 0; i < 200 && s.stats().late_dropped == 0; ++i) std::this_thread::sleep_for(10ms);
  ImageStreamStats st = s.stats();
  EXPECT_EQ(st.late_dropped, 1u);
  EXPECT_EQ(st.written_over, 1u);
  EXPECT_EQ(st.demand_fetched, 1u);
  EXPECT_EQ(LocalBlock(9), guest) << "the guest's write survives the late copy";
  std::vector<uint8_t> want12 = ImageBlock(12);
  std::copy(part.begin(), part.end(), want12.begin() + 2048);
  EXPECT_EQ(LocalBlock(12), want12);
  // Both are recorded as local before the writes were done.
  s.cancel();
  s.stop();
  EXPECT_EQ(lost.load(), 0);
}

TEST_F(ImageStreamTest, RestartedStreamResumesFromThePresenceBitmap) {
  Server stalled(dir_, kStalled);
  const std::vector<uint8_t> guest = RandomBytes(kBlock, 9);
  {
    ImageStream s(Options(stalled.port()));
    s.start([](const std::string& why) { ADD_FAILURE() << why; });
    ASSERT_EQ(Read(s, 10 * kBlock, 512), 0);
    ASSERT_EQ(Read(s, 20 * kBlock, 512), 0);
    GuestWrite(s, local_, 30 * kBlock, guest);
    s.stop();
  }
  ASSERT_EQ(access(ImageStream::PresencePath(local_).c_str(), F_OK), 0);
  stalled.Stop();
  Server fast(dir_, 0);
  ImageStream s(Options(fast.port()));
  const ImageStreamStats at_start = s.stats();
  EXPECT_GE(at_start.local_at_start, 3u) << "blocks 10, 20 and the written 30";
  s.start([](const std::string& why) { ADD_FAILURE() << why; });
  ASSERT_EQ(Read(s, 10 * kBlock, kBlock), 0);
  ASSERT_TRUE(s.wait_complete(20s));
  const ImageStreamStats st = s.stats();
  EXPECT_EQ(st.demand_fetched + st.prefetched, kBlocks - st.local_at_start) << "only the rest was fetched";
  s.stop();
  std::vector<uint8_t> want = image_;
  std::copy(guest.begin(), guest.end(), want.begin() + 30 * kBlock);
  EXPECT_EQ(ReadAll(local_), want) << "the image, with the guest's write kept";
}

TEST_F(ImageStreamTest, ResumeRefusesAnImageThatChanged) {
  {
    Server server(dir_, kStalled);
    ImageStream s(Options(server.port()));
    s.start([](const std::string&) {});
    ASSERT_EQ(Read(s, 0, 512), 0);
    s.stop();
  }
  // Another image under the same name.
  std::this_thread::sleep_for(10ms);
  WriteFile(dir_ + "/mail", RandomBytes(kImageBytes, 43));
  Server server(dir_, kStalled);
  try {
    ImageStream s(Options(server.port()));
    FAIL() << "resumed a copy of another image";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is not the one"), std::string::npos) << e.what();
  }
}

TEST_F(ImageStreamTest, LocalFileThatIsNotAPartialCopyIsRefused) {
  Server server(dir_, kStalled);
  WriteFile(local_, {1, 2, 3});
  try {
    ImageStream s(Options(server.port()));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a partial copy"), std::string::npos) << e.what();
  }
  EXPECT_EQ(ReadAll(local_), (std::vector<uint8_t>{1, 2, 3})) << "left alone";
}

TEST_F(ImageStreamTest, UnknownImageIsAClearError) {
  Server server(dir_, 0);
  try {
    ImageStream s(Options(server.port(), "nosuch"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no image named 'nosuch'"), std::string::npos) << e.what();
  }
  EXPECT_NE(access(local_.c_str(), F_OK), 0) << "no local file is left behind";
}

TEST_F(ImageStreamTest, ServerOfAnotherProtocolVersionIsAClearError) {
  ImageHelloReply r = GoodReply();
  r.set_protocol_version(kImageProtocolVersion + 1);
  FakeServer fake(r);
  try {
    ImageStream s(Options(fake.port()));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("protocol version"), std::string::npos) << e.what();
  }
}

TEST_F(ImageStreamTest, ServerRefusesAClientOfAnotherProtocolVersion) {
  Server server(dir_, 0);
  auto ch = transport::TcpConnect("127.0.0.1", server.port(), 5s);
  ImageHello h;
  h.set_protocol_version(kImageProtocolVersion + 7);
  h.set_image("mail");
  const std::string b = h.SerializeAsString();
  ASSERT_TRUE(ch->send(kMsgImageHello, std::span(reinterpret_cast<const uint8_t*>(b.data()), b.size()), 5s).ok());
  transport::Message m;
  ASSERT_TRUE(ch->recv(m, 5s).is_message());
  ImageHelloReply reply;
  ASSERT_TRUE(reply.ParseFromArray(m.payload().data(), int(m.size())));
  EXPECT_NE(reply.error().find("is not spoken here"), std::string::npos) << reply.error();
}

TEST_F(ImageStreamTest, DamagedBlockStopsTheVmAndIsNeverWritten) {
  FakeServer fake(GoodReply());
  ImageStream s(Options(fake.port()));
  std::mutex mu;
  std::string lost;
  s.start([&](const std::string& why) {
    std::lock_guard<std::mutex> lock(mu);
    lost = why;
  });
  std::thread server_side([&] {
    ImageRequest d = fake.NextRequest();
    EXPECT_EQ(d.demanded, std::vector<uint32_t>{5});
    fake.SendBlock(5, ImageBlock(5), kBlockDemanded, /*damage=*/true);
  });
  EXPECT_EQ(Read(s, 5 * kBlock, 512), EIO);
  server_side.join();
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_NE(lost.find("CRC"), std::string::npos) << lost;
    EXPECT_NE(lost.find("VM lost"), std::string::npos) << lost;
  }
  EXPECT_EQ(LocalBlock(5), std::vector<uint8_t>(kBlock, 0));
  EXPECT_EQ(Read(s, 6 * kBlock, 512), EIO) << "nothing more is served from a lost stream";
  s.stop();
}

TEST_F(ImageStreamTest, ServerLostMidStreamAndNotBackInTimeStopsTheVm) {
  std::optional<Server> server(std::in_place, dir_, kStalled);
  ImageStreamOptions o = Options(server->port());
  o.timeout = 1s;
  ImageStream s(o);
  std::atomic<bool> called{false};
  std::string lost;
  s.start([&](const std::string& why) {
    lost = why;
    called = true;
  });
  ASSERT_EQ(Read(s, 3 * kBlock, 512), 0);
  server.reset();  // closes the connection
  for (int i = 0; i < 1000 && !called; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_TRUE(called);
  EXPECT_NE(lost.find("image server lost"), std::string::npos) << lost;
  EXPECT_NE(lost.find("not back within 1 s"), std::string::npos) << lost;
  EXPECT_NE(lost.find("VM lost"), std::string::npos) << lost;
  EXPECT_EQ(Read(s, 40 * kBlock, 512), EIO);
  EXPECT_EQ(LocalBlock(40), std::vector<uint8_t>(kBlock, 0));
  s.stop();
}

TEST_F(ImageStreamTest, ServerBackWithinTheTimeoutResumesAndADemandMadeMeanwhileIsServed) {
  std::optional<Server> server(std::in_place, dir_, kStalled);
  const uint16_t port = server->port();
  ImageStream s(Options(port));  // 5 s to come back
  std::atomic<int> lost{0};
  s.start([&](const std::string&) { ++lost; });
  ASSERT_EQ(Read(s, 3 * kBlock, 512), 0);
  server.reset();
  // The guest reads a block while the server is away: it waits for the reconnect.
  std::atomic<int> during{-1};
  std::thread reader([&] { during = Read(s, 40 * kBlock, 512); });
  std::this_thread::sleep_for(500ms);
  EXPECT_EQ(during.load(), -1) << "a read was answered with no server there";
  server.emplace(dir_, kStalled, "127.0.0.1:" + std::to_string(port));
  reader.join();
  EXPECT_EQ(during.load(), 0);
  EXPECT_EQ(LocalBlock(40), ImageBlock(40));
  EXPECT_EQ(LocalBlock(3), ImageBlock(3)) << "a block local before the outage stays";
  EXPECT_EQ(Read(s, 41 * kBlock, 512), 0);
  EXPECT_EQ(LocalBlock(41), ImageBlock(41));
  EXPECT_EQ(lost.load(), 0);
  EXPECT_EQ(s.stats().reconnects, 1u);
  s.stop();
}

TEST_F(ImageStreamTest, ServerBackWithAnotherImageIsRefusedAndStopsTheVm) {
  std::optional<Server> server(std::in_place, dir_, kStalled);
  const uint16_t port = server->port();
  ImageStream s(Options(port));
  std::atomic<bool> called{false};
  std::string lost;
  s.start([&](const std::string& why) {
    lost = why;
    called = true;
  });
  ASSERT_EQ(Read(s, 3 * kBlock, 512), 0);
  server.reset();
  std::this_thread::sleep_for(20ms);  // a new modification time: another image id
  WriteFile(dir_ + "/mail", RandomBytes(kImageBytes, 7));
  server.emplace(dir_, kStalled, "127.0.0.1:" + std::to_string(port));
  for (int i = 0; i < 1000 && !called; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_TRUE(called);
  EXPECT_NE(lost.find("came back with another image"), std::string::npos) << lost;
  EXPECT_NE(lost.find("VM lost"), std::string::npos) << lost;
  EXPECT_EQ(Read(s, 40 * kBlock, 512), EIO);
  EXPECT_EQ(LocalBlock(40), std::vector<uint8_t>(kBlock, 0));
  s.stop();
}

TEST(ImageWire, AddressesAndNames) {
  ImageAddress a;
  EXPECT_EQ(ParseImageAddress("10.0.0.1:7400/mail.img", a), "");
  EXPECT_EQ(a.host, "10.0.0.1");
  EXPECT_EQ(a.port, 7400);
  EXPECT_EQ(a.name, "mail.img");
  EXPECT_NE(ParseImageAddress("10.0.0.1:7400", a), "");
  EXPECT_NE(ParseImageAddress("10.0.0.1/mail", a), "");
  EXPECT_NE(ParseImageAddress("h:99999/mail", a), "");
  EXPECT_NE(ParseImageAddress("h:1/../etc/passwd", a), "");
  EXPECT_NE(ParseImageAddress("h:1/.hidden", a), "");
  EXPECT_NE(ParseImageAddress("h:1/mail.profile", a), "");
}

TEST(ImageWire, RequestAndBatchRoundTripAndDamageIsCaught) {
  ImageRequest r{12345, {1, 2, 3}, {9}};
  std::vector<uint8_t> enc = EncodeImageRequest(r);
  ImageRequest back;
  ASSERT_EQ(DecodeImageRequest(enc, back), "");
  EXPECT_EQ(back.received_bytes, 12345u);
  EXPECT_EQ(back.demanded, r.demanded);
  EXPECT_EQ(back.unneeded, r.unneeded);
  enc[20] ^= 1;
  EXPECT_NE(DecodeImageRequest(enc, back), "");

  std::vector<uint8_t> batch;
  StartImageBatch(batch);
  const std::vector<uint8_t> data = RandomBytes(100, 1);
  AppendImageBlock(batch, 7, kBlockDemanded, data);
  AppendImageBlock(batch, 8, 0, data);
  SealImageBatch(batch, 2);
  std::vector<ImageBlock> blocks;
  ASSERT_EQ(DecodeImageBatch(batch, blocks), "");
  ASSERT_EQ(blocks.size(), 2u);
  EXPECT_EQ(blocks[0].index, 7u);
  EXPECT_EQ(blocks[0].flags, kBlockDemanded);
  EXPECT_EQ(std::vector<uint8_t>(blocks[1].data.begin(), blocks[1].data.end()), data);
  batch[0] = kImageWireVersion + 1;
  EXPECT_NE(DecodeImageBatch(batch, blocks).find("format"), std::string::npos);
}

}  // namespace
}  // namespace ftvm::storage
