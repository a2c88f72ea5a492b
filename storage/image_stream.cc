#include "storage/image_stream.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"
#include "common/log.h"
#include "eventlog/crc32c.h"
#include "eventlog/format.h"
#include "storage/storage.pb.h"

namespace ftvm::storage {
namespace {

using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

// LOCAL.present: which blocks of the image LOCAL holds. Little-endian.
//   +0   u64  kPresenceMagic
//   +8   u32  kPresenceVersion
//   +12  u32  CRC32C of bytes [16, end)
//   +16  u64  image bytes
//   +24  u32  block bytes
//   +28  u32  length of the image id (L)
//   +32  the image id (the server's, for this version of the image)
//   +32+L  bitmap: bit i (LSB first) of byte i/8 is block i
constexpr uint64_t kPresenceMagic = 0x5345525050494d47ull;  // "GMIPPRES"
constexpr uint32_t kPresenceVersion = 1;
constexpr uint64_t kAckBytes = 256u << 10;  // tell the server what arrived this often
constexpr auto kPersistEvery = 1s;

std::span<const uint8_t> Bytes(const std::string& s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

std::string ReadAll(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw SysError(path);
  std::string out;
  char buf[65536];
  for (ssize_t n; (n = ::read(fd.get(), buf, sizeof buf)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw SysError(path);
    out.append(buf, size_t(n));
  }
  return out;
}

bool Exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

// The server answered with another image than the one being copied: never resumed.
class ImageChanged : public Error {
 public:
  using Error::Error;
};

std::string Seconds(std::chrono::nanoseconds d) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", double(d.count()) / 1e9);
  return buf;
}

}  // namespace

ImageStream::ImageStream(ImageStreamOptions options) : options_(std::move(options)) {
  const std::string& local = options_.local_path;
  const std::string presence = PresencePath(local);
  const bool resume = Exists(presence);
  if (Exists(local) && !resume)
    throw Error(local + " exists but is not a partial copy of a streamed image (there is no " + presence +
                "); remove it, or run it with --disk alone");
  if (resume) {
    if (!Exists(local)) throw Error(presence + " is there but " + local + " is not: remove " + presence + " to start over");
    LoadPresence();
    fd_ = UniqueFd(::open(local.c_str(), O_RDWR | O_CLOEXEC));
    if (!fd_) throw SysError("local copy " + local);
    struct stat st {};
    if (::fstat(fd_.get(), &st) != 0) throw SysError("local copy " + local);
    if (uint64_t(st.st_size) != image_bytes_)
      throw Error("local copy " + local + " has " + std::to_string(st.st_size) + " bytes, but " + presence +
                  " describes an image of " + std::to_string(image_bytes_));
    stats_.local_at_start = have_;
    if (have_ == blocks_) {
      complete_.store(true);
      all_durable_.store(true);
      stats_.complete = true;
      finished_ = true;
      log::info("image_stream.already_local", {{"local", local}, {"blocks", blocks_}});
      return;
    }
  }
  try {
    channel_ = Connect(options_.timeout);
  } catch (const ImageChanged& e) {
    throw Error(e.what());
  }
  if (!resume) {
    fd_ = UniqueFd(::open(local.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (!fd_) throw SysError("creating the local copy " + local);
    if (::ftruncate(fd_.get(), off_t(image_bytes_)) != 0) {
      const int err = errno;
      ::unlink(local.c_str());
      throw Error("sizing the local copy " + local + ": " + std::strerror(err));
    }
    // From here on a VMM started again on LOCAL resumes instead of refusing it.
    if (std::string why = Persist(); !why.empty()) {
      ::unlink(local.c_str());
      throw Error(why);
    }
  }
  // What we hold already, so the server sends only the rest.
  if (transport::SendResult s = channel_->send(kMsgImageStart, Bytes(StartMessage()), options_.timeout); !s.ok())
    throw Error("image server " + Where() + ": " + s.message);
  connected_at_ = SteadyClock::now();
}

std::string ImageStream::StartMessage() const {
  ImageStart start;
  std::string bits((blocks_ + 7) / 8, '\0');
  {
    std::lock_guard<std::mutex> lock(mu_);
    // A block a guest write is filling is the guest's: the server need not send it.
    for (uint64_t b = 0; b < blocks_; ++b)
      if (state_[b] == kPresent || state_[b] == kWriting) bits[b / 8] = char(uint8_t(bits[b / 8]) | (1u << (b % 8)));
  }
  start.set_present(bits);
  return start.SerializeAsString();
}

std::shared_ptr<transport::Channel> ImageStream::CurrentChannel() const {
  std::lock_guard<std::mutex> lock(channel_mu_);
  return channel_;
}

ImageStream::~ImageStream() { stop(); }

std::string ImageStream::Where() const {
  return "'" + options_.server.name + "' on " + options_.server.host + ":" + std::to_string(options_.server.port);
}

std::shared_ptr<transport::Channel> ImageStream::Connect(std::chrono::nanoseconds timeout) {
  const std::string where = "image server " + options_.server.host + ":" + std::to_string(options_.server.port);
  std::shared_ptr<transport::Channel> channel;
  try {
    channel = transport::TcpConnect(options_.server.host, options_.server.port, timeout);
  } catch (const Error& e) {
    throw Error(where + ": " + e.what());
  }
  ImageHello hello;
  hello.set_protocol_version(kImageProtocolVersion);
  hello.set_image(options_.server.name);
  hello.set_client(options_.client_name);
  if (transport::SendResult s = channel->send(kMsgImageHello, Bytes(hello.SerializeAsString()), timeout); !s.ok())
    throw Error(where + ": " + s.message);
  transport::Message msg;
  transport::RecvResult r = channel->recv(msg, timeout);
  if (!r.is_message())
    throw Error(where + " did not answer the hello: " + (r.timed_out() ? std::string("timed out") : r.message));
  ImageHelloReply reply;
  if (msg.type() != kMsgImageHelloReply || !reply.ParseFromArray(msg.payload().data(), int(msg.size())))
    throw Error(where + " answered with message type " + std::to_string(msg.type()) + ", not an image hello reply");
  if (!reply.error().empty()) throw Error(where + " refused image '" + options_.server.name + "': " + reply.error());
  if (reply.protocol_version() != kImageProtocolVersion)
    throw Error(where + " speaks image protocol version " + std::to_string(reply.protocol_version()) +
                "; this build speaks " + std::to_string(kImageProtocolVersion));
  if (reply.block_bytes() == 0 || reply.block_bytes() % 512 != 0 || reply.image_bytes() == 0)
    throw Error(where + " describes image '" + options_.server.name + "' with " + std::to_string(reply.image_bytes()) +
                " bytes in blocks of " + std::to_string(reply.block_bytes()));
  if (!state_.empty()) {
    // Resuming or reconnecting: the partial copy must be of this very image.
    if (reply.image_bytes() != image_bytes_ || reply.block_bytes() != block_bytes_ || reply.image_id() != image_id_)
      throw ImageChanged("image '" + options_.server.name + "' on " + where + " is not the one " +
                         options_.local_path + " was being copied from (it changed, or another image has its name): " +
                         "remove " + options_.local_path + " and " + PresencePath(options_.local_path) +
                         " to start over");
    std::lock_guard<std::mutex> lock(mu_);
    stats_.profile_blocks = reply.profile_blocks();
  } else {
    image_bytes_ = reply.image_bytes();
    block_bytes_ = reply.block_bytes();
    image_id_ = reply.image_id();
    blocks_ = (image_bytes_ + block_bytes_ - 1) / block_bytes_;
    state_.assign(blocks_, kAbsent);
    durable_.assign(blocks_, 0);
    accessed_.assign(blocks_, 0);
    stats_.profile_blocks = reply.profile_blocks();
  }
  log::event(log::Level::kInfo, "image_stream.connected", {{"server", where}, {"image", options_.server.name}, {"image_bytes", image_bytes_},
                                       {"block_bytes", block_bytes_}, {"local_blocks", have_},
                                       {"profile_blocks", uint64_t(reply.profile_blocks())}});
  return channel;
}

bool ImageStream::Reconnect(const std::string& why) {
  const auto lost_at = SteadyClock::now();
  const auto deadline = lost_at + options_.timeout;
  {
    std::lock_guard<std::mutex> lock(mu_);
    reconnecting_ = true;
    drop_connection_ = false;
  }
  cv_.notify_all();
  if (auto old = CurrentChannel()) old->close();
  log::event(log::Level::kWarn, "image_stream.disconnected",
             {{"image", options_.server.name}, {"why", why}, {"local_blocks", have_blocks()},
              {"reconnect_within_s", Seconds(options_.timeout)}});
  std::string last = why;
  uint64_t attempts = 0;
  while (!stopping_.load()) {
    const auto now = SteadyClock::now();
    if (now >= deadline) break;
    ++attempts;
    try {
      const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now);
      std::shared_ptr<transport::Channel> ch = Connect(std::min<std::chrono::nanoseconds>(left, 1s));
      if (transport::SendResult s = ch->send(kMsgImageStart, Bytes(StartMessage()), left); !s.ok())
        throw Error("resuming: " + s.message);
      {
        std::lock_guard<std::mutex> lock(channel_mu_);
        channel_ = ch;
      }
      // From here a vCPU's new demand goes to the new connection; the ones made
      // before (to the lost server, or not sent at all) are asked again.
      ImageRequest req;
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (uint64_t b = 0; b < blocks_; ++b)
          if (state_[b] == kDemanded) req.demanded.push_back(uint32_t(b));
      }
      const uint64_t outstanding = req.demanded.size();
      if (!req.demanded.empty())
        if (transport::SendResult s = ch->send(kMsgImageRequest, EncodeImageRequest(req), left); !s.ok())
          throw Error("asking again for the blocks the guest waits for: " + s.message);
      const double down_ms = std::chrono::duration<double, std::milli>(SteadyClock::now() - lost_at).count();
      {
        std::lock_guard<std::mutex> lock(mu_);
        reconnecting_ = false;
        connected_at_ = SteadyClock::now();
        ++stats_.reconnects;
      }
      cv_.notify_all();
      log::event(log::Level::kWarn, "image_stream.reconnected",
                 {{"image", options_.server.name}, {"down_ms", down_ms}, {"attempts", attempts},
                  {"asked_again", outstanding}, {"local_blocks", have_blocks()}});
      return true;
    } catch (const ImageChanged& e) {
      Lost(std::string("the server came back with another image: ") + e.what());
      return false;
    } catch (const Error& e) {
      last = e.what();
    }
    // Not back yet: try again shortly (a refused connect returns at once).
    const auto retry = std::min<SteadyClock::time_point>(SteadyClock::now() + 200ms, deadline);
    while (!stopping_.load() && SteadyClock::now() < retry) std::this_thread::sleep_for(20ms);
  }
  if (!stopping_.load())
    Lost(why + "; not back within " + Seconds(options_.timeout) + " s (" + std::to_string(attempts) +
         " attempts, the last: " + last + ")");
  return false;
}

uint64_t ImageStream::have_blocks() const {
  std::lock_guard<std::mutex> lock(mu_);
  return have_;
}

void ImageStream::LoadPresence() {
  const std::string path = PresencePath(options_.local_path);
  const std::string bytes = ReadAll(path);
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const std::string over = ": remove " + options_.local_path + " and " + path + " to start the copy over";
  if (bytes.size() < 32 || eventlog::GetLe64(p) != kPresenceMagic) throw Error(path + " is not a presence bitmap" + over);
  if (eventlog::GetLe32(p + 8) != kPresenceVersion)
    throw Error(path + " is in version " + std::to_string(eventlog::GetLe32(p + 8)) + "; this build reads version " +
                std::to_string(kPresenceVersion));
  if (eventlog::Crc32c(Bytes(bytes).subspan(16)) != eventlog::GetLe32(p + 12)) throw Error(path + " fails its CRC" + over);
  image_bytes_ = eventlog::GetLe64(p + 16);
  block_bytes_ = eventlog::GetLe32(p + 24);
  const uint32_t id_len = eventlog::GetLe32(p + 28);
  if (block_bytes_ == 0 || image_bytes_ == 0 || 32 + uint64_t(id_len) > bytes.size())
    throw Error(path + " is damaged" + over);
  blocks_ = (image_bytes_ + block_bytes_ - 1) / block_bytes_;
  if (bytes.size() != 32 + id_len + (blocks_ + 7) / 8) throw Error(path + " is damaged (wrong length)" + over);
  image_id_ = bytes.substr(32, id_len);
  state_.assign(blocks_, kAbsent);
  durable_.assign(blocks_, 0);
  const uint8_t* bits = p + 32 + id_len;
  for (uint64_t b = 0; b < blocks_; ++b)
    if ((bits[b / 8] >> (b % 8)) & 1) {
      state_[b] = kPresent;
      durable_[b] = 1;
      ++have_;
    }
  accessed_.assign(blocks_, 0);
  stats_.blocks = blocks_;
}

std::string ImageStream::Persist() {
  std::lock_guard<std::mutex> one(persist_mu_);
  std::vector<uint8_t> file(32 + image_id_.size() + (blocks_ + 7) / 8, 0);
  uint8_t* bits = file.data() + 32 + image_id_.size();
  uint64_t present = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (uint64_t b = 0; b < blocks_; ++b)
      if (state_[b] == kPresent) {
        bits[b / 8] |= uint8_t(1u << (b % 8));
        ++present;
      }
  }
  // The blocks must be on LOCAL's disk before the bitmap says so.
  if (::fdatasync(fd_.get()) != 0) return "syncing the local copy " + options_.local_path + ": " + std::strerror(errno);
  uint8_t* p = file.data();
  eventlog::PutLe64(p, kPresenceMagic);
  eventlog::PutLe32(p + 8, kPresenceVersion);
  eventlog::PutLe64(p + 16, image_bytes_);
  eventlog::PutLe32(p + 24, block_bytes_);
  eventlog::PutLe32(p + 28, uint32_t(image_id_.size()));
  std::memcpy(p + 32, image_id_.data(), image_id_.size());
  eventlog::PutLe32(p + 12, eventlog::Crc32c(std::span<const uint8_t>(file).subspan(16)));
  const std::string path = PresencePath(options_.local_path);
  const std::string tmp = path + ".tmp";
  UniqueFd fd(::open(tmp.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644));
  bool ok = bool(fd) && ::write(fd.get(), file.data(), file.size()) == ssize_t(file.size()) && ::fsync(fd.get()) == 0;
  fd.reset();
  ok = ok && ::rename(tmp.c_str(), path.c_str()) == 0;
  if (!ok) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return "recording which blocks " + options_.local_path + " holds (" + path + "): " + std::strerror(err);
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (uint64_t b = 0; b < blocks_; ++b)
    if ((bits[b / 8] >> (b % 8)) & 1) durable_[b] = 1;
  if (present == blocks_) all_durable_.store(true, std::memory_order_release);
  return "";
}

void ImageStream::start(std::function<void(const std::string&)> lost) {
  lost_ = std::move(lost);
  start_time_ = SteadyClock::now();
  if (complete_.load()) return;
  receiver_ = std::thread([this] { ReceiveLoop(); });
}

void ImageStream::cancel() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
  }
  cv_.notify_all();
}

