// The HTTP endpoint of one VMM process (--metrics), on Boost.Beast: Prometheus
// metrics at GET /metrics (text format 0.0.4), the status as JSON at GET
// /api/status, and the dashboard at GET / (control/dashboard.html, built in), which
// polls /api/status of this VMM and of its peer and can POST /api/drill and
// /api/migrate. All of it is rendered from the same StatusReply that `ftvm status`
// shows, so none of them disagree.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "control/control.h"
#include "control/control.pb.h"

namespace ftvm::control {

// Upper bounds (microseconds) of the output-hold histogram's buckets; StatusReply's
// hold_buckets holds the cumulative count at each, then the total.
inline constexpr double kHoldBucketBoundsUs[] = {10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000};

// The exposition text of `s` (gauges, counters, and histograms of the output
// hold time and of the failover downtime).
std::string RenderPrometheus(const StatusReply& s);

// `s` as one JSON object: every field, under its protobuf name (ftvm status --json
// and GET /api/status).
std::string StatusJson(const StatusReply& s);

// "" when `address` is HOST:PORT (an IP address and a port, 0 allowed), else why not.
std::string CheckHttpAddress(const std::string& address);

// The dashboard page (control/dashboard.html, embedded at build time).
std::string_view DashboardHtml();

class MetricsServer {
 public:
  // Listens on "HOST:PORT" (PORT 0: any free port; see address()) and answers on a
  // thread of its own: GET /metrics, /api/status and / from status(); POST
  // /api/drill and /api/migrate through act() (a failover_test or switchover
  // request, answered as on the control socket; the responder's then() runs once
  // the answer went out), refused with 403 when act is empty (no
  // --dashboard-actions: the port may be reachable by others). Throws ftvm::Error
  // when the address is malformed or cannot be bound.
  MetricsServer(const std::string& address, std::function<StatusReply()> status, Server::Handler act);
  ~MetricsServer();  // stops serving (an answer in progress is finished first)
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  std::string address() const;  // the bound HOST:PORT

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ftvm::control
