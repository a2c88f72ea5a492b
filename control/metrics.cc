#include "control/metrics.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <google/protobuf/util/json_util.h>

#include <poll.h>

#include <cstdio>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/log.h"
#include "control/dashboard_html.h"

namespace ftvm::control {
namespace {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

// Label values are the VM's and hosts' names: escape what the format reserves.
std::string Escape(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

class Writer {
 public:
  explicit Writer(const StatusReply& s)
      : labels_("vm=\"" + Escape(s.vm()) + "\",role=\"" + Escape(s.role()) + "\",host=\"" + Escape(s.host()) + "\"") {}

  void metric(const char* name, const char* type, const char* help, double value, const std::string& extra = "") {
    head(name, type, help);
    line(name, extra, value);
  }
  void head(const char* name, const char* type, const char* help) {
    out_ += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  }
  void line(const std::string& name, const std::string& extra, double value) {
    char num[64];
    std::snprintf(num, sizeof num, "%.17g", value);
    out_ += name + "{" + labels_ + (extra.empty() ? "" : "," + extra) + "} " + num + "\n";
  }
  // A histogram: `cumulative[i]` observations at most `bounds[i]` (seconds), then
  // the total (the +Inf bucket), and their sum.
  void histogram(const char* name, const char* help, const std::vector<double>& bounds,
                 const std::vector<uint64_t>& cumulative, double sum) {
    head(name, "histogram", help);
    const std::string n(name);
    for (size_t i = 0; i < bounds.size(); ++i) {
      char le[32];
      std::snprintf(le, sizeof le, "le=\"%g\"", bounds[i]);
      line(n + "_bucket", le, double(cumulative[i]));
    }
    line(n + "_bucket", "le=\"+Inf\"", double(cumulative.back()));
    line(n + "_sum", "", sum);
    line(n + "_count", "", double(cumulative.back()));
  }
  std::string take() { return std::move(out_); }

 private:
  std::string labels_;
  std::string out_;
};

}  // namespace

std::string RenderPrometheus(const StatusReply& s) {
  Writer w(s);
  // One series per state, 1 for the current one: alerts need no string matching.
  w.head("ftvm_state", "gauge", "1 for the VMM's current protection state");
  for (const char* state : {"protected", "unprotected", "syncing", "live", "failed-over", "diverged", "ended",
                            "failed", "released", "vm-lost"})
    w.line("ftvm_state", std::string("state=\"") + state + "\"", s.state() == state ? 1 : 0);
  w.metric("ftvm_generation", "gauge", "arbiter generation this VMM holds or follows", double(s.generation()));
  w.metric("ftvm_log_appended_bytes", "counter", "log bytes the VM appended (primary)", double(s.log_appended()));
  w.metric("ftvm_log_sent_bytes", "counter", "log bytes sent to the secondary (primary)", double(s.log_sent()));
  w.metric("ftvm_log_received_bytes", "counter", "log bytes the secondary received", double(s.log_received()));
  w.metric("ftvm_log_replayed_bytes", "counter", "log bytes the secondary replayed", double(s.log_replayed()));
  w.metric("ftvm_log_bytes_per_second", "gauge", "log bandwidth since the current secondary joined",
           s.log_bytes_per_s());
  w.metric("ftvm_replica_position", "gauge", "the replica's position in guest exits (secondary)",
           double(s.replica_position()));
  w.metric("ftvm_replica_lag_seconds", "gauge", "age of the oldest log batch not yet replayed", s.lag_us() / 1e6);
  w.head("ftvm_replica_lag_quantile_seconds", "gauge", "send-to-replay time of log batches");
  w.line("ftvm_replica_lag_quantile_seconds", "quantile=\"0.5\"", s.lag_p50_us() / 1e6);
  w.line("ftvm_replica_lag_quantile_seconds", "quantile=\"0.99\"", s.lag_p99_us() / 1e6);
  w.metric("ftvm_checkpoints_total", "counter", "epoch checkpoints recorded or replayed", double(s.checkpoints()));
  w.metric("ftvm_verifications_total", "counter", "state digests recorded or verified", double(s.verifications()));
  w.metric("ftvm_divergences_total", "counter", "replica divergences seen", s.last_divergence().empty() ? 0 : 1);
  // Guest health (--health-grace-ms): 0 where the guest does not beat.
  w.metric("ftvm_guest_heartbeats", "gauge", "guest heartbeats since its last boot", double(s.health_beats()));
  w.metric("ftvm_guest_last_heartbeat_age_seconds", "gauge", "time since the guest's last heartbeat",
           s.health_last_beat_age_ms() / 1e3);
  w.metric("ftvm_guest_hangs_total", "counter", "hung guests noticed (no heartbeat for the grace period)",
           double(s.health_hangs()));
  w.metric("ftvm_guest_resets_total", "counter", "guest resets in place", double(s.health_resets()));

  // Output rule: how long each output was held until the replica had the log up to it.
  std::vector<double> hold_bounds;
  for (double us : kHoldBucketBoundsUs) hold_bounds.push_back(us / 1e6);
  std::vector<uint64_t> held(s.hold_buckets().begin(), s.hold_buckets().end());
  if (held.size() != hold_bounds.size() + 1) held.assign(hold_bounds.size() + 1, 0);  // not a primary
  w.histogram("ftvm_output_hold_seconds", "time an output was held by the output rule (primary)", hold_bounds, held,
              s.hold_sum_us() / 1e6);

  // Failover downtime: the peer's last message to the VM running here (a secondary
  // that took over; at most one per process).
  const std::vector<double> downtime_bounds = {0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0};
  const double downtime = s.failover_downtime_ms() / 1e3;
  const bool failed_over = !s.last_failover().empty() && s.failover_downtime_ms() > 0;
  std::vector<uint64_t> took_over;
  for (double le : downtime_bounds) took_over.push_back(failed_over && downtime <= le ? 1 : 0);
  took_over.push_back(failed_over ? 1 : 0);
  w.histogram("ftvm_failover_downtime_seconds", "from the peer's last message to the VM running here",
              downtime_bounds, took_over, failed_over ? downtime : 0);
  if (!s.dr_target().empty()) {
    w.metric("ftvm_dr_behind_seconds", "gauge", "how far the DR replica is behind", s.dr_behind_ms() / 1e3);
    w.metric("ftvm_dr_consistent", "gauge", "1 when the DR replica is crash-consistent", s.dr_consistent() ? 1 : 0);
    w.metric("ftvm_dr_checkpoints_total", "counter", "DR checkpoints sent to the replica", double(s.dr_checkpoints()));
    if (s.dr_checkpoints() != 0)
      w.metric("ftvm_dr_checkpoint_age_seconds", "gauge", "age of the last DR checkpoint sent", s.dr_checkpoint_age_s());
  }
  return w.take();
}

std::string StatusJson(const StatusReply& s) {
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(s, &out, options).ok()) throw Error("status: not printable as JSON");
  return out;
}

std::string_view DashboardHtml() { return kDashboardHtml; }

namespace {

// A JSON string literal of `v`.
std::string JsonString(const std::string& v) {
  std::string out = "\"";
  for (unsigned char c : v) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += char(c);
    } else if (c < 0x20) {
      char esc[8];
      std::snprintf(esc, sizeof esc, "\\u%04x", c);
      out += esc;
    } else {
      out += char(c);
    }
  }
  return out + "\"";
}

