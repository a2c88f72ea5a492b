// MailClient against an in-test UDP store on 127.0.0.1 (real sockets, no mocks).
#include "tools/ftvm/mail_client.h"

#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <string>

#include "common/error.h"
#include "tests/tools/mail_test_server.h"

namespace ftvm::mail {
namespace {

using mailtest::Action;
using mailtest::TestMailServer;

// A clock only the test moves, to show deadlines and latency come from ftvm::Clock.
class ManualClock final : public Clock {
 public:
  uint64_t monotonic_ns() override { return now_.load(); }
  uint64_t wall_ns() override { return now_.load(); }
  void advance_ms(uint64_t ms) { now_ += ms * 1000000; }

 private:
  std::atomic<uint64_t> now_{1000000000};
};

// The reqid (first token) and the header line of a request datagram.
std::string ReqidOf(const std::string& dg) { return dg.substr(0, dg.find(' ')); }
std::string HeaderOf(const std::string& dg) { return dg.substr(0, dg.find('\n')); }

ClientOptions Fast(uint32_t timeout_ms = 50, uint32_t retries = 5) {
  return ClientOptions{timeout_ms, retries};
}

TEST(MailEndpoint, ParsesAddressAndPort) {
  Endpoint a = ParseEndpoint("10.0.0.2");
  EXPECT_EQ(a.host, "10.0.0.2");
  EXPECT_EQ(a.port, FTVM_MAIL_PORT);
  Endpoint b = ParseEndpoint("127.0.0.1:4000");
  EXPECT_EQ(b.port, 4000);
}

TEST(MailEndpoint, RejectsBadInputNamingIt) {
  try {
    ParseEndpoint("mail.example.com:25");
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad IPv4 address 'mail.example.com'"),
              std::string::npos) << e.what();
  }
  for (const char* bad : {"1.2.3.4:0", "1.2.3.4:65536", "1.2.3.4:", "1.2.3.4:x1"}) {
    try {
      ParseEndpoint(bad);
      FAIL() << "no throw for " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("bad port"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(MailClient(Endpoint{"300.1.1.1", 1}), Error);
}

TEST(MailClient, PingDeliverFetchCount) {
  TestMailServer server;
  MailClient c(ParseEndpoint(server.to()), Fast(1000));
  EXPECT_EQ(c.ping().status, MailStatus::kOk);

  MailResult d = c.deliver("m1", "inbox", "hello\nworld");
  EXPECT_EQ(d.status, MailStatus::kOk);
  EXPECT_EQ(d.msgid, "m1");
  EXPECT_EQ(d.attempts, 1u);

  MailResult n = c.count("inbox");
  ASSERT_EQ(n.status, MailStatus::kOk);
  EXPECT_EQ(n.count, 1u);

  MailResult f = c.fetch("inbox", 0);
  ASSERT_EQ(f.status, MailStatus::kOk);
  EXPECT_EQ(f.msgid, "m1");
  EXPECT_EQ(f.body, "hello\nworld");

  EXPECT_EQ(c.fetch("inbox", 1).status, MailStatus::kNone);
  EXPECT_EQ(c.count("empty").count, 0u);
}

TEST(MailClient, EmptyBodyRoundTrips) {
  TestMailServer server;
  MailClient c(ParseEndpoint(server.to()), Fast(1000));
  ASSERT_EQ(c.deliver("e1", "b", "").status, MailStatus::kOk);
  MailResult f = c.fetch("b", 0);
  ASSERT_EQ(f.status, MailStatus::kOk);
  EXPECT_EQ(f.body, "");
}

TEST(MailClient, RedeliveryOfStoredIdIsDuplicate) {
  TestMailServer server;
  MailClient c(ParseEndpoint(server.to()), Fast(1000));
  EXPECT_EQ(c.deliver("same", "inbox", "a").status, MailStatus::kOk);
  MailResult r = c.deliver("same", "inbox", "a");
  EXPECT_EQ(r.status, MailStatus::kDuplicate);
  EXPECT_EQ(r.msgid, "same");
  EXPECT_EQ(server.stored("inbox"), 1u);
}

TEST(MailClient, RetriesLostRequestsWithSameReqidAndMsgid) {
  // The first 3 datagrams vanish; the 4th attempt is answered.
  TestMailServer server([](size_t n) { return n < 3 ? Action::kDrop : Action::kAnswer; });
  MailClient c(ParseEndpoint(server.to()), Fast(100, 5));
  MailResult r = c.deliver("msg-42", "inbox", "body");
  EXPECT_EQ(r.status, MailStatus::kOk);
  EXPECT_EQ(r.attempts, 4u);
  auto got = server.received();
  ASSERT_EQ(got.size(), 4u);
  for (const auto& dg : got) EXPECT_EQ(dg, got[0]);  // byte-identical re-sends
  EXPECT_EQ(HeaderOf(got[0]).substr(ReqidOf(got[0]).size()), " DELIVER msg-42 inbox");
  EXPECT_EQ(server.stored("inbox"), 1u);
}

TEST(MailClient, LostReplyIsRetriedAndStoreAnswersDupExactlyOnce) {
  // The store keeps the message but its OK is lost: the retry gets DUP, and the
  // mailbox holds the message exactly once.
  TestMailServer server(
      [](size_t n) { return n == 0 ? Action::kSwallowReply : Action::kAnswer; });
  MailClient c(ParseEndpoint(server.to()), Fast(100, 5));
  MailResult r = c.deliver("once", "inbox", "x");
  EXPECT_EQ(r.status, MailStatus::kDuplicate);
  EXPECT_EQ(r.attempts, 2u);
  EXPECT_EQ(server.stored("inbox"), 1u);
  auto got = server.received();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0], got[1]);
}

TEST(MailClient, IgnoresStaleRepliesWithWrongReqid) {
  TestMailServer server([](size_t) { return Action::kStaleThenAnswer; });
  MailClient c(ParseEndpoint(server.to()), Fast(1000, 0));
  MailResult n = c.count("inbox");
  ASSERT_EQ(n.status, MailStatus::kOk);
  EXPECT_EQ(n.count, 0u);  // not the stale "COUNT 999"
  EXPECT_EQ(n.attempts, 1u);
  MailResult d = c.deliver("real", "inbox", "x");
  EXPECT_EQ(d.status, MailStatus::kOk);
  EXPECT_EQ(d.msgid, "real");  // not the stale "OK bogus"
  EXPECT_EQ(c.ping().status, MailStatus::kOk);
}

TEST(MailClient, DistinctRequestsGetDistinctReqids) {
  TestMailServer server;
  MailClient c(ParseEndpoint(server.to()), Fast(1000));
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(c.ping().ok());
  std::set<std::string> ids;
  for (const auto& dg : server.received()) {
    std::string id = ReqidOf(dg);
    EXPECT_LE(id.size(), FTVM_MAIL_MAX_REQID);
    ids.insert(id);
  }
  EXPECT_EQ(ids.size(), 20u);
}

TEST(MailClient, TimesOutAfterBoundedRetries) {
  TestMailServer server([](size_t) { return Action::kSilent; });
  MailClient c(ParseEndpoint(server.to()), Fast(20, 2));
  MailResult r = c.ping();
  EXPECT_EQ(r.status, MailStatus::kTimeout);
  EXPECT_EQ(r.attempts, 3u);
  EXPECT_NE(r.error.find("after 3 attempts"), std::string::npos) << r.error;
  EXPECT_EQ(server.received().size(), 3u);
}

TEST(MailClient, FrozenInjectedClockDoesNotHang) {
  // With a clock that never moves, the real poll timeout still ends each attempt.
  TestMailServer server([](size_t) { return Action::kSilent; });
  ManualClock clock;
  MailClient c(ParseEndpoint(server.to()), Fast(20, 1), &clock);
  EXPECT_EQ(c.ping().status, MailStatus::kTimeout);
}

TEST(MailClient, LatencyComesFromInjectedClock) {
  ManualClock clock;
  TestMailServer server(nullptr, [&](size_t) { clock.advance_ms(7); });
  MailClient c(ParseEndpoint(server.to()), Fast(1000), &clock);
  MailResult r = c.ping();
  ASSERT_EQ(r.status, MailStatus::kOk);
  EXPECT_EQ(r.latency_us, 7000u);
}

TEST(MailClient, DeadlineFollowsInjectedClock) {
  // Attempt 1 only gets a stale reply, sent after the clock jumped past the attempt's
  // deadline: the client must give up on attempt 1 at once (no real 1 s wait) and
  // retry; attempt 2 is answered.
  ManualClock clock;
  TestMailServer server([](size_t n) { return n == 0 ? Action::kStaleOnly : Action::kAnswer; },
                        [&](size_t n) {
                          if (n == 0) clock.advance_ms(1001);
                        });
  MailClient c(ParseEndpoint(server.to()), Fast(1000, 3), &clock);
  MailResult r = c.ping();
  ASSERT_EQ(r.status, MailStatus::kOk);
  EXPECT_EQ(r.attempts, 2u);
}

TEST(MailClient, ValidatesLimitsBeforeSending) {
  TestMailServer server;
  MailClient c(ParseEndpoint(server.to()), Fast(1000));
  MailResult r = c.deliver("id", std::string(FTVM_MAIL_MAX_MAILBOX + 1, 'b'), "x");
  EXPECT_EQ(r.status, MailStatus::kError);
  EXPECT_NE(r.error.find("FTVM_MAIL_MAX_MAILBOX"), std::string::npos) << r.error;

  r = c.deliver(std::string(FTVM_MAIL_MAX_MSGID + 1, 'i'), "box", "x");
  EXPECT_NE(r.error.find("FTVM_MAIL_MAX_MSGID"), std::string::npos) << r.error;

  r = c.deliver("id", "box", std::string(FTVM_MAIL_MAX_BODY + 1, 'x'));
  EXPECT_NE(r.error.find("FTVM_MAIL_MAX_BODY"), std::string::npos) << r.error;

  r = c.deliver("has space", "box", "x");
  EXPECT_EQ(r.status, MailStatus::kError);
  r = c.count("");
  EXPECT_EQ(r.status, MailStatus::kError);
  r = c.fetch("a\nb", 0);
  EXPECT_EQ(r.status, MailStatus::kError);

  // At the limits exactly is fine.
  r = c.deliver(std::string(FTVM_MAIL_MAX_MSGID, 'i'), std::string(FTVM_MAIL_MAX_MAILBOX, 'b'),
                std::string(FTVM_MAIL_MAX_BODY, 'x'));
  EXPECT_EQ(r.status, MailStatus::kOk) << r.error;
  EXPECT_EQ(server.received().size(), 1u);  // nothing invalid reached the wire
}

TEST(MailClient, StoreErrorIsReported) {
  std::string reqid;
  MailResult r;
  ASSERT_TRUE(ParseReply("abc ERR mailbox full", "DELIVER", &reqid, &r));
  EXPECT_EQ(reqid, "abc");
  EXPECT_EQ(r.status, MailStatus::kError);
  EXPECT_EQ(r.error, "store error: mailbox full");

  MailResult u;
  ASSERT_TRUE(ParseReply("abc PONG", "COUNT", &reqid, &u));
  EXPECT_EQ(u.status, MailStatus::kError);  // wrong verb for the request
  MailResult v;
  EXPECT_FALSE(ParseReply("- ERR unreadable", "PING", &reqid, &v));
  EXPECT_FALSE(ParseReply("", "PING", &reqid, &v));
}

TEST(MailLoad, CompletesAllRequestsWithSaneLatencies) {
  TestMailServer server;
  MailClient c(ParseEndpoint(server.to()), Fast(1000, 5));
  LoadOptions o;
  o.rate = 2000;
  o.duration_s = 0.5;
  o.mailboxes = 4;
  o.window = 32;
  o.body_size = 100;
  o.seed = 1;
  LoadReport r = c.run_load(o);
  EXPECT_EQ(r.sent, 1000u);
  EXPECT_EQ(r.completed, 1000u);
  EXPECT_EQ(r.timeouts, 0u);
  EXPECT_EQ(r.errors, 0u);
  EXPECT_GT(r.throughput_rps, 0);
  EXPECT_LE(r.p50_us, r.p90_us);
  EXPECT_LE(r.p90_us, r.p99_us);
  EXPECT_LE(r.p99_us, r.max_us);
  EXPECT_EQ(server.received().size(), 1000u + r.retries);
  size_t stored = 0;
  for (int b = 0; b < 4; ++b) stored += server.stored("load" + std::to_string(b));
  EXPECT_GT(stored, 0u);  // the 50:30:20 mix delivered something
}

TEST(MailLoad, RecoversFromLossByRetrying) {
  // Every 7th datagram is lost on the way in, every 11th reply on the way out;
  // retries must cover both, and lost-reply DELIVERs come back as DUP.
  TestMailServer server([](size_t n) {
    if (n % 7 == 3) return Action::kDrop;
    if (n % 11 == 5) return Action::kSwallowReply;
    return Action::kAnswer;
  });
  MailClient c(ParseEndpoint(server.to()), Fast(30, 10));
  LoadOptions o;
  o.rate = 1000;
  o.duration_s = 0.3;
  o.window = 16;
  LoadReport r = c.run_load(o);
  EXPECT_EQ(r.sent, 300u);
  EXPECT_EQ(r.completed, 300u);
  EXPECT_EQ(r.timeouts, 0u);
  EXPECT_GT(r.retries, 0u);
  EXPECT_LE(r.p50_us, r.p99_us);
  EXPECT_LE(r.p99_us, r.max_us);
}

TEST(MailLoad, CountsTimeoutsAgainstDeadStore) {
  TestMailServer server([](size_t) { return Action::kSilent; });
  MailClient c(ParseEndpoint(server.to()), Fast(10, 1));
  LoadOptions o;
  o.rate = 100;
  o.duration_s = 0.1;
  LoadReport r = c.run_load(o);
  EXPECT_EQ(r.sent, 10u);
  EXPECT_EQ(r.completed, 0u);
  EXPECT_EQ(r.timeouts, 10u);
  EXPECT_EQ(r.retries, 10u);
}

TEST(MailLoad, RejectsBadOptions) {
  TestMailServer server;
  MailClient c(ParseEndpoint(server.to()), Fast());
  LoadOptions o;
  o.window = 0;
  EXPECT_THROW(c.run_load(o), Error);
  o = {};
  o.body_size = FTVM_MAIL_MAX_BODY + 1;
  ASSERT_TRUE(ValidateLoadOptions(o).has_value());
  EXPECT_NE(ValidateLoadOptions(o)->find("FTVM_MAIL_MAX_BODY"), std::string::npos);
  o = {};
  o.deliver_weight = o.fetch_weight = o.count_weight = 0;
  EXPECT_TRUE(ValidateLoadOptions(o).has_value());
  o = {};
  o.rate = 0;
  EXPECT_TRUE(ValidateLoadOptions(o).has_value());
}

}  // namespace
}  // namespace ftvm::mail
