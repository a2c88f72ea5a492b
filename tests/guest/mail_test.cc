// The mail store's core (protocol, index, journal, request handling) on the host,
// with an in-memory disk that can tear writes and fail.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "guest/apps/mail_index.h"
#include "guest/apps/mail_journal.h"
#include "guest/apps/mail_proto.h"
#include "guest/apps/mail_server.h"
#include "guest/lib/arena.h"

namespace ftvm::guest {
namespace {

std::string S(Str s) { return std::string(s.p, s.n); }
Str Of(const std::string& s) { return Str(s.data(), s.size()); }

// The request's slices point into the input: keep every parsed string alive.
MailRequest Parse(const std::string& s) {
  static std::vector<std::unique_ptr<std::string>> keep;
  keep.push_back(std::make_unique<std::string>(s));
  return mail_parse(reinterpret_cast<const uint8_t*>(keep.back()->data()), s.size());
}

// ---- protocol ------------------------------------------------------------------

TEST(MailProto, ParsesEachCommand) {
  MailRequest r = Parse("17 PING");
  EXPECT_EQ(r.cmd, MailCmd::kPing);
  EXPECT_EQ(S(r.reqid), "17");
  r = Parse("a1 DELIVER msg-1 alice\nline1\nline2");
  EXPECT_EQ(r.cmd, MailCmd::kDeliver);
  EXPECT_EQ(S(r.msgid), "msg-1");
  EXPECT_EQ(S(r.mailbox), "alice");
  EXPECT_EQ(S(r.body), "line1\nline2");
  r = Parse("a2 DELIVER m2 bob");  // no newline: empty body
  EXPECT_EQ(r.cmd, MailCmd::kDeliver);
  EXPECT_EQ(S(r.body), "");
  r = Parse("a3 FETCH alice 12\r\n");
  EXPECT_EQ(r.cmd, MailCmd::kFetch);
  EXPECT_EQ(r.index, 12u);
  r = Parse("a4  COUNT   alice");  // runs of spaces are fine
  EXPECT_EQ(r.cmd, MailCmd::kCount);
  EXPECT_EQ(S(r.mailbox), "alice");
}

TEST(MailProto, RejectsMalformed) {
  struct Case {
    std::string in, reqid, error;
  };
  const Case cases[] = {
      {"", "-", FTVM_MAIL_ERR_EMPTY},
      {"\n", "-", FTVM_MAIL_ERR_EMPTY},
      {std::string(17, 'r') + " PING", "-", FTVM_MAIL_ERR_BAD_REQID},
      {std::string("r\x01 PING"), "-", FTVM_MAIL_ERR_BAD_REQID},
      {"r1", "r1", FTVM_MAIL_ERR_UNKNOWN_COMMAND},
      {"r1 ping", "r1", FTVM_MAIL_ERR_UNKNOWN_COMMAND},
      {"r1 PING x", "r1", FTVM_MAIL_ERR_BAD_ARGS},
      {"r1 DELIVER m", "r1", FTVM_MAIL_ERR_BAD_ARGS},
      {"r1 DELIVER " + std::string(65, 'm') + " box", "r1", FTVM_MAIL_ERR_BAD_MSGID},
      {"r1 DELIVER m " + std::string(33, 'b'), "r1", FTVM_MAIL_ERR_BAD_MAILBOX},
      {"r1 DELIVER m b\n" + std::string(1025, 'x'), "r1", FTVM_MAIL_ERR_BODY_TOO_LONG},
      {"r1 FETCH b -1", "r1", FTVM_MAIL_ERR_BAD_ARGS},
      {"r1 FETCH b 0x1", "r1", FTVM_MAIL_ERR_BAD_ARGS},
      {"r1 FETCH b 99999999999999999999", "r1", FTVM_MAIL_ERR_BAD_ARGS},
      {"r1 COUNT", "r1", FTVM_MAIL_ERR_BAD_ARGS},
      {"r1 COUNT a b c d e", "r1", FTVM_MAIL_ERR_BAD_ARGS},
      {"r1 PING\n" + std::string(1400, 'x'), "r1", FTVM_MAIL_ERR_TOO_LONG},
  };
  for (const Case& c : cases) {
    MailRequest r = Parse(c.in);
    EXPECT_EQ(r.cmd, MailCmd::kInvalid) << c.in.substr(0, 40);
    EXPECT_EQ(S(r.reqid), c.reqid) << c.in.substr(0, 40);
    EXPECT_STREQ(r.error, c.error.c_str()) << c.in.substr(0, 40);
  }
  // Limits themselves are fine.
  EXPECT_EQ(Parse("r DELIVER " + std::string(64, 'm') + " " + std::string(32, 'b') + "\n" +
                  std::string(1024, 'x'))
                .cmd,
            MailCmd::kDeliver);
  EXPECT_EQ(mail_parse(nullptr, 0).cmd, MailCmd::kInvalid);
}

TEST(MailProto, ReplyBuilderTruncates) {
  char buf[8];
  MailReply r(buf, sizeof buf);
  r.put("abc").put_u64(12345).put("zz");
  EXPECT_EQ(r.len(), 8u);
  EXPECT_TRUE(r.truncated());
  EXPECT_EQ(std::string(buf, 8), "abc12345");
}

// ---- index ---------------------------------------------------------------------

class Mem {
 public:
  explicit Mem(size_t bytes) : buf_(bytes), arena_(buf_.data(), buf_.size()) {}
  Arena* arena() { return &arena_; }

