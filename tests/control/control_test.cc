// The control socket: a request reaches its handler, whose progress lines reach the
// client before the final reply; a request of another version, or one this VMM has
// no handler for, is answered with an error naming why; a handler's ftvm::Error
// becomes the reply's error; a client that connects and says nothing does not hold
// the server.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "common/error.h"
#include "control/control.h"
#include "eventlog/format.h"

namespace ftvm::control {
namespace {

std::string SocketPath(const std::string& tag) {
  return "/tmp/ftvm-control-" + std::to_string(getpid()) + "-" + tag + ".sock";
}

TEST(Control, ProgressThenFinalReply) {
  const std::string path = SocketPath("move");
  Server server(path);
  server.on(Request::kMoveDisk, [](const Request& r, Responder& out) {
    out.progress("copying " + r.move_disk().new_path());
    out.progress("switching");
    Reply reply;
    reply.mutable_move_disk()->set_new_path(r.move_disk().new_path());
    return reply;
  });
  server.start();
  Request req;
  req.mutable_move_disk()->set_new_path("/x.img");
  std::vector<std::string> lines;
  Reply r = Call(path, req, [&](const std::string& l) { lines.push_back(l); });
  EXPECT_TRUE(r.done());
  EXPECT_EQ(r.error(), "");
  EXPECT_EQ(r.move_disk().new_path(), "/x.img");
  EXPECT_EQ(lines, (std::vector<std::string>{"copying /x.img", "switching"}));
}

TEST(Control, UnknownRequestAndHandlerErrorsAreNamed) {
  const std::string path = SocketPath("errors");
  Server server(path);
  server.on(Request::kMoveDisk, [](const Request&, Responder&) -> Reply { throw Error("no such disk"); });
  server.start();
  Request status;
  status.mutable_status();
  EXPECT_NE(Call(path, status, nullptr).error().find("does not handle"), std::string::npos);
  Request move;
  move.mutable_move_disk()->set_new_path("/y");
  EXPECT_EQ(Call(path, move, nullptr).error(), "no such disk");
}

// Sends a request with another version by hand (Call always sets its own).
TEST(Control, AnotherVersionIsRefusedByName) {
  const std::string path = SocketPath("version");
  Server server(path);
  server.on(Request::kStatus, [](const Request&, Responder&) { return Reply(); });
  server.start();
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strcpy(a.sun_path, path.c_str());
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  Request req;
  req.set_version(kControlVersion + 6);
  req.mutable_status();
  const std::string body = req.SerializeAsString();
  uint8_t len[4];
  eventlog::PutLe32(len, uint32_t(body.size()));
  ASSERT_EQ(write(fd, len, 4), 4);
  ASSERT_EQ(write(fd, body.data(), body.size()), ssize_t(body.size()));
  ASSERT_EQ(read(fd, len, 4), 4);
  std::string reply_bytes(eventlog::GetLe32(len), '\0');
  ASSERT_EQ(read(fd, reply_bytes.data(), reply_bytes.size()), ssize_t(reply_bytes.size()));
  close(fd);
  Reply reply;
  ASSERT_TRUE(reply.ParseFromString(reply_bytes));
  EXPECT_NE(reply.error().find("version 7"), std::string::npos) << reply.error();
}

TEST(Control, NoVmmThereIsAClearError) {
  Request req;
  req.mutable_status();
  try {
    Call(SocketPath("nobody"), req, nullptr);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--control"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ftvm::control
