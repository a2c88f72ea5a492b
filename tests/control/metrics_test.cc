// The HTTP endpoint of a VMM (--metrics), without a VMM: a fake status and action
// handler behind a MetricsServer on a free port. The routes (the dashboard page,
// the status JSON with CORS, metrics, 404), actions refused without a handler
// (403), a refusal as 409 with its reason, and an accepted action whose follow-up
// runs only once its answer went out. Also the address check and the JSON writer.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "common/error.h"
#include "control/metrics.h"
#include "tests/support/harness.h"

namespace ftvm::control {
namespace {

using itest::HttpRequest;

StatusReply FakeStatus() {
  StatusReply s;
  s.set_role("primary");
  s.set_state("protected");
  s.set_host("a \"quoted\" host");
  s.set_runs_vm(true);
  s.set_generation(3);
  return s;
}

TEST(Metrics, PagesStatusAndMetrics) {
  MetricsServer server("127.0.0.1:0", FakeStatus, nullptr);
  const std::string a = server.address();
  const std::string page = HttpRequest(a, "GET", "/");
  EXPECT_NE(page.find("HTTP/1.1 200"), std::string::npos);
  EXPECT_NE(page.find("text/html; charset=utf-8"), std::string::npos);
  EXPECT_NE(page.find(std::string(DashboardHtml().substr(0, 40))), std::string::npos);
  EXPECT_EQ(DashboardHtml().substr(0, 15), "<!DOCTYPE html>");
  const std::string status = HttpRequest(a, "GET", "/api/status?t=1");
  EXPECT_NE(status.find("Access-Control-Allow-Origin: *"), std::string::npos) << status;
  EXPECT_NE(status.find("\"host\":\"a \\\"quoted\\\" host\""), std::string::npos) << status;
  EXPECT_NE(status.find("\"generation\":\"3\""), std::string::npos) << status;
  EXPECT_NE(status.find("\"runs_vm\":true"), std::string::npos) << status;
  EXPECT_NE(HttpRequest(a, "GET", "/metrics").find("ftvm_generation{"), std::string::npos);
  EXPECT_NE(HttpRequest(a, "GET", "/nothing").find("HTTP/1.1 404"), std::string::npos);
  EXPECT_NE(HttpRequest(a, "POST", "/metrics").find("HTTP/1.1 404"), std::string::npos);
  EXPECT_EQ(StatusJson(FakeStatus()), status.substr(status.find("\r\n\r\n") + 4));
}

// A VM with a DR target has its lag, consistency and checkpoints as series; one
// without has none of them.
TEST(Metrics, DrSeriesOnlyWithADrTarget) {
  StatusReply s = FakeStatus();
  EXPECT_EQ(RenderPrometheus(s).find("ftvm_dr_"), std::string::npos);
  s.set_dr_target("tcp:10.0.0.9:7300");
  s.set_dr_consistent(true);
  s.set_dr_behind_ms(1500);
  std::string text = RenderPrometheus(s);
  EXPECT_NE(text.find("ftvm_dr_behind_seconds{"), std::string::npos) << text;
  EXPECT_NE(text.find("} 1.5\n"), std::string::npos) << text;
  EXPECT_NE(text.find("ftvm_dr_checkpoints_total{"), std::string::npos) << text;
  EXPECT_EQ(text.find("ftvm_dr_checkpoint_age_seconds"), std::string::npos) << "no checkpoint yet, no age:\n" << text;
  s.set_dr_checkpoints(2);
  s.set_dr_checkpoint_age_s(4.25);
  text = RenderPrometheus(s);
  EXPECT_NE(text.find("ftvm_dr_checkpoint_age_seconds{"), std::string::npos) << text;
  EXPECT_NE(text.find("} 4.25\n"), std::string::npos) << text;
}

TEST(Metrics, ActionsAreRefusedWithoutAHandler) {
  MetricsServer server("127.0.0.1:0", FakeStatus, nullptr);
  for (const char* path : {"/api/drill", "/api/migrate"}) {
    const std::string r = HttpRequest(server.address(), "POST", path);
    EXPECT_NE(r.find("HTTP/1.1 403"), std::string::npos) << r;
    EXPECT_NE(r.find("--dashboard-actions"), std::string::npos) << r;
  }
  EXPECT_NE(HttpRequest(server.address(), "GET", "/api/drill").find("HTTP/1.1 405"), std::string::npos);
}

TEST(Metrics, AnActionIsAnsweredBeforeItsFollowUpRuns) {
  std::atomic<int> drills{0}, switchovers{0};
  std::atomic<bool> followed_up{false};
  MetricsServer server("127.0.0.1:0", FakeStatus, [&](const Request& r, Responder& out) {
    Reply reply;
    if (r.has_switchover()) {
      ++switchovers;
      throw Error("not \"now\"");
    }
    EXPECT_TRUE(r.has_failover_test());
    ++drills;
    out.then([&] { followed_up = true; });
    reply.mutable_action()->set_message("drill started");
    return reply;
  });
  const std::string drill = HttpRequest(server.address(), "POST", "/api/drill");
  EXPECT_NE(drill.find("HTTP/1.1 200"), std::string::npos) << drill;
  EXPECT_NE(drill.find("{\"message\":\"drill started\"}"), std::string::npos) << drill;
  EXPECT_NE(drill.find("Access-Control-Allow-Origin: *"), std::string::npos) << drill;
  for (int i = 0; i < 200 && !followed_up; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_TRUE(followed_up);
  const std::string refused = HttpRequest(server.address(), "POST", "/api/migrate");
  EXPECT_NE(refused.find("HTTP/1.1 409"), std::string::npos) << refused;
  EXPECT_NE(refused.find("{\"error\":\"not \\\"now\\\"\"}"), std::string::npos) << refused;
  EXPECT_EQ(drills, 1);
  EXPECT_EQ(switchovers, 1);
  EXPECT_NE(HttpRequest(server.address(), "OPTIONS", "/api/drill").find("HTTP/1.1 204"), std::string::npos);
}

// A connection that never sends a request is dropped, and the server answers others.
TEST(Metrics, ASilentClientDoesNotHoldTheServer) {
  MetricsServer server("127.0.0.1:0", FakeStatus, nullptr);
  const std::string a = server.address();
  const size_t colon = a.rfind(':');
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(std::stoi(a.substr(colon + 1))));
  ASSERT_EQ(inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr), 1);
  const int silent = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_EQ(connect(silent, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  EXPECT_NE(HttpRequest(a, "GET", "/api/status").find("HTTP/1.1 200"), std::string::npos);
  char c;
  EXPECT_EQ(read(silent, &c, 1), 0);  // closed by the server, unanswered
  close(silent);
}

TEST(Metrics, AddressesAreChecked) {
  EXPECT_EQ(CheckHttpAddress("127.0.0.1:9464"), "");
  EXPECT_EQ(CheckHttpAddress("0.0.0.0:0"), "");
  EXPECT_EQ(CheckHttpAddress("[::1]:9464"), "");
  for (const char* bad : {"", "host", "127.0.0.1", "127.0.0.1:", ":80", "127.0.0.1:99999", "127.0.0.1:80x",
                          "example.org:80", "127.0.0.1:-1"})
    EXPECT_NE(CheckHttpAddress(bad).find("is not HOST:PORT"), std::string::npos) << bad;
  EXPECT_THROW(MetricsServer("nonsense", FakeStatus, nullptr), Error);
}

}  // namespace
}  // namespace ftvm::control
