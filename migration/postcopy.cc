#include "migration/postcopy.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include "common/error.h"
#include "common/log.h"
#include "eventlog/format.h"
#include "migration/page_messages.h"
#include "migration/state_transfer.h"

namespace ftvm::migration {
namespace {

constexpr uint64_t kPage = vmm::kPageSize;
// After a page the VM waited for, the next few go with it: guests touch memory in
// runs, and one round trip then serves several faults.
constexpr uint64_t kReadaheadPages = 7;
// Pushed pages of data per message: few, so that a request waits little behind them;
// holes cost a number each and go in larger numbers.
constexpr size_t kPushPages = 64;
constexpr size_t kPushHoles = 4096;
// The receiver reports progress (opening the sender's window) this often.
constexpr uint64_t kProgressEveryBytes = kPostcopyWindowBytes / 4;

// Every page a hole: what the VMM loaded while building the machine (the guest
// image) is not the VM's memory, and only a hole faults.
const vmm::GuestMemory& Emptied(vmm::GuestMemory& memory) {
  if (fallocate(memory.fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, off_t(memory.size())) != 0)
    throw SysError("post-copy: emptying guest memory");
  return memory;
}

uint64_t Percentile(std::vector<uint64_t> v, double q) {
  if (v.empty()) return 0;
  const size_t i = std::min(v.size() - 1, size_t(q * double(v.size())));
  std::nth_element(v.begin(), v.begin() + long(i), v.end());
  return v[i];
}

}  // namespace

// ---- Source -------------------------------------------------------------------------

PostcopySender::PostcopySender(const vmm::GuestMemory& memory, transport::Channel& channel, Clock& clock,
                               vmm::PageBitmap first)
    : memory_(memory),
      channel_(channel),
      clock_(clock),
      sent_(memory.size() / kPage),
      data_(vmm::FileDataPages(memory.fd(), memory.size())) {
  // Likely order: the working set, then everything else by address.
  const uint64_t pages = memory.size() / kPage;
  order_.reserve(pages);
  first.for_each([&](uint64_t p) {
    if (p < pages) order_.push_back(uint32_t(p));
  });
  for (uint64_t p = 0; p < pages; ++p)
    if (!first.test(p)) order_.push_back(uint32_t(p));
  stats_.pages = pages;
}

std::string PostcopySender::Handle(const transport::Message& msg) {
  if (msg.type() == kMsgPostcopyDone && msg.size() == 0) {
    // The destination's VM ended before it needed the rest.
    ended_early_ = true;
    return "";
  }
  if (msg.type() != kMsgPageRequest || msg.size() < 8 || (msg.size() - 8) % 4 != 0)
    return "the destination sent message type " + std::to_string(msg.type()) + " of " + std::to_string(msg.size()) +
           " bytes during post-copy";
  acked_bytes_ = std::max(acked_bytes_, eventlog::GetLe64(msg.payload().data()));
  const uint64_t limit = memory_.size() / kPage;
  for (size_t at = 8; at < msg.size(); at += 4) {
    const uint64_t page = eventlog::GetLe32(msg.payload().data() + at);
    if (page >= limit) return "the destination asked for page " + std::to_string(page) + ", beyond memory";
    if (sent_.test(page)) continue;  // on its way
    ++stats_.requested_pages;
    for (uint64_t p = page; p < limit && p <= page + kReadaheadPages; ++p)
      if (!sent_.test(p)) urgent_.push_back(uint32_t(p));
  }
  return "";
}

std::string PostcopySender::SendBatch(const std::vector<uint32_t>& pages) {
  PageSender out(memory_, channel_, std::chrono::seconds(10));
  std::string why;
  for (uint32_t p : pages) {
    if (sent_.test(p)) continue;
    sent_.set(p);
    // A hole of the memfd is zeros: not read (reading would allocate it).
    if (why.empty()) why = out.add(p, !data_.test(p));
  }
  if (why.empty()) why = out.flush();
  stats_.zero_pages += out.counters().zero_pages;
  stats_.bytes_sent += out.counters().bytes;
  page_bytes_sent_ += out.counters().bytes;
  return why;
}

std::string PostcopySender::answer(const transport::Message& request) {
  if (std::string why = Handle(request); !why.empty()) return why;
  std::vector<uint32_t> batch;
  batch.swap(urgent_);
  return SendBatch(batch);
}

std::string PostcopySender::serve(std::chrono::nanoseconds silence) {
  const uint64_t t0 = clock_.monotonic_ns();
  last_heard_ns_ = t0;
  const uint64_t limit = uint64_t(silence.count());
  transport::Message msg;
  std::vector<uint32_t> batch;
  auto lost = [&](const std::string& why) {
    return why + "; " + std::to_string(stats_.pages - sent_.count()) + " of " + std::to_string(stats_.pages) +
           " pages never reached the destination";
  };
  for (;;) {
    const bool all_sent = next_ == order_.size() && urgent_.empty();
    if (all_sent || ended_early_) break;
    // Requests first. Wait for one only while the window is full.
    const bool window_full = page_bytes_sent_ - acked_bytes_ >= kPostcopyWindowBytes;
    const auto wait = urgent_.empty() && window_full ? std::chrono::milliseconds(1) : std::chrono::nanoseconds(0);
    transport::RecvResult r = channel_.recv(msg, wait);
    if (r.is_message()) {
      last_heard_ns_ = clock_.monotonic_ns();
      if (std::string why = Handle(msg); !why.empty()) return lost(why);
      continue;  // drain every request before sending
    }
    if (!r.timed_out()) return lost("the destination went away: " + r.message);
    if (!urgent_.empty()) {
      batch.swap(urgent_);
      urgent_.clear();
      if (std::string why = SendBatch(batch); !why.empty()) return lost(why);
      continue;
    }
    if (window_full) {
      if (clock_.monotonic_ns() - last_heard_ns_ > limit)
        return lost("the destination has been silent for " + std::to_string(limit / 1'000'000) + " ms");
      continue;
    }
    // A push: up to kPushPages pages of data, and any number of holes on the way
    // (a number each) up to a message's worth.
    batch.clear();
    size_t data = 0;
    while (next_ < order_.size() && data < kPushPages && batch.size() < kPushHoles) {
      const uint32_t p = order_[next_++];
      if (sent_.test(p)) continue;
      batch.push_back(p);
      if (data_.test(p)) ++data;
    }
    if (std::string why = SendBatch(batch); !why.empty()) return lost(why);
  }
  if (ended_early_) {
    stats_.ns = clock_.monotonic_ns() - t0;
    stats_.ended_early = true;
    return "";
  }
  uint8_t count[8];
  eventlog::PutLe64(count, stats_.pages);
  if (transport::SendResult s = channel_.send(kMsgPostcopyDone, count, std::chrono::seconds(10)); !s.ok())
    return lost("sending the end of post-copy: " + s.message);
  // Late requests (for pages already on their way) may come before the confirmation.
  for (;;) {
    transport::RecvResult r = channel_.recv(msg, silence);
    if (!r.is_message())
      return "the destination did not confirm it has every page (" +
             (r.timed_out() ? std::string("silent") : r.message) + "): the VM may be lost there";
    if (msg.type() == kMsgPostcopyDone) break;
    if (std::string why = Handle(msg); !why.empty()) return why;
  }
  stats_.ns = clock_.monotonic_ns() - t0;
  return "";
}

// ---- Destination --------------------------------------------------------------------

PostcopyReceiver::PostcopyReceiver(vmm::GuestMemory& memory, Clock& clock)
    : memory_(memory),
      clock_(clock),
      digest_(Emptied(memory)),
      received_(memory.size() / kPage),
      requested_(memory.size() / kPage),
      unfilled_holes_(memory.size() / kPage) {
  const std::string what = "post-copy with userfaultfd";
  uffd_.reset(int(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)));
  if (!uffd_) throw SysError(what + ": userfaultfd (is vm.unprivileged_userfaultfd off for a non-root user?)");
  uffdio_api api{};
  api.api = UFFD_API;
  if (ioctl(uffd_.get(), UFFDIO_API, &api) != 0) throw SysError(what + ": UFFDIO_API");
  if ((api.features & UFFD_FEATURE_MISSING_SHMEM) == 0)
    throw Error(what + ": this kernel cannot handle missing pages of shared memory");
  uffdio_register reg{};
  reg.range.start = reinterpret_cast<uint64_t>(memory.host_base());
  reg.range.len = memory.size();
  reg.mode = UFFDIO_REGISTER_MODE_MISSING;
  if (ioctl(uffd_.get(), UFFDIO_REGISTER, &reg) != 0) throw SysError(what + ": registering guest memory");
  if ((reg.ioctls & (uint64_t(1) << _UFFDIO_COPY)) == 0 || (reg.ioctls & (uint64_t(1) << _UFFDIO_ZEROPAGE)) == 0)
    throw Error(what + ": the kernel cannot fill guest memory's pages (no UFFDIO_COPY/ZEROPAGE)");
  stop_fd_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop_fd_) throw SysError(what + ": eventfd");
  stats_.pages = memory.size() / kPage;
}