// Parses HOST:PORT; "" or why not.
std::string ParseAddress(const std::string& address, tcp::endpoint& ep) {
  const std::string bad = "'" + address + "' is not HOST:PORT (an IP address and a port, e.g. 0.0.0.0:9464)";
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) return bad;
  std::string host = address.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  boost::system::error_code ec;
  const auto ip = asio::ip::make_address(host, ec);
  const std::string port_text = address.substr(colon + 1);
  if (ec || port_text.empty() || port_text.size() > 5 ||
      port_text.find_first_not_of("0123456789") != std::string::npos)
    return bad;
  const unsigned long port = std::stoul(port_text);
  if (port > 65535) return bad;
  ep = tcp::endpoint(ip, static_cast<unsigned short>(port));
  return "";
}

}  // namespace

std::string CheckHttpAddress(const std::string& address) {
  tcp::endpoint ep;
  return ParseAddress(address, ep);
}

constexpr int kFirstByteMs = 1000;

struct MetricsServer::Impl {
  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::function<StatusReply()> status;
  Server::Handler act;
  std::thread thread;

  void accept() {
    acceptor.async_accept([this](boost::system::error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted) return;
      if (!ec) serve(std::move(socket));
      accept();
    });
  }

  using Response = http::response<http::string_body>;

  static void Answer(Response& res, http::status code, const char* type, std::string body) {
    res.result(code);
    res.set(http::field::content_type, type);
    res.body() = std::move(body);
  }

  // POST /api/drill or /api/migrate. `then` gets what runs after the answer went out.
  void Act(const Request& request, Response& res, std::function<void()>& then) {
    if (!act) {
      Answer(res, http::status::forbidden, "application/json",
             "{\"error\":\"actions are off on this VMM: start it with --dashboard-actions to allow the drill and "
             "switchover buttons\"}");
      return;
    }
    Responder responder;
    Reply reply;
    try {
      reply = act(request, responder);
    } catch (const Error& e) {
      reply.set_error(e.what());
    }
    if (!reply.error().empty()) {
      log::warn("dashboard.action_refused", {{"error", reply.error()}});
      Answer(res, http::status::conflict, "application/json", "{\"error\":" + JsonString(reply.error()) + "}");
      return;
    }
    Answer(res, http::status::ok, "application/json",
           "{\"message\":" + JsonString(reply.action().message()) + "}");
    then = responder.take_then();
  }

  // One request per connection, answered synchronously: scrapes and the
  // dashboard's polls are rare and small.
  void serve(tcp::socket socket) {
    // A client that connects and says nothing (a browser's speculative preconnect)
    // must not hold the one serving thread: its request must start within a second.
    pollfd p{socket.native_handle(), POLLIN, 0};
    if (::poll(&p, 1, kFirstByteMs) != 1) return;
    boost::system::error_code ec;
    boost::beast::flat_buffer buffer;
    http::request<http::string_body> req;
    http::read(socket, buffer, req, ec);
    if (ec) return;
    Response res;
    res.version(req.version());
    res.keep_alive(false);
    std::function<void()> then;
    const std::string_view target(req.target().data(), req.target().size());
    const std::string_view path = target.substr(0, target.find('?'));
    const bool get = req.method() == http::verb::get, post = req.method() == http::verb::post;
    try {
      if (get && path == "/metrics") {
        Answer(res, http::status::ok, "text/plain; version=0.0.4", RenderPrometheus(status()));
      } else if (get && (path == "/" || path == "/index.html")) {
        Answer(res, http::status::ok, "text/html; charset=utf-8", std::string(DashboardHtml()));
      } else if (get && path == "/api/status") {
        // The page of the peer's dashboard polls this one too (another origin).
        res.set(http::field::access_control_allow_origin, "*");
        res.set(http::field::cache_control, "no-store");
        Answer(res, http::status::ok, "application/json", StatusJson(status()));
      } else if (path == "/api/drill" || path == "/api/migrate") {
        res.set(http::field::access_control_allow_origin, "*");
        if (req.method() == http::verb::options) {
          res.set(http::field::access_control_allow_methods, "POST");
          Answer(res, http::status::no_content, "text/plain", "");
        } else if (!post) {
          Answer(res, http::status::method_not_allowed, "application/json", "{\"error\":\"use POST\"}");
        } else {
          Request request;
          if (path == "/api/drill")
            request.mutable_failover_test();
          else
            request.mutable_switchover();
          Act(request, res, then);
        }
      } else {
        Answer(res, http::status::not_found, "text/plain",
               "ftvm serves GET / (the dashboard), /metrics, /api/status; POST /api/drill, /api/migrate\n");
      }
    } catch (const Error& e) {
      Answer(res, http::status::internal_server_error, "text/plain", std::string(e.what()) + "\n");
    }
    res.prepare_payload();
    http::write(socket, res, ec);
    socket.shutdown(tcp::socket::shutdown_send, ec);
    if (then) then();
  }
};

MetricsServer::MetricsServer(const std::string& address, std::function<StatusReply()> status, Server::Handler act)
    : impl_(std::make_unique<Impl>()) {
  impl_->status = std::move(status);
  impl_->act = std::move(act);
  tcp::endpoint ep;
  if (std::string bad = ParseAddress(address, ep); !bad.empty()) throw Error("metrics address " + bad);
  boost::system::error_code ec;
  impl_->acceptor.open(ep.protocol(), ec);
  if (!ec) impl_->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) impl_->acceptor.bind(ep, ec);
  if (!ec) impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) throw Error("metrics: cannot listen on " + address + ": " + ec.message());
  impl_->accept();
  impl_->thread = std::thread([this] { impl_->io.run(); });
  log::info("metrics.listening", {{"address", this->address()}});
}

MetricsServer::~MetricsServer() {
  // run() returns once the handler in progress (an answer) is done; the acceptor
  // closes with Impl.
  impl_->io.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

std::string MetricsServer::address() const {
  const tcp::endpoint ep = impl_->acceptor.local_endpoint();
  return ep.address().to_string() + ":" + std::to_string(ep.port());
}

}  // namespace ftvm::control