void ImageStream::stop() {
  if (stopping_.exchange(true)) return;
  cancel();
  if (std::shared_ptr<transport::Channel> ch = CurrentChannel()) {
    bool running;
    {
      std::lock_guard<std::mutex> lock(mu_);
      running = failed_.empty() && !finished_ && !reconnecting_;
    }
    // What this boot read, for the next one, even if the copy did not finish.
    if (running) SendProfile();
    ch->close();
  }
  if (receiver_.joinable()) receiver_.join();
  // A reconnect may have installed a channel after the close above.
  if (std::shared_ptr<transport::Channel> ch = CurrentChannel()) ch->close();
  if (fd_) {
    if (std::string why = Persist(); !why.empty()) log::warn("image_stream.persist_failed", {{"error", why}});
  }
}

bool ImageStream::wait_complete(std::chrono::nanoseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return finished_ || !failed_.empty(); });
  return finished_;
}

ImageStreamStats ImageStream::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  ImageStreamStats s = stats_;
  s.blocks = blocks_;
  s.block_bytes = block_bytes_;
  s.image_bytes = image_bytes_;
  return s;
}

void ImageStream::MaybeComplete() {
  if (have_ == blocks_ && !complete_.load()) complete_.store(true, std::memory_order_release);
}

void ImageStream::Lost(const std::string& why) {
  std::function<void(const std::string&)> cb;
  uint64_t have;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!failed_.empty() || finished_ || stopping_.load()) return;
    failed_ = why;
    cb = lost_;
    have = have_;
  }
  const std::string message = "image server lost: " + Where() + ": " + why + " (" + std::to_string(have) + " of " +
                              std::to_string(blocks_) + " blocks local): VM lost";
  log::event(log::Level::kError, "image_stream.lost", {{"image", options_.server.name}, {"why", why}, {"local_blocks", have},
                                  {"blocks", blocks_}});
  // The VM is stopped before a vCPU waiting for a block hears of the failure: it
  // must not run on, not even to see an I/O error.
  if (cb) cb(message);
  {
    std::lock_guard<std::mutex> lock(mu_);
    lost_reported_ = true;
  }
  cv_.notify_all();
}

