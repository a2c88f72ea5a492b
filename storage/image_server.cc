#include "storage/image_server.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <optional>

#include "common/error.h"
#include "common/log.h"
#include "common/unique_fd.h"
#include "storage/image_wire.h"
#include "storage/storage.pb.h"
#include "vmm/page_bitmap.h"

namespace ftvm::storage {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr auto kHelloTimeout = 10s;
constexpr auto kSendTimeout = 30s;     // a client that reads nothing this long is gone
constexpr auto kKeepalive = 1s;        // an empty batch when nothing else went out
constexpr size_t kDemandBatch = 16;    // blocks per reply to a demand
constexpr uint64_t kPrefetchBatchBytes = 256u << 10;

std::span<const uint8_t> Bytes(const std::string& s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

// Changes whenever the file is replaced or written: a client's partial copy and a
// boot profile belong to one version of the image.
std::string ImageId(const struct stat& st) {
  char id[96];
  std::snprintf(id, sizeof id, "%llx-%llx-%llx.%09ld", static_cast<unsigned long long>(st.st_size),
                static_cast<unsigned long long>(st.st_ino), static_cast<unsigned long long>(st.st_mtim.tv_sec),
                st.st_mtim.tv_nsec);
  return id;
}

std::string ProfilePath(const std::string& dir, const std::string& name) { return dir + "/" + name + ".profile"; }

}  // namespace

std::vector<uint32_t> LoadImageProfile(const std::string& path, uint64_t image_bytes, uint32_t block_bytes,
                                       const std::string& image_id, std::string* why) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    if (errno != ENOENT && why != nullptr) *why = path + ": " + std::strerror(errno);
    return {};
  }
  std::string bytes;
  char buf[65536];
  for (ssize_t n; (n = ::read(fd.get(), buf, sizeof buf)) != 0;) {
    if (n < 0) {
      if (errno == EINTR) continue;
      if (why != nullptr) *why = path + ": " + std::strerror(errno);
      return {};
    }
    bytes.append(buf, size_t(n));
  }
  std::vector<uint32_t> out;
  if (std::string bad = DecodeImageProfile(Bytes(bytes), image_bytes, block_bytes, image_id, out); !bad.empty()) {
    if (why != nullptr) *why = path + " " + bad;
    return {};
  }
  return out;
}

ImageServer::ImageServer(const std::string& address, ImageServerOptions options) : options_(std::move(options)) {
  struct stat st {};
  if (::stat(options_.dir.c_str(), &st) != 0) throw SysError("image directory " + options_.dir);
  if (!S_ISDIR(st.st_mode)) throw Error("image directory " + options_.dir + " is not a directory");
  if (options_.block_bytes == 0 || options_.block_bytes % 4096 != 0 || options_.block_bytes > (4u << 20))
    throw Error("block size " + std::to_string(options_.block_bytes) + " is not a multiple of 4 KiB up to 4 MiB");
  // Plain TCP: HOST:PORT, or the channel syntax's tcp:HOST:PORT.
  listener_ = transport::Listen(address.rfind("tcp:", 0) == 0 ? address : "tcp:" + address);
}

ImageServer::~ImageServer() {
  stop();
  Reap(true);
}

void ImageServer::stop() {
  stopping_.store(true);
  std::lock_guard<std::mutex> lock(mu_);
  for (Session& s : sessions_list_)
    if (s.channel) s.channel->close();
}

void ImageServer::Reap(bool all) {
  std::list<Session> finished;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = sessions_list_.begin(); it != sessions_list_.end();) {
      auto next = std::next(it);
      if (all || it->done.load()) finished.splice(finished.end(), sessions_list_, it);
      it = next;
    }
  }
  for (Session& s : finished) {
    if (all && s.channel) s.channel->close();
    if (s.thread.joinable()) s.thread.join();
  }
}

void ImageServer::run() {
  log::info("image_server.listening", {{"address", address()}, {"dir", options_.dir},
                                       {"block_bytes", options_.block_bytes}, {"rate_bytes", options_.rate_bytes}});
  while (!stopping_.load()) {
    std::unique_ptr<transport::Channel> ch = listener_->accept(200ms);
    Reap(false);
    if (!ch) continue;
    const uint64_t id = ++sessions_;
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_.load()) break;
    Session& s = sessions_list_.emplace_back();
    s.channel = std::move(ch);
    s.thread = std::thread([this, &s, id] { Serve(s, id); });
  }
  Reap(true);
}

void ImageServer::Serve(Session& s, uint64_t id) {
  const std::string peer = s.channel->peer();
  std::string why;
  try {
    why = ServeImage(*s.channel, id);
  } catch (const std::exception& e) {
    why = e.what();
  }
  if (why.empty())
    log::info("image_server.session_end", {{"session", id}, {"client", peer}});
  else
    log::warn("image_server.session_failed", {{"session", id}, {"client", peer}, {"error", why}});
  s.channel->close();
  s.done.store(true);
}