PostcopyReceiver::~PostcopyReceiver() {
  stop();
  join();
}

void PostcopyReceiver::join() {
  StopFaultThread();
  if (receiver_.joinable() && receiver_.get_id() != std::this_thread::get_id()) receiver_.join();
}

void PostcopyReceiver::StopFaultThread() {
  uint64_t one = 1;
  [[maybe_unused]] auto n = write(stop_fd_.get(), &one, sizeof one);
  // join() and the receive loop both get here, on two threads: one joins, the other
  // waits for that (two joins of one thread hung under ASan, 1 run in 6-10).
  std::lock_guard<std::mutex> lock(faults_join_mu_);
  if (faults_.joinable() && faults_.get_id() != std::this_thread::get_id()) faults_.join();
}

void PostcopyReceiver::start_requests(transport::Channel& channel) {
  channel_ = &channel;
  start_ns_ = clock_.monotonic_ns();
  faults_ = std::thread([this] { FaultLoop(); });
}

void PostcopyReceiver::start(std::chrono::nanoseconds silence, Done done) {
  receiver_ = std::thread([this, silence, done = std::move(done)] { ReceiveLoop(silence, done); });
}

std::string PostcopyReceiver::deliver(std::span<const uint8_t> payload) {
  try {
    if (std::string why = Place(payload); !why.empty()) return why;
  } catch (const Error& e) {
    return e.what();
  }
  received_bytes_.fetch_add(payload.size(), std::memory_order_acq_rel);
  return "";
}

