#include "tools/ftvm/mail_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <queue>
#include <random>
#include <unordered_map>
#include <vector>

#include "common/error.h"
#include "common/log.h"

namespace ftvm::mail {
namespace {

constexpr uint64_t kNsPerMs = 1000000ull;
// Generous receive buffer: a reply larger than the protocol allows is detected as
// truncated (MSG_TRUNC) rather than silently cut.
constexpr size_t kRecvBuf = 4096;
// Bounds that keep a load run's bookkeeping (one latency sample per request) small.
constexpr double kMaxLoadRequests = 1e7;
constexpr uint32_t kMaxWindow = 65536;
constexpr uint32_t kMaxMailboxes = 1000000;

std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(v));
  return buf;
}

// Protocol tokens are space-separated on one line, so they must be non-empty
// printable ASCII without spaces.
std::optional<std::string> ValidateToken(std::string_view what, std::string_view v,
                                         size_t max, const char* limit_name) {
  if (v.empty()) return std::string(what) + " is empty";
  if (v.size() > max)
    return std::string(what) + " is " + std::to_string(v.size()) + " bytes, exceeds " +
           limit_name + " (" + std::to_string(max) + ")";
  for (unsigned char c : v)
    if (!ftvm_mail_token_char(c))
      return std::string(what) + " '" + std::string(v) +
             "' contains a space or non-printable byte (not allowed in a protocol token)";
  return std::nullopt;
}

std::string_view TrimLineEnd(std::string_view s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

// Splits off the first space-separated token of `s`.
std::string_view NextToken(std::string_view* s) {
  size_t sp = s->find(' ');
  std::string_view tok = s->substr(0, sp);
  *s = sp == std::string_view::npos ? std::string_view() : s->substr(sp + 1);
  return tok;
}

// The request id is the first token of the reply, whatever follows.
std::string_view ReplyReqid(std::string_view datagram) {
  size_t end = datagram.find_first_of(" \n");
  return datagram.substr(0, end);
}

// Waits until fd is readable or `wait_ns` passed. Returns >0 readable, 0 timeout,
// <0 error (errno set; EINTR is retried by the caller's loop).
int WaitReadable(int fd, uint64_t wait_ns) {
  pollfd p{fd, POLLIN, 0};
  timespec ts{static_cast<time_t>(wait_ns / 1000000000ull),
              static_cast<long>(wait_ns % 1000000000ull)};
  return ::ppoll(&p, 1, &ts, nullptr);
}

std::string PingDatagram(const std::string& reqid) { return reqid + " PING"; }
std::string DeliverDatagram(const std::string& reqid, std::string_view msgid,
                            std::string_view mailbox, std::string_view body) {
  std::string d = reqid + " DELIVER ";
  d.append(msgid).append(" ").append(mailbox).append("\n").append(body);
  return d;
}
std::string FetchDatagram(const std::string& reqid, std::string_view mailbox, uint64_t index) {
  std::string d = reqid + " FETCH ";
  d.append(mailbox).append(" ").append(std::to_string(index));
  return d;
}
std::string CountDatagram(const std::string& reqid, std::string_view mailbox) {
  std::string d = reqid + " COUNT ";
  d.append(mailbox);
  return d;
}

MailResult Invalid(std::string msg) {
  MailResult r;
  r.status = MailStatus::kError;
  r.error = std::move(msg);
  return r;
}

uint64_t Percentile(const std::vector<uint64_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  // Nearest-rank: the smallest sample with at least p% of samples at or below it.
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * double(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

}  // namespace

const char* StatusName(MailStatus s) {
  switch (s) {
    case MailStatus::kOk: return "ok";
    case MailStatus::kDuplicate: return "duplicate";
    case MailStatus::kNone: return "none";
    case MailStatus::kError: return "error";
    case MailStatus::kTimeout: return "timeout";
  }
  return "?";
}

Endpoint ParseEndpoint(std::string_view spec) {
  Endpoint ep;
  std::string_view host = spec;
  size_t colon = spec.rfind(':');
  if (colon != std::string_view::npos) {
    host = spec.substr(0, colon);
    std::string_view port = spec.substr(colon + 1);
    unsigned v = 0;
    auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), v);
    if (port.empty() || ec != std::errc() || p != port.data() + port.size() || v == 0 ||
        v > 65535)
      throw Error("bad port '" + std::string(port) + "' in '" + std::string(spec) +
                  "' (want 1-65535)");
    ep.port = static_cast<uint16_t>(v);
  }
  in_addr a{};
  std::string h(host);
  if (h.empty() || ::inet_pton(AF_INET, h.c_str(), &a) != 1)
    throw Error("bad IPv4 address '" + h + "' in '" + std::string(spec) +
                "' (want a dotted-quad literal)");
  ep.host = std::move(h);
  return ep;
}