std::string ImageServer::ServeImage(transport::Channel& ch, uint64_t id) {
  transport::Message msg;
  transport::RecvResult r = ch.recv(msg, kHelloTimeout);
  if (!r.is_message()) return "no hello: " + (r.timed_out() ? std::string("timed out") : r.message);
  ImageHello hello;
  ImageHelloReply reply;
  reply.set_protocol_version(kImageProtocolVersion);
  auto refuse = [&](const std::string& why) {
    reply.set_error(why);
    (void)ch.send(kMsgImageHelloReply, Bytes(reply.SerializeAsString()), kHelloTimeout);
    return "refused the client: " + why;
  };
  if (msg.type() != kMsgImageHello || !hello.ParseFromArray(msg.payload().data(), int(msg.size())))
    return refuse("expected an image hello, got message type " + std::to_string(msg.type()));
  if (hello.protocol_version() != kImageProtocolVersion)
    return refuse("image protocol version " + std::to_string(hello.protocol_version()) +
                  " is not spoken here (this server speaks " + std::to_string(kImageProtocolVersion) + ")");
  const std::string& name = hello.image();
  if (std::string why = CheckImageName(name); !why.empty()) return refuse(why);
  const std::string path = options_.dir + "/" + name;
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT) return refuse("no image named '" + name + "' on this server");
    return refuse("image '" + name + "': " + std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode))
    return refuse("image '" + name + "' is not a regular file");
  const uint64_t image_bytes = uint64_t(st.st_size);
  const uint32_t block = options_.block_bytes;
  const uint64_t blocks = (image_bytes + block - 1) / block;
  if (blocks == 0 || blocks > UINT32_MAX) return refuse("image '" + name + "' is empty or too large");
  const std::string image_id = ImageId(st);
  std::string profile_why;
  const std::vector<uint32_t> profile =
      LoadImageProfile(ProfilePath(options_.dir, name), image_bytes, block, image_id, &profile_why);
  if (!profile_why.empty()) log::warn("image_server.profile_ignored", {{"image", name}, {"why", profile_why}});
  reply.set_image_bytes(image_bytes);
  reply.set_block_bytes(block);
  reply.set_image_id(image_id);
  reply.set_profile_blocks(uint32_t(profile.size()));
  if (transport::SendResult s = ch.send(kMsgImageHelloReply, Bytes(reply.SerializeAsString()), kHelloTimeout); !s.ok())
    return "answering the hello: " + s.message;

  r = ch.recv(msg, kHelloTimeout);
  if (!r.is_message()) return "no start message: " + (r.timed_out() ? std::string("timed out") : r.message);
  ImageStart start;
  if (msg.type() != kMsgImageStart || !start.ParseFromArray(msg.payload().data(), int(msg.size())))
    return "expected an image start message, got message type " + std::to_string(msg.type());
  vmm::PageBitmap sent(blocks);  // sent, or the client has it or no longer needs it
  for (uint64_t b = 0; b < blocks && b / 8 < start.present().size(); ++b)
    if ((uint8_t(start.present()[b / 8]) >> (b % 8)) & 1) sent.set(b);
  const uint64_t already = sent.count();
  log::info("image_server.session", {{"session", id}, {"client", ch.peer()}, {"name", hello.client()},
                                     {"image", name}, {"blocks", blocks}, {"client_has", already},
                                     {"profile_blocks", uint64_t(profile.size())}});

  // The order of the background copy: the profile, then every block by address.
  std::vector<uint32_t> order;
  order.reserve(profile.size() + blocks);
  order.insert(order.end(), profile.begin(), profile.end());
  const size_t profile_end = order.size();
  for (uint64_t b = 0; b < blocks; ++b) order.push_back(uint32_t(b));
  size_t next = 0;

  std::deque<uint32_t> urgent;
  uint64_t sent_bytes = 0, acked_bytes = 0, throttled_bytes = 0;
  uint64_t demanded = 0, prefetched = 0;
  const auto t0 = Clock::now();
  auto last_send = t0;
  std::optional<Clock::time_point> throttle_t0;  // when the rate-limited part began
  std::vector<uint8_t> batch, data(block);
  ImageRequest req;

  auto send_blocks = [&](const std::vector<uint32_t>& list, uint8_t flags) -> std::string {
    StartImageBatch(batch);
    for (uint32_t b : list) {
      const uint64_t off = uint64_t(b) * block;
      const size_t len = size_t(std::min<uint64_t>(block, image_bytes - off));
      size_t got = 0;
      while (got < len) {
        const ssize_t n = ::pread(fd.get(), data.data() + got, len - got, off_t(off + got));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return "reading image '" + name + "': " + std::strerror(errno);
        if (n == 0) return "image '" + name + "' shrank while it was served";
        got += size_t(n);
      }
      AppendImageBlock(batch, b, flags, std::span(data.data(), len));
    }
    SealImageBatch(batch, uint16_t(list.size()));
    transport::SendResult s = ch.send(kMsgImageBlocks, batch, kSendTimeout);
    if (!s.ok()) return "sending blocks: " + s.message;
    sent_bytes += batch.size();
    last_send = Clock::now();
    return "";
  };

  std::vector<uint32_t> list;
  for (;;) {
    if (stopping_.load()) return "the server is stopping";
    while (next < order.size() && sent.test(order[next])) ++next;
    while (!urgent.empty() && sent.test(urgent.front())) urgent.pop_front();
    const bool more = next < order.size();
    const bool window_open = sent_bytes - acked_bytes < kImageWindowBytes;
    const bool throttled = more && next >= profile_end && options_.rate_bytes > 0;
    const auto now = Clock::now();
    auto when = now;
    if (throttled) {
      if (!throttle_t0) throttle_t0 = now;
      when = *throttle_t0 + std::chrono::nanoseconds(uint64_t(double(throttled_bytes) * 1e9 / double(options_.rate_bytes)));
    }
    std::chrono::nanoseconds wait = kKeepalive;
    if (!urgent.empty()) wait = 0ns;
    else if (more && window_open) wait = std::max<std::chrono::nanoseconds>(0ns, when - now);
    r = ch.recv(msg, std::min<std::chrono::nanoseconds>(wait, kKeepalive));
    if (r.closed()) {
      log::info("image_server.client_left", {{"session", id}, {"image", name}, {"demanded", demanded},
                                             {"prefetched", prefetched},
                                             {"complete", already + demanded + prefetched >= blocks ? "yes" : "no"}});
      return "";
    }
    if (r.error()) return r.message;
    if (r.is_message()) {
      if (msg.type() == kMsgImageRequest) {
        if (std::string why = DecodeImageRequest(msg.payload(), req); !why.empty()) return why;
        acked_bytes = std::max(acked_bytes, req.received_bytes);
        for (uint32_t b : req.demanded)
          if (b < blocks && !sent.test(b)) urgent.push_back(b);
        for (uint32_t b : req.unneeded) sent.set(b);
      } else if (msg.type() == kMsgImageProfile) {
        SaveProfile(name, msg.payload(), image_bytes, image_id);
      } else {
        return "unexpected message type " + std::to_string(msg.type()) + " from the client";
      }
      continue;  // take every waiting message before sending more
    }
    list.clear();
    if (!urgent.empty()) {
      while (!urgent.empty() && list.size() < kDemandBatch) {
        const uint32_t b = urgent.front();
        urgent.pop_front();
        if (sent.test(b)) continue;
        sent.set(b);
        list.push_back(b);
      }
      demanded += list.size();
      if (std::string why = send_blocks(list, kBlockDemanded); !why.empty()) return why;
      continue;
    }
    if (more && window_open && Clock::now() >= when) {
      uint64_t bytes = 0;
      const bool in_profile = next < profile_end;
      while (next < order.size() && bytes < kPrefetchBatchBytes && (next < profile_end) == in_profile) {
        const uint32_t b = order[next++];
        if (sent.test(b)) continue;
        sent.set(b);
        list.push_back(b);
        bytes += block;
      }
      if (!in_profile) throttled_bytes += bytes;
      prefetched += list.size();
      if (std::string why = send_blocks(list, 0); !why.empty()) return why;
      continue;
    }
    if (Clock::now() - last_send >= kKeepalive) {
      list.clear();
      if (std::string why = send_blocks(list, 0); !why.empty()) return why;
    }
  }
}