void ImageStream::SendProfile() {
  ImageProfile p;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (profile_sent_) return;
    profile_sent_ = true;
    for (uint32_t b : access_order_) p.add_blocks(b);
  }
  p.set_version(kImageProfileVersion);
  p.set_image_bytes(image_bytes_);
  p.set_block_bytes(block_bytes_);
  p.set_image_id(image_id_);
  if (transport::SendResult s = CurrentChannel()->send(kMsgImageProfile, Bytes(p.SerializeAsString()), 5s); !s.ok())
    log::warn("image_stream.profile_not_sent", {{"error", s.message}});
}

void ImageStream::Finish() {
  if (std::string why = Persist(); !why.empty()) log::warn("image_stream.persist_failed", {{"error", why}});
  SendProfile();
  CurrentChannel()->close();
  ImageStreamStats s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    finished_ = true;
    stats_.complete = true;
    stats_.complete_s = std::chrono::duration<double>(SteadyClock::now() - start_time_).count();
    s = stats_;
  }
  cv_.notify_all();
  log::event(log::Level::kInfo, "image_stream.complete", {{"image", options_.server.name}, {"local", options_.local_path},
                                      {"blocks", blocks_}, {"on_demand", s.demand_fetched},
                                      {"prefetched", s.prefetched}, {"written_over", s.written_over},
                                      {"local_at_start", s.local_at_start}, {"late_dropped", s.late_dropped},
                                      {"blocks_read", s.blocks_read}, {"reconnects", s.reconnects},
                                      {"seconds", s.complete_s}});
}