std::optional<std::string> ValidateMsgid(std::string_view msgid) {
  return ValidateToken("message id", msgid, FTVM_MAIL_MAX_MSGID, "FTVM_MAIL_MAX_MSGID");
}

std::optional<std::string> ValidateMailbox(std::string_view mailbox) {
  return ValidateToken("mailbox", mailbox, FTVM_MAIL_MAX_MAILBOX, "FTVM_MAIL_MAX_MAILBOX");
}

std::optional<std::string> ValidateBody(std::string_view body) {
  if (body.size() > FTVM_MAIL_MAX_BODY)
    return "body is " + std::to_string(body.size()) + " bytes, exceeds FTVM_MAIL_MAX_BODY (" +
           std::to_string(FTVM_MAIL_MAX_BODY) + ")";
  return std::nullopt;
}

std::optional<std::string> ValidateLoadOptions(const LoadOptions& o) {
  if (!(o.rate > 0) || !std::isfinite(o.rate)) return "rate must be > 0 requests/s";
  if (!(o.duration_s > 0) || !std::isfinite(o.duration_s)) return "duration must be > 0 s";
  double total = std::round(o.rate * o.duration_s);
  if (total < 1) return "rate * duration is less than one request";
  if (total > kMaxLoadRequests)
    return "rate * duration is " + std::to_string(static_cast<uint64_t>(total)) +
           " requests, more than the limit of " +
           std::to_string(static_cast<uint64_t>(kMaxLoadRequests));
  if (o.mailboxes < 1 || o.mailboxes > kMaxMailboxes)
    return "mailboxes must be 1-" + std::to_string(kMaxMailboxes);
  if (o.window < 1 || o.window > kMaxWindow)
    return "window must be 1-" + std::to_string(kMaxWindow);
  if (o.body_size > FTVM_MAIL_MAX_BODY)
    return "body size " + std::to_string(o.body_size) + " exceeds FTVM_MAIL_MAX_BODY (" +
           std::to_string(FTVM_MAIL_MAX_BODY) + ")";
  if (uint64_t(o.deliver_weight) + o.fetch_weight + o.count_weight == 0)
    return "mix weights are all zero";
  return std::nullopt;
}

bool ParseReply(std::string_view datagram, std::string_view expect, std::string* reqid,
                MailResult* out) {
  size_t nl = datagram.find('\n');
  std::string_view header = datagram.substr(0, nl);
  std::string_view rest = TrimLineEnd(header);
  std::string_view id = NextToken(&rest);
  if (id.empty() || id == "-") return false;  // "-": the store could not read our id
  *reqid = std::string(id);
  std::string_view verb = NextToken(&rest);

  auto unexpected = [&] {
    out->status = MailStatus::kError;
    out->error = "unexpected reply '" + std::string(TrimLineEnd(header)) + "' to " +
                 std::string(expect);
  };
  if (verb == "ERR") {
    out->status = MailStatus::kError;
    out->error = "store error: " + std::string(rest);
  } else if (expect == "PING" && verb == "PONG") {
    out->status = MailStatus::kOk;
  } else if (expect == "DELIVER" && (verb == "OK" || verb == "DUP") && !rest.empty()) {
    out->status = verb == "OK" ? MailStatus::kOk : MailStatus::kDuplicate;
    out->msgid = std::string(NextToken(&rest));
  } else if (expect == "FETCH" && verb == "NONE") {
    out->status = MailStatus::kNone;
  } else if (expect == "FETCH" && verb == "MSG" && !rest.empty()) {
    out->status = MailStatus::kOk;
    out->msgid = std::string(NextToken(&rest));
    out->body = nl == std::string_view::npos ? std::string() : std::string(datagram.substr(nl + 1));
  } else if (expect == "COUNT" && verb == "COUNT") {
    uint64_t n = 0;
    auto [p, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), n);
    if (rest.empty() || ec != std::errc() || p != rest.data() + rest.size()) {
      unexpected();
    } else {
      out->status = MailStatus::kOk;
      out->count = n;
    }
  } else {
    unexpected();
  }
  return true;
}