void ImageServer::SaveProfile(const std::string& name, std::span<const uint8_t> payload,
                              uint64_t image_bytes, const std::string& image_id) {
  ImageProfile p;
  if (!p.ParseFromArray(payload.data(), int(payload.size())) || p.version() != kImageProfileVersion ||
      p.image_bytes() != image_bytes || p.block_bytes() != options_.block_bytes || p.image_id() != image_id) {
    log::warn("image_server.profile_refused", {{"image", name}, {"why", "not a profile of this image"}});
    return;
  }
  if (p.blocks_size() == 0) return;  // a VM that read nothing teaches nothing
  const std::string path = ProfilePath(options_.dir, name);
  // Hidden and unique: never served, never half written under the real name.
  const std::string tmp = options_.dir + "/." + name + ".profile." + std::to_string(::getpid()) + "." +
                          std::to_string(std::hash<std::thread::id>()(std::this_thread::get_id()));
  const std::string bytes = p.SerializeAsString();
  std::lock_guard<std::mutex> lock(mu_);
  UniqueFd fd(::open(tmp.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644));
  bool ok = bool(fd) && ::write(fd.get(), bytes.data(), bytes.size()) == ssize_t(bytes.size()) &&
            ::fsync(fd.get()) == 0;
  fd.reset();
  ok = ok && ::rename(tmp.c_str(), path.c_str()) == 0;
  if (!ok) {
    log::warn("image_server.profile_not_saved", {{"path", path}, {"error", std::strerror(errno)}});
    ::unlink(tmp.c_str());
    return;
  }
  log::info("image_server.profile_saved", {{"image", name}, {"blocks", uint64_t(p.blocks_size())}});
}

}  // namespace ftvm::storage
