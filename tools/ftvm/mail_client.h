// Host-side client for the guest mail store (protocol: guest/apps/mailstore_proto.h).
//
// The client is built for exactly-once delivery across a failover: every request is
// retried with the SAME request id (so a late reply to an earlier attempt still
// matches) and DELIVER with the SAME message id (so the store answers DUP instead of
// storing twice). Request outcomes come back as a MailResult; only setup problems
// (bad address, socket creation) throw ftvm::Error.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "common/clock.h"
#include "common/unique_fd.h"
#include "guest/apps/mailstore_proto.h"

namespace ftvm::mail {

enum class MailStatus {
  kOk,         // PONG, OK <msgid>, MSG, COUNT
  kDuplicate,  // DUP <msgid>: the message was already stored (by an earlier attempt)
  kNone,       // NONE: no message at that index
  kError,      // ERR <reason> from the store, an unexpected reply, or invalid input
  kTimeout,    // no matching reply after all attempts
};

const char* StatusName(MailStatus s);

struct MailResult {
  MailStatus status = MailStatus::kTimeout;
  std::string msgid;    // OK / DUP / MSG
  std::string body;     // MSG
  uint64_t count = 0;   // COUNT
  std::string error;    // kError: reason; kTimeout: what the last attempt saw
  unsigned attempts = 0;  // datagrams sent for this request (1 = no retry)
  uint64_t latency_us = 0;  // first send to matching reply (0 unless a reply came)

  bool ok() const { return status == MailStatus::kOk; }
};

struct Endpoint {
  std::string host;  // IPv4 literal
  uint16_t port = FTVM_MAIL_PORT;
};

// Parses "IP[:PORT]". Throws ftvm::Error naming the bad part.
Endpoint ParseEndpoint(std::string_view spec);

// Input checks against the protocol limits. Return an error message naming the limit,
// or nullopt when the value is acceptable.
std::optional<std::string> ValidateMsgid(std::string_view msgid);
std::optional<std::string> ValidateMailbox(std::string_view mailbox);
std::optional<std::string> ValidateBody(std::string_view body);

struct ClientOptions {
  uint32_t timeout_ms = 500;  // per attempt
  uint32_t retries = 5;       // extra attempts after the first
};

struct LoadOptions {
  double rate = 1000;        // requests per second, open loop
  double duration_s = 10;    // issuing period; outstanding requests are then drained
  uint32_t mailboxes = 8;    // named "load0".."load<N-1>"
  uint32_t window = 64;      // max outstanding requests; a full window delays sends
  uint32_t body_size = 256;  // DELIVER body bytes
  uint32_t deliver_weight = 50;
  uint32_t fetch_weight = 30;
  uint32_t count_weight = 20;
  uint64_t seed = 0;  // operation mix RNG; 0 derives one from the client's id salt
};

// nullopt when `o` is usable, else a message naming the bad field.
std::optional<std::string> ValidateLoadOptions(const LoadOptions& o);

struct LoadReport {
  uint64_t sent = 0;        // distinct requests issued (= rate * duration, rounded)
  uint64_t completed = 0;   // got a matching reply (any status)
  uint64_t timeouts = 0;    // gave up after all retries
  uint64_t retries = 0;     // re-sent datagrams
  uint64_t errors = 0;      // completed with ERR or an unexpected reply
  uint64_t duplicates = 0;  // DELIVER answered DUP (a retry after a lost OK)
  double elapsed_s = 0;     // first scheduled send to last completion/timeout
  double throughput_rps = 0;  // completed / elapsed_s
  // Latency from the request's *scheduled* send time to its reply, so time spent
  // waiting for a window slot counts (open-loop: no coordinated omission).
  uint64_t p50_us = 0, p90_us = 0, p99_us = 0, max_us = 0;
};

class MailClient {
 public:
  // `clock` may be null (a system clock is used); when given it must outlive the
  // client. Throws ftvm::Error for a bad address or socket failure.
  explicit MailClient(const Endpoint& to, ClientOptions opts = {}, Clock* clock = nullptr);
  ~MailClient();
  MailClient(const MailClient&) = delete;
  MailClient& operator=(const MailClient&) = delete;

  MailResult ping();
  MailResult deliver(std::string_view msgid, std::string_view mailbox, std::string_view body);
  MailResult fetch(std::string_view mailbox, uint64_t index);
  MailResult count(std::string_view mailbox);

  // Drives a paced request mix; throws ftvm::Error when ValidateLoadOptions fails.
  LoadReport run_load(const LoadOptions& opts);

  const Endpoint& endpoint() const { return to_; }

 private:
  std::string next_reqid();
  MailResult transact(const std::string& reqid, const std::string& datagram,
                      std::string_view expect);

  Endpoint to_;
  ClientOptions opts_;
  std::unique_ptr<Clock> owned_clock_;
  Clock* clock_;
  UniqueFd fd_;
  uint32_t salt_;       // random per client, so ids from different runs differ
  uint32_t counter_ = 0;
};

// Parses one reply datagram. Returns false when it cannot be read at all; otherwise
// sets `reqid` and fills `out` (status/msgid/body/count/error) from the reply verb.
// `expect` is the verb family the request allows (PING, DELIVER, FETCH, COUNT);
// any other verb becomes kError "unexpected reply". Exposed for tests.
bool ParseReply(std::string_view datagram, std::string_view expect, std::string* reqid,
                MailResult* out);

}  // namespace ftvm::mail

namespace ftvm {
// `ftvm mail <subcommand> ...`; argv[0] is "mail". Returns the process exit code:
// 0 success, 1 failed request, 2 usage error.
int MailMain(int argc, char** argv);
}  // namespace ftvm