void PostcopyReceiver::SendRequest(const std::vector<uint32_t>& pages) {
  std::vector<uint8_t> buf(8 + 4 * pages.size());
  eventlog::PutLe64(buf.data(), received_bytes_.load(std::memory_order_acquire));
  for (size_t i = 0; i < pages.size(); ++i) eventlog::PutLe32(buf.data() + 8 + 4 * i, pages[i]);
  // A lost source shows in the receive loop.
  std::lock_guard<std::mutex> lock(send_mu_);  // both threads send
  channel_->send(kMsgPageRequest, buf, std::chrono::seconds(1)).ok();
}

void PostcopyReceiver::FaultLoop() {
  const uint64_t base = reinterpret_cast<uint64_t>(memory_.host_base());
  uffd_msg events[64];
  std::vector<uint32_t> ask;
  for (;;) {
    pollfd fds[2] = {{uffd_.get(), POLLIN, 0}, {stop_fd_.get(), POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      log::error("postcopy.poll_failed", {{"error", strerror(errno)}});
      return;
    }
    if (fds[1].revents != 0) return;
    const ssize_t n = read(uffd_.get(), events, sizeof events);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      log::error("postcopy.read_failed", {{"error", strerror(errno)}});
      return;
    }
    ask.clear();
    const uint64_t now = clock_.monotonic_ns();
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i = 0; i < size_t(n) / sizeof(uffd_msg); ++i) {
        if (events[i].event != UFFD_EVENT_PAGEFAULT) continue;
        const uint64_t page = (events[i].arg.pagefault.address - base) / kPage;
        if (unfilled_holes_.test(page)) {
          if (std::string why = FillHole(page); !why.empty()) {
            log::error("postcopy.hole_fill_failed", {{"page", page}, {"error", why}});
            return;  // the VM waits on that page until the receive loop ends post-copy
          }
          ++stats_.holes_filled;
          continue;
        }
        // Already placed (another thread's fault raced it): the kernel retries.
        if (received_.test(page) || requested_.test(page)) continue;
        requested_.set(page);
        waiting_.emplace_back(uint32_t(page), now);
        ++stats_.faults;
        ask.push_back(uint32_t(page));
      }
    }
    if (!ask.empty()) SendRequest(ask);
  }
}

std::string PostcopyReceiver::Place(std::span<const uint8_t> payload) {
  const PagesMessage msg(payload, stats_.pages);
  const uint64_t base = reinterpret_cast<uint64_t>(memory_.host_base());
  const uint64_t now = clock_.monotonic_ns();
  static const std::array<uint8_t, kPage> kZero{};
  std::lock_guard<std::mutex> lock(mu_);
  // Runs of consecutive pages (data pages lie consecutively in the payload too) are
  // placed with one ioctl: one per page costs more than the copy.
  for (uint64_t i = 0; i < msg.size();) {
    const bool data = i < msg.data_pages();
    const uint64_t end = data ? msg.data_pages() : msg.size();
    uint64_t n = 1;
    while (i + n < end && msg.page(i + n) == msg.page(i) + n) ++n;
    for (uint64_t k = i; k < i + n; ++k) {
      const uint64_t page = msg.page(k);
      if (received_.test(page)) return "page " + std::to_string(page) + " arrived twice";
      digest_.set_page(page, data ? msg.data(k) : std::span<const uint8_t, kPage>(kZero));
    }
    if (data) {
      uffdio_copy c{};
      c.dst = base + msg.page(i) * kPage;
      c.src = reinterpret_cast<uint64_t>(msg.data(i).data());
      c.len = n * kPage;
      // EEXIST would mean a page was filled behind post-copy's back: its contents are
      // not the source's, and the VM cannot be trusted.
      if (ioctl(uffd_.get(), UFFDIO_COPY, &c) != 0)
        return "placing page " + std::to_string(msg.page(i)) + "+" + std::to_string(n) + ": " + strerror(errno);
    } else {
      // Left as holes, but for those the VM already waits for.
      for (uint64_t k = i; k < i + n; ++k) {
        const uint64_t page = msg.page(k);
        unfilled_holes_.set(page);
        if (requested_.test(page))
          if (std::string why = FillHole(page); !why.empty()) return why;
      }
    }
    for (uint64_t k = i; k < i + n; ++k) received_.set(msg.page(k));
    stats_.received_pages += n;
    if (!data) stats_.zero_pages += n;
    i += n;
  }
  // The faults these pages resolved.
  std::erase_if(waiting_, [&](const std::pair<uint32_t, uint64_t>& w) {
    if (!received_.test(w.first)) return false;
    waits_ns_.push_back(now - w.second);
    return true;
  });
  return "";
}

