// A remote disk: the wire format's refusals, and a RemoteDisk against a disk server
// (a DrReplica on a thread) over TCP loopback: the copy then the switch as `ftvm
// move-disk --to tcp:` does it, reads after writes, flush, a server that restarts
// within the timeout, one that does not, and the clear refusals (another size, no
// image, another protocol version, nobody listening).
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <random>

#include <sys/stat.h>

#include "storage/disk_mirror.h"
#include "storage/remote_disk.h"
#include "storage/remote_wire.h"
#include "storage/storage.pb.h"
#include "tests/storage/test_util.h"

namespace ftvm::storage {
namespace {

using namespace std::chrono_literals;
using testutil::FakeDisk;
using testutil::MakeImage;
using testutil::ReadAll;
using testutil::ReplicaThread;
using testutil::ScratchDir;

constexpr uint64_t kDisk = 4u << 20;

std::vector<uint8_t> Request(DiskOp op, uint64_t id, uint64_t offset, std::vector<uint8_t> data, uint32_t bytes) {
  DiskRequest r{op, id, offset, bytes, {}};
  iovec v{data.data(), data.size()};
  uint8_t header[kDiskRequestHeaderBytes];
  EncodeDiskRequestHeader(r, std::span<const iovec>(&v, data.empty() ? 0 : 1), header);
  std::vector<uint8_t> out(header, header + sizeof header);
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

TEST(RemoteWire, RequestsAndRepliesRoundTrip) {
  const std::vector<uint8_t> data(4096, 0x5a);
  std::vector<uint8_t> msg = Request(DiskOp::kWrite, 7, 8192, data, 4096);
  DiskRequest r;
  ASSERT_EQ(DecodeDiskRequest(msg, r), "");
  EXPECT_EQ(r.op, DiskOp::kWrite);
  EXPECT_EQ(r.id, 7u);
  EXPECT_EQ(r.offset, 8192u);
  EXPECT_EQ(r.bytes, 4096u);
  EXPECT_TRUE(std::equal(r.data.begin(), r.data.end(), data.begin(), data.end()));
  msg = Request(DiskOp::kRead, 8, 0, {}, 512);
  ASSERT_EQ(DecodeDiskRequest(msg, r), "");
  EXPECT_EQ(r.op, DiskOp::kRead);
  EXPECT_EQ(r.data.size(), 0u);

  std::vector<uint8_t> out;
  EncodeDiskReply(DiskReply{DiskOp::kRead, 8, 0, data}, out);
  DiskReply rep;
  ASSERT_EQ(DecodeDiskReply(out, rep), "");
  EXPECT_EQ(rep.id, 8u);
  EXPECT_EQ(rep.error, 0u);
  EXPECT_EQ(rep.data.size(), 4096u);
}

TEST(RemoteWire, RefusesTruncatedDamagedAndForeignMessages) {
  const std::vector<uint8_t> good = Request(DiskOp::kWrite, 1, 0, std::vector<uint8_t>(512, 1), 512);
  DiskRequest r;
  auto refused = [&](std::vector<uint8_t> m, const std::string& says) {
    const std::string why = DecodeDiskRequest(m, r);
    EXPECT_NE(why.find(says), std::string::npos) << "'" << why << "' should say '" << says << "'";
  };
  refused(std::vector<uint8_t>(good.begin(), good.begin() + 20), "shorter than its 32-byte header");
  refused(std::vector<uint8_t>(good.begin(), good.end() - 1), "CRC");  // cut short: the CRC no longer holds
  std::vector<uint8_t> m = good;
  m[100] ^= 1;
  refused(m, "CRC");
  m = good;
  m[0] = 9;
  refused(m, "wire format 9");
  m = good;
  m[1] = 77;
  refused(m, "unknown op 77");
  // Well-formed and CRC-checked, but inconsistent: a header that claims other lengths.
  refused(Request(DiskOp::kWrite, 1, 0, std::vector<uint8_t>(512, 1), 1024), "carries 512 data bytes, its header says 1024");
  refused(Request(DiskOp::kRead, 1, 0, std::vector<uint8_t>(16, 1), 16), "carries 16 data bytes, its header says 0");
  refused(Request(DiskOp::kRead, 1, 0, {}, kRemoteMaxBytes + 1), "at most");
  refused(Request(DiskOp::kFlush, 1, 4096, {}, 0), "flush with an offset");

  std::vector<uint8_t> out;
  const std::vector<uint8_t> data(64, 3);
  EncodeDiskReply(DiskReply{DiskOp::kRead, 2, 0, data}, out);
  DiskReply rep;
  EXPECT_NE(DecodeDiskReply(std::span(out).first(10), rep).find("shorter"), std::string::npos);
  out[30] ^= 0x80;
  EXPECT_NE(DecodeDiskReply(out, rep).find("CRC"), std::string::npos);
  EncodeDiskReply(DiskReply{DiskOp::kRead, 2, 5, data}, out);
  EXPECT_NE(DecodeDiskReply(out, rep).find("an error and data"), std::string::npos);
}

RemoteDiskOptions Options(const std::string& address, uint64_t bytes = kDisk) {
  RemoteDiskOptions o;
  o.address = address;
  o.disk_bytes = bytes;
  o.vm_name = "test";
  o.timeout = 2s;
  return o;
}

std::vector<uint8_t> Pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = uint8_t(seed + i * 7);
  return v;
}

int Write(RemoteDisk& d, uint64_t offset, std::vector<uint8_t>& data) {
  // Two iovecs, as a guest's request often is.
  const size_t half = data.size() / 2;
  iovec v[2] = {{data.data(), half}, {data.data() + half, data.size() - half}};
  return d.transfer(true, v, offset);
}

int Read(RemoteDisk& d, uint64_t offset, std::vector<uint8_t>& data) {
  iovec v{data.data(), data.size()};
  return d.transfer(false, std::span(&v, 1), offset);
}

// The move: a mirror copies the local image to the server while it is written, then
// the remote disk opens it there and sees exactly the local image; its own writes
// (larger than one request, too) land on the server's image.
TEST(RemoteDisk, ReadsTheCopiedImageAndWritesLandOnTheServer) {
  const std::string dir = ScratchDir("remote");
  const std::string src = dir + "/src.img";
  MakeImage(src, kDisk);
  auto clock = MakeSystemClock();
  ReplicaThread server(dir + "/server");
  {
    MirrorOptions mo;
    mo.disk_path = src;
    mo.report = std::chrono::nanoseconds(0);
    mo.heartbeat = 10ms;
    DiskMirror m(MakeChannelTarget(server.replica->address()), mo, *clock);
    FakeDisk disk(src, m);
    m.start();
    std::mt19937_64 rng(5);
    for (int i = 0; i < 200; ++i) {
      const uint64_t block = rng() % (kDisk / 4096);
      disk.write(block * 4096, Pattern(4096, uint8_t(rng())));
      if (i % 50 == 0) disk.flush();
    }
    ASSERT_TRUE(m.wait_synced(20s)) << m.status().last_error;
    ASSERT_EQ(m.drain(10s), "");
    m.stop();
  }
  RemoteDisk d(Options(server.replica->address()), *clock);
  EXPECT_EQ(d.describe(), server.replica->address());
  EXPECT_EQ(d.size_bytes(), kDisk);
  const std::vector<uint8_t> local = ReadAll(src);
  std::vector<uint8_t> all(kDisk);
  ASSERT_EQ(Read(d, 0, all), 0);  // 4 requests of 1 MiB
  EXPECT_TRUE(all == local) << "the remote disk reads the copied image";

  std::vector<uint8_t> w = Pattern(kRemoteMaxBytes + 8192, 9);  // two requests
  ASSERT_EQ(Write(d, 12288, w), 0);
  std::vector<uint8_t> back(w.size());
  ASSERT_EQ(Read(d, 12288, back), 0);
  EXPECT_TRUE(back == w) << "a read after a write sees the write";
  ASSERT_EQ(d.flush(), 0);
  const std::vector<uint8_t> served = ReadAll(DiskImagePath(dir + "/server"));
  EXPECT_TRUE(std::equal(w.begin(), w.end(), served.begin() + 12288)) << "the write is on the server's image";
  EXPECT_GE(d.stats().requests, 7u);
  std::vector<uint8_t> beyond(4096);
  EXPECT_EQ(Read(d, kDisk - 2048, beyond), EINVAL) << "the server refuses a range outside the image";
  EXPECT_EQ(d.failed(), "") << "a refused request is not a lost server";
}

TEST(RemoteDisk, AServerBackWithinTheTimeoutLosesNothing) {
  const std::string dir = ScratchDir("restart");
  MakeImage(dir + "/disk.img", kDisk);
  auto clock = MakeSystemClock();
  auto server = std::make_unique<ReplicaThread>(dir);
  const std::string address = server->replica->address();
  RemoteDisk d(Options(address), *clock);
  std::vector<uint8_t> a = Pattern(8192, 1);
  ASSERT_EQ(Write(d, 0, a), 0);
  server.reset();  // the server dies; the same one comes back 0.5 s later
  std::thread back([&] {
    std::this_thread::sleep_for(500ms);
    server = std::make_unique<ReplicaThread>(dir, address);
  });
  std::vector<uint8_t> b = Pattern(4096, 2);
  const int err = Write(d, 65536, b);  // waits for it
  back.join();
  ASSERT_EQ(err, 0) << d.failed();
  EXPECT_EQ(d.stats().reconnects, 1u);
  std::vector<uint8_t> r(8192);
  ASSERT_EQ(Read(d, 0, r), 0);
  EXPECT_TRUE(r == a);
  ASSERT_EQ(d.flush(), 0);
  EXPECT_EQ(d.failed(), "");
}

TEST(RemoteDisk, AServerGoneForTheTimeoutFailsRequestsAndStopsTheVm) {
  const std::string dir = ScratchDir("lost");
  MakeImage(dir + "/disk.img", kDisk);
  auto clock = MakeSystemClock();
  auto server = std::make_unique<ReplicaThread>(dir);
  RemoteDiskOptions o = Options(server->replica->address());
  o.timeout = 500ms;
  RemoteDisk d(o, *clock);
  std::string lost;
  int calls = 0;
  d.set_lost([&](const std::string& why) {
    lost = why;
    ++calls;
  });
  server.reset();
  std::vector<uint8_t> b = Pattern(4096, 2);
  EXPECT_EQ(Write(d, 0, b), EIO);
  EXPECT_NE(lost.find("disk server " + o.address + " lost"), std::string::npos) << lost;
  EXPECT_NE(lost.find("VM stopped"), std::string::npos) << lost;
  EXPECT_EQ(Read(d, 0, b), EIO) << "every later request fails at once";
  EXPECT_EQ(d.flush(), EIO);
  EXPECT_EQ(calls, 1);
}

// A server back after its host restarted may have lost what was not flushed: with
// such writes outstanding the disk is lost; with none, the client goes on.
TEST(RemoteDisk, AServerHostRestartLosesTheDiskOnlyWithUnflushedWrites) {
  const std::string dir = ScratchDir("reboot");
  MakeImage(dir + "/disk.img", kDisk);
  auto clock = MakeSystemClock();
  auto server = std::make_unique<ReplicaThread>(dir, "tcp:127.0.0.1:0", "boot-1");
  const std::string address = server->replica->address();
  RemoteDisk d(Options(address), *clock);
  std::string lost;
  d.set_lost([&](const std::string& why) { lost = why; });
  std::vector<uint8_t> a = Pattern(4096, 1);
  ASSERT_EQ(Write(d, 0, a), 0);
  ASSERT_EQ(d.flush(), 0);
  // Everything flushed: a restart of the host loses nothing the guest was promised.
  server.reset();
  server = std::make_unique<ReplicaThread>(dir, address, "boot-2");
  std::vector<uint8_t> r(4096);
  ASSERT_EQ(Read(d, 0, r), 0) << d.failed();
  EXPECT_TRUE(r == a);
  ASSERT_EQ(Write(d, 8192, a), 0);  // not flushed
  server.reset();
  server = std::make_unique<ReplicaThread>(dir, address, "boot-3");
  EXPECT_EQ(Read(d, 0, r), EIO);
  EXPECT_NE(lost.find("its host restarted (boot boot-3, was boot-2) with writes not yet flushed"), std::string::npos)
      << lost;
}

// A raw client: opens the disk as `session`; the server's answer.
RemoteDiskOpenReply RawOpen(transport::Channel& ch, const std::string& session) {
  RemoteDiskOpen open;
  open.set_protocol_version(kRemoteProtocolVersion);
  open.set_disk_bytes(kDisk);
  open.set_vm_name("vm-" + session);
  open.set_session(session);
  const std::string b = open.SerializeAsString();
  EXPECT_TRUE(ch.send(kMsgDiskOpen, std::span(reinterpret_cast<const uint8_t*>(b.data()), b.size()), 5s).ok());
  transport::Message msg;
  RemoteDiskOpenReply reply;
  EXPECT_TRUE(ch.recv(msg, 5s).is_message());
  EXPECT_TRUE(reply.ParseFromArray(msg.payload().data(), int(msg.size())));
  return reply;
}

// One VMM at a time: another is refused while one is served; the same VMM coming
// back on a new connection (its old one broke without the server noticing) takes
// over, and the old connection is dropped.
TEST(RemoteDisk, TheServerServesOneVmAndLetsItReconnect) {
  const std::string dir = ScratchDir("session");
  MakeImage(dir + "/disk.img", kDisk);
  ReplicaThread server(dir);
  auto a = transport::Connect(server.replica->address(), 5s);
  EXPECT_EQ(RawOpen(*a, "S").error(), "");
  auto b = transport::Connect(server.replica->address(), 5s);
  EXPECT_NE(RawOpen(*b, "T").error().find("served live to vm-S"), std::string::npos);
  auto mirror = transport::Connect(server.replica->address(), 5s);
  MirrorHello hello;
  hello.set_protocol_version(kMirrorProtocolVersion);
  hello.set_disk_bytes(kDisk);
  const std::string hb = hello.SerializeAsString();
  ASSERT_TRUE(mirror->send(kMsgHello, std::span(reinterpret_cast<const uint8_t*>(hb.data()), hb.size()), 5s).ok());
  transport::Message msg;
  ASSERT_TRUE(mirror->recv(msg, 5s).is_message());
  MirrorHelloReply mr;
  ASSERT_TRUE(mr.ParseFromArray(msg.payload().data(), int(msg.size())));
  EXPECT_NE(mr.error().find("served live to vm-S"), std::string::npos) << mr.error();

  auto c = transport::Connect(server.replica->address(), 5s);
  EXPECT_EQ(RawOpen(*c, "S").error(), "") << "the same session takes over";
  const std::vector<uint8_t> req = Request(DiskOp::kRead, 1, 0, {}, 4096);
  ASSERT_TRUE(c->send(kMsgDiskRequest, req, 5s).ok());
  ASSERT_TRUE(c->recv(msg, 5s).is_message());
  DiskReply rep;
  ASSERT_EQ(DecodeDiskReply(msg.payload(), rep), "");
  EXPECT_EQ(rep.error, 0u);
  EXPECT_EQ(rep.data.size(), 4096u);
  EXPECT_TRUE(a->recv(msg, 5s).closed()) << "the old connection is dropped";
}

TEST(RemoteDisk, AStoppingVmDoesNotWaitOutTheTimeout) {
  const std::string dir = ScratchDir("cancel");
  MakeImage(dir + "/disk.img", kDisk);
  auto clock = MakeSystemClock();
  auto server = std::make_unique<ReplicaThread>(dir);
  RemoteDiskOptions o = Options(server->replica->address());
  o.timeout = 60s;
  RemoteDisk d(o, *clock);
  bool lost = false;
  d.set_lost([&](const std::string&) { lost = true; });
  server.reset();
  std::thread stopper([&] {
    std::this_thread::sleep_for(300ms);
    d.cancel();
  });
  std::vector<uint8_t> b = Pattern(4096, 2);
  EXPECT_EQ(Write(d, 0, b), ECANCELED) << "gave up, rather than waiting out the timeout (EIO)";
  stopper.join();
  EXPECT_FALSE(lost) << "a stopping VM is not a lost server";
}

TEST(RemoteDisk, RefusalsNameTheProblem) {
  const std::string dir = ScratchDir("refuse");
  auto clock = MakeSystemClock();
  ReplicaThread empty(dir + "/empty");
  auto expect_error = [&](const RemoteDiskOptions& o, const std::string& says) {
    try {
      RemoteDisk d(o, *clock);
      ADD_FAILURE() << "opened " << o.address;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
  };
  expect_error(Options(empty.replica->address()), "no disk image in " + dir + "/empty");
  ASSERT_EQ(::mkdir((dir + "/sized").c_str(), 0755), 0);
  MakeImage(dir + "/sized/disk.img", kDisk);
  ReplicaThread sized(dir + "/sized");
  expect_error(Options(sized.replica->address(), 2 * kDisk),
               "is " + std::to_string(kDisk) + " bytes, the VM's disk " + std::to_string(2 * kDisk));
  // Nobody listening there: the address and the cause.
  auto listener = transport::Listen("tcp:127.0.0.1:0");
  const std::string nobody = listener->address();
  listener.reset();
  expect_error(Options(nobody), "disk server " + nobody);

  // A client of another protocol version is refused, with both versions named.
  auto ch = transport::Connect(sized.replica->address(), 5s);
  RemoteDiskOpen open;
  open.set_protocol_version(kRemoteProtocolVersion + 41);
  open.set_disk_bytes(kDisk);
  const std::string b = open.SerializeAsString();
  ASSERT_TRUE(ch->send(kMsgDiskOpen, std::span(reinterpret_cast<const uint8_t*>(b.data()), b.size()), 5s).ok());
  transport::Message msg;
  ASSERT_TRUE(ch->recv(msg, 5s).is_message());
  RemoteDiskOpenReply reply;
  ASSERT_TRUE(reply.ParseFromArray(msg.payload().data(), int(msg.size())));
  EXPECT_NE(reply.error().find("version " + std::to_string(kRemoteProtocolVersion + 41)), std::string::npos) << reply.error();
  EXPECT_EQ(reply.protocol_version(), kRemoteProtocolVersion);
}

}  // namespace
}  // namespace ftvm::storage