void ImageStream::ReceiveLoop() {
  transport::Message msg;
  std::vector<ImageBlock> batch;
  uint64_t acked = 0;
  auto last_heard = SteadyClock::now();
  auto last_persist = last_heard;
  bool stalled_before = false;  // the last connection was dropped for a demand unanswered
  // The connection is lost: a new one within the timeout, or the VM is lost.
  // Progress counts restart with the connection (the server's window is per session).
  auto reconnect = [&](const std::string& why) {
    if (stopping_.load() || !Reconnect(why)) return false;
    received_bytes_.store(0);
    acked = 0;
    last_heard = SteadyClock::now();
    return true;
  };
  while (!stopping_.load()) {
    std::string drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (drop_connection_) drop = drop_why_;
    }
    if (!drop.empty()) {
      // A server that takes every connection but never answers is as lost as one
      // that is gone: a second unanswered demand with no block in between ends it.
      if (stalled_before) {
        Lost(drop + ", again after reconnecting");
        break;
      }
      stalled_before = true;
      if (!reconnect(drop)) break;
      continue;
    }
    std::shared_ptr<transport::Channel> channel = CurrentChannel();
    transport::RecvResult r = channel->recv(msg, 200ms);
    const auto now = SteadyClock::now();
    if (r.is_message()) {
      last_heard = now;
      if (msg.type() != kMsgImageBlocks) {
        Lost("sent message type " + std::to_string(msg.type()) + " where blocks were expected");
        break;
      }
      if (std::string why = DecodeImageBatch(msg.payload(), batch); !why.empty()) {
        Lost(why);
        break;
      }
      if (!batch.empty()) stalled_before = false;
      received_bytes_.fetch_add(msg.size());
      std::string bad;
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (const ImageBlock& b : batch) {
          if (b.index >= blocks_ || b.data.size() != BlockEnd(b.index) - uint64_t(b.index) * block_bytes_) {
            bad = "sent block " + std::to_string(b.index) + " with " + std::to_string(b.data.size()) +
                  " bytes, which is not a block of this image";
            break;
          }
          uint8_t& st = state_[b.index];
          if (st != kAbsent && st != kDemanded) {
            // A guest write took the block over (its data wins), or a demand asked
            // again across a reconnect was answered twice.
            ++stats_.late_dropped;
            continue;
          }
          // Written under mu_: a guest write cannot take the block over between
          // the check above and this write.
          size_t done = 0;
          while (done < b.data.size()) {
            const ssize_t n = ::pwrite(fd_.get(), b.data.data() + done, b.data.size() - done,
                                       off_t(uint64_t(b.index) * block_bytes_ + done));
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            done += size_t(n);
          }
          if (done != b.data.size()) {
            bad = "writing the local copy " + options_.local_path + ": " + std::strerror(errno);
            break;
          }
          st = kPresent;
          ++have_;
          ++((b.flags & kBlockDemanded) ? stats_.demand_fetched : stats_.prefetched);
        }
        MaybeComplete();
      }
      cv_.notify_all();
      if (!bad.empty()) {
        Lost(bad);
        break;
      }
    } else if (r.timed_out()) {
      if (!complete_.load() && now - last_heard > options_.timeout) {
        if (!reconnect("no word from the server in " + Seconds(options_.timeout) + " s")) break;
        continue;
      }
    } else {
      if (stopping_.load()) break;
      if (!complete_.load()) {
        if (!reconnect(r.closed() ? "the server closed the connection" : r.message)) break;
        continue;
      }
    }
    if (complete_.load()) {
      Finish();
      break;
    }
    std::vector<uint32_t> unneeded;
    {
      std::lock_guard<std::mutex> lock(mu_);
      unneeded.swap(unneeded_);
    }
    const uint64_t received = received_bytes_.load();
    if (received - acked >= kAckBytes || !unneeded.empty()) {
      ImageRequest req;
      req.received_bytes = received;
      req.unneeded = std::move(unneeded);
      if (transport::SendResult s = channel->send(kMsgImageRequest, EncodeImageRequest(req), options_.timeout); !s.ok()) {
        // The blocks the guest took over are in the next ImageStart instead.
        if (!reconnect("telling the server what arrived: " + s.message)) break;
        continue;
      }
      acked = received;
    }
    if (now - last_persist >= kPersistEvery) {
      if (std::string why = Persist(); !why.empty()) {
        Lost(why);
        break;
      }
      last_persist = now;
    }
  }
}