std::string PostcopyReceiver::FillHole(uint64_t page) {
  uffdio_zeropage z{};
  z.range.start = reinterpret_cast<uint64_t>(memory_.host_base()) + page * kPage;
  z.range.len = kPage;
  if (ioctl(uffd_.get(), UFFDIO_ZEROPAGE, &z) != 0)
    return "zero-filling page " + std::to_string(page) + ": " + strerror(errno);
  unfilled_holes_.reset(page);
  return "";
}

void PostcopyReceiver::stop() {
  if (stopping_.exchange(true)) return;
  // The source may stop sending: nothing here needs the rest.
  std::lock_guard<std::mutex> lock(send_mu_);
  if (channel_ != nullptr && !finished_)
    channel_->send(kMsgPostcopyDone, std::span<const uint8_t>(), std::chrono::milliseconds(100)).ok();
}

void PostcopyReceiver::ReceiveLoop(std::chrono::nanoseconds silence, const Done& done) {
  transport::Message msg;
  uint64_t reported = 0;
  std::string why;
  for (;;) {
    transport::RecvResult r = channel_->recv(msg, silence);
    if (stopping_) return;
    if (!r.is_message()) {
      why = r.timed_out() ? "nothing from the source for " + std::to_string(silence.count() / 1'000'000) + " ms"
                          : "the source went away: " + r.message;
      break;
    }
    if (msg.type() == kMsgMemoryPages) {
      if (why = deliver(msg.payload()); !why.empty()) break;
      const uint64_t got = received_bytes_.load(std::memory_order_acquire);
      if (got - reported >= kProgressEveryBytes) {
        reported = got;
        SendRequest({});
      }
    } else if (msg.type() == kMsgPostcopyDone && msg.size() == 8) {
      const uint64_t count = eventlog::GetLe64(msg.payload().data());
      std::lock_guard<std::mutex> lock(mu_);
      if (count != stats_.pages || stats_.received_pages != stats_.pages)
        why = "the source says it sent " + std::to_string(count) + " pages; " + std::to_string(stats_.received_pages) +
              " of " + std::to_string(stats_.pages) + " arrived";
      break;
    } else {
      why = "the source sent message type " + std::to_string(msg.type()) + " during post-copy";
      break;
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.complete_ns = clock_.monotonic_ns() - start_ns_;
  }
  if (why.empty()) {
    // Every page is here: nothing can fault any more. Userfaultfd off, so that the
    // VM's later dirty tracking may register the memory for itself.
    StopFaultThread();
    uffdio_range range{reinterpret_cast<uint64_t>(memory_.host_base()), memory_.size()};
    if (ioctl(uffd_.get(), UFFDIO_UNREGISTER, &range) != 0) why = std::string("unregistering: ") + strerror(errno);
    uffd_.reset();
    {
      std::lock_guard<std::mutex> lock(send_mu_);
      finished_ = true;
      channel_->send(kMsgPostcopyDone, std::span<const uint8_t>(), std::chrono::seconds(1)).ok();
    }
    done(why, digest_.value());
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    why = "post-copy failed with " + std::to_string(stats_.pages - stats_.received_pages) + " of " +
          std::to_string(stats_.pages) + " pages missing: " + why;
  }
  // The owner stops the VM first (Machine::abort); only then are the threads that
  // wait for pages let go, onto pages of zeros no device will see the effect of.
  done(why, digest_.value());
  StopFaultThread();
  uffd_.reset();
}

PostcopyReceiverStats PostcopyReceiver::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  PostcopyReceiverStats s = stats_;
  s.fault_wait_p50_ns = Percentile(waits_ns_, 0.5);
  s.fault_wait_p99_ns = Percentile(waits_ns_, 0.99);
  s.fault_wait_max_ns = waits_ns_.empty() ? 0 : *std::max_element(waits_ns_.begin(), waits_ns_.end());
  return s;
}

}  // namespace ftvm::migration