MailClient::MailClient(const Endpoint& to, ClientOptions opts, Clock* clock)
    : to_(to), opts_(opts), clock_(clock) {
  if (clock_ == nullptr) {
    owned_clock_ = MakeSystemClock();
    clock_ = owned_clock_.get();
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(to_.port);
  if (::inet_pton(AF_INET, to_.host.c_str(), &addr.sin_addr) != 1)
    throw Error("bad IPv4 address '" + to_.host + "'");
  if (to_.port == 0) throw Error("bad port 0 for " + to_.host);
  if (opts_.timeout_ms == 0) throw Error("timeout_ms must be > 0");

  fd_.reset(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd_) throw SysError("socket(AF_INET, SOCK_DGRAM)");
  // connect() makes the kernel drop datagrams from any other peer and surfaces ICMP
  // port-unreachable as ECONNREFUSED, which we treat like a lost reply.
  if (::connect(fd_.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0)
    throw SysError("connect to " + to_.host + ":" + std::to_string(to_.port));

  uint32_t salt = 0;
  auto rnd = MakeSystemRandom();
  std::span<uint8_t> bytes(reinterpret_cast<uint8_t*>(&salt), sizeof salt);
  if (!rnd->fill(bytes)) salt = static_cast<uint32_t>(clock_->wall_ns());
  salt_ = salt & 0xffffff;
}

MailClient::~MailClient() = default;

std::string MailClient::next_reqid() {
  // 6 hex digits of salt + up to 8 of counter: at most 14 characters, inside
  // FTVM_MAIL_MAX_REQID, and distinct across clients so a stray reply to another
  // run never matches.
  char buf[FTVM_MAIL_MAX_REQID + 1];
  std::snprintf(buf, sizeof buf, "%06x%x", salt_, ++counter_);
  return buf;
}

MailResult MailClient::ping() {
  std::string id = next_reqid();
  return transact(id, PingDatagram(id), "PING");
}

MailResult MailClient::deliver(std::string_view msgid, std::string_view mailbox,
                               std::string_view body) {
  if (auto e = ValidateMsgid(msgid)) return Invalid(*e);
  if (auto e = ValidateMailbox(mailbox)) return Invalid(*e);
  if (auto e = ValidateBody(body)) return Invalid(*e);
  std::string id = next_reqid();
  return transact(id, DeliverDatagram(id, msgid, mailbox, body), "DELIVER");
}

MailResult MailClient::fetch(std::string_view mailbox, uint64_t index) {
  if (auto e = ValidateMailbox(mailbox)) return Invalid(*e);
  std::string id = next_reqid();
  return transact(id, FetchDatagram(id, mailbox, index), "FETCH");
}

MailResult MailClient::count(std::string_view mailbox) {
  if (auto e = ValidateMailbox(mailbox)) return Invalid(*e);
  std::string id = next_reqid();
  return transact(id, CountDatagram(id, mailbox), "COUNT");
}

MailResult MailClient::transact(const std::string& reqid, const std::string& datagram,
                                std::string_view expect) {
  MailResult r;
  if (datagram.size() > FTVM_MAIL_MAX_DATAGRAM)
    return Invalid("request is " + std::to_string(datagram.size()) +
                   " bytes, exceeds FTVM_MAIL_MAX_DATAGRAM (" +
                   std::to_string(FTVM_MAIL_MAX_DATAGRAM) + ")");
  const uint64_t timeout_ns = uint64_t(opts_.timeout_ms) * kNsPerMs;
  const uint64_t first_send = clock_->monotonic_ns();
  std::string last_error;
  char buf[kRecvBuf];

  for (uint32_t attempt = 0; attempt <= opts_.retries; ++attempt) {
    r.attempts = attempt + 1;
    if (attempt > 0)
      log::debug("mail_retry", {{"reqid", reqid}, {"attempt", r.attempts}});
    // The same bytes every attempt: same reqid (a late reply to attempt k still
    // completes us) and same msgid (the store dedups the DELIVER).
    if (::send(fd_.get(), datagram.data(), datagram.size(), 0) < 0)
      last_error = std::string("send: ") + std::strerror(errno);  // wait, then retry
    const uint64_t deadline = clock_->monotonic_ns() + timeout_ns;

    for (;;) {
      uint64_t now = clock_->monotonic_ns();
      if (now >= deadline) break;
      int pr = WaitReadable(fd_.get(), deadline - now);
      if (pr < 0 && errno == EINTR) continue;
      if (pr < 0) {
        last_error = std::string("poll: ") + std::strerror(errno);
        break;
      }
      // Real time ran out even if an injected clock says otherwise; never spin.
      if (pr == 0) break;
      ssize_t n = ::recv(fd_.get(), buf, sizeof buf, MSG_DONTWAIT | MSG_TRUNC);
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
        last_error = std::string("recv: ") + std::strerror(errno);
        continue;  // e.g. ECONNREFUSED while the store is down: keep waiting
      }
      if (size_t(n) > sizeof buf) {
        log::debug("mail_oversize_reply", {{"bytes", n}});
        continue;
      }
      std::string got_id;
      MailResult reply;
      if (!ParseReply(std::string_view(buf, size_t(n)), expect, &got_id, &reply) ||
          got_id != reqid) {
        // Stale (a reply to an earlier request we already gave up on) or garbage.
        log::debug("mail_stale_reply", {{"want", reqid}, {"got", got_id}});
        continue;
      }
      reply.attempts = r.attempts;
      reply.latency_us = (clock_->monotonic_ns() - first_send) / 1000;
      return reply;
    }
  }
  r.status = MailStatus::kTimeout;
  r.error = "no reply from " + to_.host + ":" + std::to_string(to_.port) + " after " +
            std::to_string(r.attempts) + " attempts of " + std::to_string(opts_.timeout_ms) +
            " ms";
  if (!last_error.empty()) r.error += " (last error: " + last_error + ")";
  return r;
}

LoadReport MailClient::run_load(const LoadOptions& o) {
  if (auto e = ValidateLoadOptions(o)) throw Error("load options: " + *e);

  enum class Op { kDeliver, kFetch, kCount };
  struct Pending {
    Op op;
    uint32_t box;
    std::string datagram;
    uint64_t scheduled_ns;  // intended send time; latency is measured from here
    uint64_t deadline_ns;
    uint32_t attempts;
  };
  // Min-heap of (deadline, reqid). Entries go stale when the request completes or
  // is re-sent; they are skipped when popped (deadline no longer matches).
  using Timer = std::pair<uint64_t, std::string>;
  std::priority_queue<Timer, std::vector<Timer>, std::greater<>> timers;
  std::unordered_map<std::string, Pending> pending;
  pending.reserve(o.window * 2);

  const uint64_t total = static_cast<uint64_t>(std::llround(o.rate * o.duration_s));
  const double interval_ns = 1e9 / o.rate;
  const uint64_t timeout_ns = uint64_t(opts_.timeout_ms) * kNsPerMs;
  const uint64_t weight_sum = uint64_t(o.deliver_weight) + o.fetch_weight + o.count_weight;
  std::mt19937_64 rng(o.seed != 0 ? o.seed : (uint64_t(salt_) << 32 | counter_));
  std::vector<uint64_t> delivered(o.mailboxes, 0);  // OKs per box, to aim FETCHes
  const std::string body(o.body_size, 'm');
  const std::string run = Hex(salt_) + "-" + Hex(counter_);  // msgid prefix for this run
  std::vector<uint64_t> latencies;
  latencies.reserve(total);
  LoadReport rep;
  char buf[kRecvBuf];

  auto send = [&](const Pending& p) {
    // A failed send is handled like a lost datagram: the timer re-sends it.
    if (::send(fd_.get(), p.datagram.data(), p.datagram.size(), 0) < 0)
      log::debug("mail_load_send_failed", {{"error", std::strerror(errno)}});
  };

  auto issue = [&](uint64_t seq, uint64_t scheduled, uint64_t now) {
    uint64_t pick = rng() % weight_sum;
    Op op = pick < o.deliver_weight                   ? Op::kDeliver
            : pick < uint64_t(o.deliver_weight) + o.fetch_weight ? Op::kFetch
                                                                 : Op::kCount;
    uint32_t box = static_cast<uint32_t>(rng() % o.mailboxes);
    std::string mailbox = "load" + std::to_string(box);
    std::string id = next_reqid();
    Pending p{op, box, {}, scheduled, now + timeout_ns, 1};
    switch (op) {
      case Op::kDeliver:
        p.datagram = DeliverDatagram(id, run + "-" + std::to_string(seq), mailbox, body);
        break;
      case Op::kFetch: {
        uint64_t n = delivered[box];
        p.datagram = FetchDatagram(id, mailbox, n == 0 ? 0 : rng() % n);
        break;
      }
      case Op::kCount:
        p.datagram = CountDatagram(id, mailbox);
        break;
    }
    return std::make_pair(std::move(id), std::move(p));
  };

  const uint64_t start = clock_->monotonic_ns();
  uint64_t end = start;
  auto sched = [&](uint64_t i) { return start + static_cast<uint64_t>(double(i) * interval_ns); };

  uint64_t issued = 0;
  while (issued < total || !pending.empty()) {
    uint64_t now = clock_->monotonic_ns();

    // Open loop: every request whose scheduled time has come goes out now, as long
    // as the window has room; a full window delays (but never drops) it.
    while (issued < total && sched(issued) <= now && pending.size() < o.window) {
      auto [id, p] = issue(issued, sched(issued), now);
      send(p);
      timers.emplace(p.deadline_ns, id);
      pending.emplace(std::move(id), std::move(p));
      ++issued;
      ++rep.sent;
    }

    // Expire: re-send with the same bytes, or give up after the last retry.
    while (!timers.empty() && timers.top().first <= now) {
      auto [deadline, id] = timers.top();
      timers.pop();
      auto it = pending.find(id);
      if (it == pending.end() || it->second.deadline_ns != deadline) continue;  // stale
      Pending& p = it->second;
      if (p.attempts <= opts_.retries) {
        ++p.attempts;
        ++rep.retries;
        p.deadline_ns = now + timeout_ns;
        send(p);
        timers.emplace(p.deadline_ns, id);
      } else {
        ++rep.timeouts;
        end = now;
        pending.erase(it);
      }
    }
    if (issued >= total && pending.empty()) break;

    // Sleep until the next scheduled send (if it could go out), the next deadline,
    // or a reply, whichever comes first.
    uint64_t wake = UINT64_MAX;
    if (issued < total && pending.size() < o.window) wake = sched(issued);
    if (!timers.empty()) wake = std::min(wake, timers.top().first);
    now = clock_->monotonic_ns();
    uint64_t wait = wake > now ? wake - now : 0;
    int pr = WaitReadable(fd_.get(), wait);
    if (pr < 0 && errno != EINTR) throw SysError("ppoll");
    if (pr <= 0) continue;

    for (;;) {
      ssize_t n = ::recv(fd_.get(), buf, sizeof buf, MSG_DONTWAIT | MSG_TRUNC);
      if (n < 0) {
        if (errno == EINTR) continue;
        break;  // EAGAIN, or ECONNREFUSED (store down): timers cover it
      }
      if (size_t(n) > sizeof buf) continue;
      std::string_view dg(buf, size_t(n));
      auto it = pending.find(std::string(ReplyReqid(dg)));
      if (it == pending.end()) continue;  // stale: already completed or timed out
      Pending& p = it->second;
      static constexpr const char* kExpect[] = {"DELIVER", "FETCH", "COUNT"};
      std::string id;
      MailResult res;
      ParseReply(dg, kExpect[static_cast<int>(p.op)], &id, &res);
      uint64_t done = clock_->monotonic_ns();
      latencies.push_back((done - p.scheduled_ns) / 1000);
      ++rep.completed;
      if (res.status == MailStatus::kError) ++rep.errors;
      if (res.status == MailStatus::kDuplicate) ++rep.duplicates;
      if (p.op == Op::kDeliver && res.status == MailStatus::kOk) ++delivered[p.box];
      end = done;
      pending.erase(it);
    }
  }

  std::sort(latencies.begin(), latencies.end());
  rep.elapsed_s = double(end - start) / 1e9;
  rep.throughput_rps = rep.elapsed_s > 0 ? double(rep.completed) / rep.elapsed_s : 0;
  rep.p50_us = Percentile(latencies, 50);
  rep.p90_us = Percentile(latencies, 90);
  rep.p99_us = Percentile(latencies, 99);
  rep.max_us = latencies.empty() ? 0 : latencies.back();
  return rep;
}

}  // namespace ftvm::mail
