#include "control/metrics.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <cstdio>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/log.h"

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
  }
  return w.take();
}

struct MetricsServer::Impl {
  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::function<std::string()> render;
  std::thread thread;

  void accept() {
    acceptor.async_accept([this](boost::system::error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted) return;
      if (!ec) serve(std::move(socket));
      accept();
    });
  }

  // One request per connection, answered synchronously: scrapes are rare and small.
  void serve(tcp::socket socket) {
    boost::system::error_code ec;
    boost::beast::flat_buffer buffer;
    http::request<http::string_body> req;
    http::read(socket, buffer, req, ec);
    if (ec) return;
    http::response<http::string_body> res;
    res.version(req.version());
    res.keep_alive(false);
    if (req.method() == http::verb::get && req.target() == "/metrics") {
      res.result(http::status::ok);
      res.set(http::field::content_type, "text/plain; version=0.0.4");
      res.body() = render();
    } else {
      res.result(http::status::not_found);
      res.set(http::field::content_type, "text/plain");
      res.body() = "ftvm serves GET /metrics\n";
    }
    res.prepare_payload();
    http::write(socket, res, ec);
    socket.shutdown(tcp::socket::shutdown_send, ec);
  }
};

MetricsServer::MetricsServer(const std::string& address, std::function<std::string()> render)
    : impl_(std::make_unique<Impl>()) {
  impl_->render = std::move(render);
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0)
    throw Error("metrics address '" + address + "' is not HOST:PORT (e.g. 0.0.0.0:9464)");
  boost::system::error_code ec;
  const auto ip = asio::ip::make_address(address.substr(0, colon), ec);
  unsigned long port = 0;
  try {
    port = std::stoul(address.substr(colon + 1));
  } catch (const std::exception&) {
    port = 65536;
  }
  if (ec || port > 65535) throw Error("metrics address '" + address + "' is not HOST:PORT (e.g. 0.0.0.0:9464)");
  const tcp::endpoint ep(ip, static_cast<unsigned short>(port));
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