 private:
  std::vector<uint8_t> buf_;
  Arena arena_;
};

TEST(MailIndex, AddFetchCountAcrossChunks) {
  Mem mem(4 << 20);
  MailIndex idx;
  ASSERT_TRUE(idx.init(mem.arena(), 1000, 16));
  for (int i = 0; i < 200; ++i) {
    std::string id = "id" + std::to_string(i), body = "body" + std::to_string(i);
    ASSERT_EQ(idx.add(Of(id), Str::of(i % 2 ? "odd" : "even"), Of(body)), MailIndex::AddResult::kAdded);
  }
  EXPECT_EQ(idx.messages(), 200u);
  EXPECT_EQ(idx.count(Str::of("odd")), 100u);
  EXPECT_EQ(idx.count(Str::of("nobody")), 0u);
  const MailMessage* m = idx.fetch(Str::of("odd"), 99);  // past the first 62-entry chunk
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(S(m->msgid), "id199");
  EXPECT_EQ(S(m->body), "body199");
  EXPECT_EQ(idx.fetch(Str::of("odd"), 100), nullptr);
  EXPECT_EQ(idx.add(Str::of("id5"), Str::of("x"), Str::of("")), MailIndex::AddResult::kDuplicate);
  EXPECT_TRUE(idx.contains(Str::of("id0")));
  EXPECT_FALSE(idx.contains(Str::of("id200")));
}

TEST(MailIndex, LimitsReportFull) {
  Mem mem(1 << 20);
  MailIndex idx;
  ASSERT_TRUE(idx.init(mem.arena(), 3, 2));
  EXPECT_EQ(idx.add(Str::of("a"), Str::of("box1"), Str::of("x")), MailIndex::AddResult::kAdded);
  EXPECT_EQ(idx.add(Str::of("b"), Str::of("box2"), Str::of("x")), MailIndex::AddResult::kAdded);
  EXPECT_FALSE(idx.can_add(Str::of("box3"), 1, 1));  // third mailbox
  EXPECT_EQ(idx.add(Str::of("c"), Str::of("box3"), Str::of("x")), MailIndex::AddResult::kFull);
  EXPECT_EQ(idx.add(Str::of("c"), Str::of("box1"), Str::of("x")), MailIndex::AddResult::kAdded);
  EXPECT_EQ(idx.add(Str::of("d"), Str::of("box1"), Str::of("x")), MailIndex::AddResult::kFull);
  EXPECT_EQ(idx.count(Str::of("box1")), 2u);

  Mem tiny(8192);  // tables fit, messages soon do not
  MailIndex small;
  ASSERT_TRUE(small.init(tiny.arena(), 100, 4));
  int added = 0;
  std::string body(512, 'b');
  for (int i = 0; i < 100; ++i) {
    std::string id = "m" + std::to_string(i);
    bool can = small.can_add(Str::of("x"), id.size(), body.size());
    MailIndex::AddResult r = small.add(Of(id), Str::of("x"), Of(body));
    if (can) {
      EXPECT_EQ(r, MailIndex::AddResult::kAdded);  // can_add never lies
    }
    if (r != MailIndex::AddResult::kAdded) break;
    ++added;
  }
  EXPECT_GT(added, 0);
  EXPECT_LT(added, 100);
  EXPECT_EQ(small.count(Str::of("x")), uint64_t(added));
  const MailMessage* last = small.fetch(Str::of("x"), uint64_t(added - 1));
  ASSERT_NE(last, nullptr);
  EXPECT_EQ(S(last->msgid), "m" + std::to_string(added - 1));
}

// ---- journal -------------------------------------------------------------------

class MemDisk final : public BlockStore {
 public:
  explicit MemDisk(uint64_t sectors) : data(sectors * kSectorBytes, 0) {}
  uint64_t capacity_sectors() const override { return data.size() / kSectorBytes; }
  bool read(uint64_t sector, void* buf, uint32_t count) override {
    ++reads;
    if ((sector + count) * kSectorBytes > data.size()) return false;
    memcpy(buf, &data[sector * kSectorBytes], size_t(count) * kSectorBytes);
    return true;
  }
  bool write_flush(uint64_t sector, const void* buf, uint32_t count) override {
    ++batches;
    if (fail_writes || (sector + count) * kSectorBytes > data.size()) return false;
    // A torn write: only the first `tear_after` sectors reach the disk.
    uint32_t n = tear_after >= 0 && uint32_t(tear_after) < count ? uint32_t(tear_after) : count;
    memcpy(&data[sector * kSectorBytes], buf, size_t(n) * kSectorBytes);
    return n == count;
  }
  std::vector<uint8_t> data;
  int reads = 0, batches = 0;
  bool fail_writes = false;
  int tear_after = -1;
};

struct Recovered {
  std::vector<std::string> ids, boxes, bodies;
  static void Add(void* ctx, Str id, Str box, Str body) {
    auto* r = static_cast<Recovered*>(ctx);
    r->ids.push_back(S(id));
    r->boxes.push_back(S(box));
    r->bodies.push_back(S(body));
  }
};

struct JournalHarness {
  explicit JournalHarness(MemDisk* d) : staging(64 * 1024), scan(8 * 1024), j(d, staging.data(), staging.size(), scan.data(), scan.size()) {}
  std::vector<uint8_t> staging, scan;
  Journal j;
};

TEST(MailJournal, FormatsZeroedDiskThenRecovers) {
  MemDisk disk(2048);
  {
    JournalHarness h(&disk);
    Recovered r;
    EXPECT_EQ(h.j.open(0xabc, Recovered::Add, &r), Journal::OpenResult::kFormatted);
    EXPECT_TRUE(h.j.stage(Str::of("m1"), Str::of("alice"), Str::of("hello")));
    EXPECT_TRUE(h.j.stage(Str::of("m2"), Str::of("bob"), Of(std::string(1024, 'z'))));  // 3 sectors
    EXPECT_TRUE(h.j.stage(Str::of("m3"), Str::of("alice"), Str::of("")));
    int before = disk.batches;
    EXPECT_TRUE(h.j.commit());
    EXPECT_EQ(disk.batches, before + 1);  // one write+flush batch for three records
    EXPECT_EQ(h.j.next_sector(), 1u + 1 + 3 + 1);
  }
  JournalHarness h2(&disk);
  Recovered r;
  ASSERT_EQ(h2.j.open(0xdef, Recovered::Add, &r), Journal::OpenResult::kRecovered);
  EXPECT_EQ(h2.j.journal_id(), 0xabcu);  // the id on disk, not the new one
  ASSERT_EQ(r.ids, (std::vector<std::string>{"m1", "m2", "m3"}));
  EXPECT_EQ(r.boxes[1], "bob");
  EXPECT_EQ(r.bodies[1], std::string(1024, 'z'));
  EXPECT_EQ(r.bodies[2], "");
  EXPECT_EQ(h2.j.records(), 3u);
  EXPECT_STREQ(h2.j.stop_reason(), "end");
  // Appending continues after the last record.
  EXPECT_TRUE(h2.j.stage(Str::of("m4"), Str::of("c"), Str::of("x")));
  EXPECT_TRUE(h2.j.commit());
  JournalHarness h3(&disk);
  Recovered r3;
  ASSERT_EQ(h3.j.open(1, Recovered::Add, &r3), Journal::OpenResult::kRecovered);
  EXPECT_EQ(r3.ids.size(), 4u);
}

TEST(MailJournal, StopsAtTornRecordAndOverwritesIt) {
  MemDisk disk(256);
  {
    JournalHarness h(&disk);
    Recovered r;
    h.j.open(7, Recovered::Add, &r);
    h.j.stage(Str::of("a"), Str::of("box"), Str::of("first"));
    ASSERT_TRUE(h.j.commit());
    disk.tear_after = 2;  // of a 3-sector record only 2 sectors land
    h.j.stage(Str::of("b"), Str::of("box"), Of(std::string(1000, 'q')));
    EXPECT_FALSE(h.j.commit());
  }
  disk.tear_after = -1;
  JournalHarness h2(&disk);
  Recovered r;
  ASSERT_EQ(h2.j.open(8, Recovered::Add, &r), Journal::OpenResult::kRecovered);
  EXPECT_EQ(r.ids, (std::vector<std::string>{"a"}));
  EXPECT_STREQ(h2.j.stop_reason(), "torn");
  EXPECT_EQ(h2.j.next_sector(), 2u);
  // A shorter record replaces the torn one; the torn one's tail is not mistaken
  // for a record afterwards.
  h2.j.stage(Str::of("c"), Str::of("box"), Str::of("short"));
  ASSERT_TRUE(h2.j.commit());
  JournalHarness h3(&disk);
  Recovered r3;
  ASSERT_EQ(h3.j.open(9, Recovered::Add, &r3), Journal::OpenResult::kRecovered);
  EXPECT_EQ(r3.ids, (std::vector<std::string>{"a", "c"}));
}

TEST(MailJournal, RejectsCorruptionAndForeignData) {
  MemDisk disk(256);
  {
    JournalHarness h(&disk);
    Recovered r;
    h.j.open(7, Recovered::Add, &r);
    for (int i = 0; i < 5; ++i) h.j.stage(Of("m" + std::to_string(i)), Str::of("b"), Str::of("body"));
    ASSERT_TRUE(h.j.commit());
  }
  disk.data[3 * kSectorBytes + 129] ^= 1;  // a body byte of record #2 (sector 3)
  {
    JournalHarness h(&disk);
    Recovered r;
    ASSERT_EQ(h.j.open(1, Recovered::Add, &r), Journal::OpenResult::kRecovered);
    EXPECT_EQ(r.ids.size(), 2u);  // stops at the first bad one, even with good ones after
  }
  MemDisk garbage(256);
  garbage.data[10] = 1;
  JournalHarness hg(&garbage);
  Recovered r;
  EXPECT_EQ(hg.j.open(1, Recovered::Add, &r), Journal::OpenResult::kNotAJournal);
  EXPECT_EQ(garbage.batches, 0);  // never formatted over foreign data

  MemDisk tiny(1);
  JournalHarness ht(&tiny);
  EXPECT_EQ(ht.j.open(1, Recovered::Add, &r), Journal::OpenResult::kTooSmall);
}

TEST(MailJournal, RecordsOfAnotherFormatAreIgnored) {
  MemDisk disk(256);
  {
    JournalHarness h(&disk);
    Recovered r;
    h.j.open(111, Recovered::Add, &r);
    h.j.stage(Str::of("old1"), Str::of("b"), Str::of("x"));
    h.j.stage(Str::of("old2"), Str::of("b"), Str::of("y"));
    ASSERT_TRUE(h.j.commit());
  }
  // Re-format: zero only the superblock, as a tool wiping the header would.
  std::fill(disk.data.begin(), disk.data.begin() + kSectorBytes, 0);
  {
    JournalHarness h(&disk);
    Recovered r;
    ASSERT_EQ(h.j.open(222, Recovered::Add, &r), Journal::OpenResult::kFormatted);
  }
  JournalHarness h(&disk);
  Recovered r;
  ASSERT_EQ(h.j.open(333, Recovered::Add, &r), Journal::OpenResult::kRecovered);
  EXPECT_TRUE(r.ids.empty());  // old records carry journal id 111
}

TEST(MailJournal, ScanWindowBoundaries) {
  // Records straddling the 16-sector scan window are re-read, not lost.
  MemDisk disk(4096);
  {
    JournalHarness h(&disk);
    Recovered r;
    h.j.open(5, Recovered::Add, &r);
    for (int i = 0; i < 300; ++i) {
      ASSERT_TRUE(h.j.stage(Of("id" + std::to_string(i)), Str::of("b"), Of(std::string(size_t(i * 7 % 1025), 'a'))));
      if (i % 10 == 9) {
        ASSERT_TRUE(h.j.commit());
      }
    }
  }
  JournalHarness h(&disk);
  Recovered r;
  ASSERT_EQ(h.j.open(5, Recovered::Add, &r), Journal::OpenResult::kRecovered);
  ASSERT_EQ(r.ids.size(), 300u);
  for (int i = 0; i < 300; ++i) EXPECT_EQ(r.bodies[size_t(i)].size(), size_t(i * 7 % 1025));
}

TEST(MailJournal, FullDiskAndFullBatch) {
  MemDisk disk(4);  // superblock + 3 record sectors
  JournalHarness h(&disk);
  Recovered r;
  h.j.open(1, Recovered::Add, &r);
  EXPECT_TRUE(h.j.stage(Str::of("a"), Str::of("b"), Of(std::string(800, 'x'))));  // 2 sectors
  EXPECT_FALSE(h.j.stage(Str::of("c"), Str::of("b"), Of(std::string(800, 'x'))));  // would pass the end
  EXPECT_TRUE(h.j.stage(Str::of("d"), Str::of("b"), Str::of("x")));
  EXPECT_TRUE(h.j.commit());
  EXPECT_FALSE(h.j.stage(Str::of("e"), Str::of("b"), Str::of("x")));
}

// ---- server --------------------------------------------------------------------

class MailServerTest : public ::testing::Test {
 protected:
  MailServerTest() : mem_(8 << 20), disk_(4096), jh_(&disk_), server_(&index_, &jh_.j) {
    index_.init(mem_.arena(), 10000, 64);
    Recovered r;
    jh_.j.open(42, Recovered::Add, &r);
  }
  std::string Handle(const std::string& req) {
    char out[FTVM_MAIL_MAX_DATAGRAM];
    size_t n = server_.handle(reinterpret_cast<const uint8_t*>(req.data()), req.size(), out, sizeof out);
    return std::string(out, n);
  }
  Mem mem_;
  MemDisk disk_;
  JournalHarness jh_;
  MailIndex index_;
  MailServer server_;
};

TEST_F(MailServerTest, Conversation) {
  EXPECT_EQ(Handle("1 PING"), "1 PONG");
  EXPECT_EQ(Handle("2 DELIVER m1 alice\nHello"), "2 OK m1");
  EXPECT_EQ(Handle("3 DELIVER m1 alice\nHello again"), "3 DUP m1");  // same batch: DUP already
  EXPECT_EQ(Handle("4 DELIVER m2 alice\n"), "4 OK m2");
  EXPECT_TRUE(server_.commit());
  EXPECT_EQ(Handle("5 COUNT alice"), "5 COUNT 2");
  EXPECT_EQ(Handle("6 FETCH alice 0"), "6 MSG m1\nHello");
  EXPECT_EQ(Handle("7 FETCH alice 1"), "7 MSG m2\n");
  EXPECT_EQ(Handle("8 FETCH alice 2"), "8 NONE");
  EXPECT_EQ(Handle("9 COUNT bob"), "9 COUNT 0");
  EXPECT_EQ(Handle("10 NOPE"), "10 ERR unknown-command");
  EXPECT_EQ(Handle(""), "- ERR empty");
  EXPECT_EQ(server_.stats().delivered, 2u);
  EXPECT_EQ(server_.stats().duplicates, 1u);
  EXPECT_EQ(server_.stats().commits, 1u);
  EXPECT_TRUE(server_.commit());  // nothing staged: no disk batch
  EXPECT_EQ(server_.stats().commits, 1u);

  // Everything acknowledged is recovered from the disk.
  JournalHarness again(&disk_);
  Recovered r;
  ASSERT_EQ(again.j.open(1, Recovered::Add, &r), Journal::OpenResult::kRecovered);
  EXPECT_EQ(r.ids, (std::vector<std::string>{"m1", "m2"}));
}

TEST_F(MailServerTest, FullestReplyFitsOneDatagram) {
  std::string id(64, 'i'), body(1024, 'b');
  EXPECT_EQ(Handle("r DELIVER " + id + " box\n" + body), "r OK " + id);
  std::string reply = Handle(std::string(16, 'q') + " FETCH box 0");
  EXPECT_EQ(reply, std::string(16, 'q') + " MSG " + id + "\n" + body);
  EXPECT_LE(reply.size(), size_t(FTVM_MAIL_MAX_DATAGRAM));
}

TEST_F(MailServerTest, CommitFailureIsReported) {
  EXPECT_EQ(Handle("1 DELIVER m1 a\nx"), "1 OK m1");
  disk_.fail_writes = true;
  EXPECT_FALSE(server_.commit());
}

TEST(MailServerFull, JournalFullGivesErrFullAndKeepsIndexConsistent) {
  Mem mem(1 << 20);
  MemDisk disk(3);  // room for two one-sector records
  JournalHarness jh(&disk);
  MailIndex index;
  index.init(mem.arena(), 100, 8);
  Recovered r;
  jh.j.open(1, Recovered::Add, &r);
  MailServer server(&index, &jh.j);
  char out[FTVM_MAIL_MAX_DATAGRAM];
  auto handle = [&](const std::string& s) {
    return std::string(out, server.handle(reinterpret_cast<const uint8_t*>(s.data()), s.size(), out, sizeof out));
  };
  EXPECT_EQ(handle("1 DELIVER a b\nx"), "1 OK a");
  EXPECT_EQ(handle("2 DELIVER c b\nx"), "2 OK c");
  EXPECT_EQ(handle("3 DELIVER d b\nx"), "3 ERR full");
  EXPECT_FALSE(index.contains(Str::of("d")));  // not claimed when not stored
  EXPECT_TRUE(server.commit());
}

}  // namespace
}  // namespace ftvm::guest