int ImageStream::prepare(bool write, uint64_t offset, uint64_t bytes) {
  if (bytes == 0 || complete_.load(std::memory_order_acquire)) return 0;
  const uint64_t first = offset / block_bytes_;
  const uint64_t last = std::min<uint64_t>((offset + bytes - 1) / block_bytes_, blocks_ - 1);
  need_.clear();
  demand_.clear();
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (!failed_.empty()) {
      cv_.wait(lock, [&] { return lost_reported_; });
      return EIO;
    }
    if (cancelled_) return ECANCELED;
    bool took_over = false;
    for (uint64_t b = first; b <= last; ++b) {
      const bool whole = write && offset <= b * block_bytes_ && BlockEnd(b) <= offset + bytes;
      if (!whole && !accessed_[b]) {
        accessed_[b] = 1;
        access_order_.push_back(uint32_t(b));
        ++stats_.blocks_read;
      }
      uint8_t& st = state_[b];
      if (st != kAbsent && st != kDemanded) continue;
      if (whole) {
        // The write fills it: nothing to fetch, and a copy already on its way is
        // dropped when it arrives (the receiver sees kWriting).
        if (st == kAbsent) unneeded_.push_back(uint32_t(b));
        st = kWriting;
        ++have_;
        ++stats_.written_over;
        took_over = true;
        continue;
      }
      if (st == kAbsent) {
        st = kDemanded;
        demand_.push_back(uint32_t(b));
      }
      need_.push_back(uint32_t(b));
    }
    if (took_over) MaybeComplete();
  }
  if (need_.empty()) return 0;
  const auto t0 = SteadyClock::now();
  if (!demand_.empty()) {
    ImageRequest req;
    // Progress is the receiver's to report (it counts per connection); 0 moves nothing.
    req.received_bytes = 0;
    req.demanded = demand_;
    if (transport::SendResult s = CurrentChannel()->send(kMsgImageRequest, EncodeImageRequest(req), options_.timeout);
        !s.ok()) {
      // The connection is going: the receiver reconnects and asks for every block
      // still demanded, these included.
      std::lock_guard<std::mutex> lock(mu_);
      if (!reconnecting_ && !drop_connection_) {
        drop_connection_ = true;
        drop_why_ = "asking for block " + std::to_string(demand_.front()) + ": " + s.message;
      }
    }
  }
  std::unique_lock<std::mutex> lock(mu_);
  auto arrived = [&] {
    for (uint32_t b : need_)
      if (state_[b] == kAbsent || state_[b] == kDemanded) return false;
    return true;
  };
  // Up to the timeout on a connection; while the receiver reconnects, until it has
  // (the clock starts again) or has given up (the VM is lost).
  while (!arrived() && !lost_reported_ && !cancelled_) {
    if (reconnecting_ || drop_connection_) {
      cv_.wait_for(lock, 200ms);
      continue;
    }
    const auto deadline = std::max(t0, connected_at_) + options_.timeout;
    if (SteadyClock::now() >= deadline) {
      drop_connection_ = true;
      drop_why_ = "no answer for block " + std::to_string(need_.front()) + " in " + Seconds(options_.timeout) + " s";
      continue;
    }
    cv_.wait_until(lock, deadline);
  }
  const uint64_t waited = uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(SteadyClock::now() - t0).count());
  ++stats_.demand_waits;
  stats_.wait_ns_total += waited;
  stats_.wait_ns_max = std::max(stats_.wait_ns_max, waited);
  if (arrived()) return 0;
  if (cancelled_) return ECANCELED;
  return EIO;  // lost_reported_: the VM is stopped already
}

void ImageStream::written(uint64_t offset, uint64_t bytes) {
  if (bytes == 0 || all_durable_.load(std::memory_order_acquire)) return;
  const uint64_t first = offset / block_bytes_;
  const uint64_t last = std::min<uint64_t>((offset + bytes - 1) / block_bytes_, blocks_ - 1);
  bool record = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (uint64_t b = first; b <= last; ++b) {
      if (state_[b] == kWriting) state_[b] = kPresent;
      if (!durable_[b]) record = true;
    }
  }
  // Before the guest hears the write is done: LOCAL.present must already say these
  // blocks are local, or a VMM restarted on LOCAL would fetch them again over what
  // the guest wrote.
  if (record) {
    if (std::string why = Persist(); !why.empty()) Lost(why);
  }
}

}  // namespace ftvm::storage
