// app=mailstore ip=A.B.C.D/N [gw=A.B.C.D] [max_messages=N]: the
// demo workload, a UDP mail store (mailstore_proto.h) with a journal on the
// virtio disk.
//
// Loop, built around exits: take every frame already in the RX ring (up to a
// batch), stage all DELIVERs, write the batch's records plus one flush in one
// notify, then queue all replies and notify TX once (if the device wants it),
// then idle in FTVM_IRQ_WAIT_IF. OK replies leave only after their flush completed.
#include <stdint.h>

#include "guest/apps/app.h"
#include "guest/apps/mail_index.h"
#include "guest/apps/mail_journal.h"
#include "guest/apps/mail_server.h"
#include "guest/lib/arena.h"
#include "guest/lib/console.h"
#include "guest/lib/dev.h"
#include "guest/lib/health.h"
#include "guest/lib/virtio_blk.h"
#include "guest/lib/virtio_net.h"
#include "guest/net/stack.h"

namespace ftvm::guest {
namespace {

constexpr unsigned kBatch = 32;          // frames taken per loop iteration
constexpr size_t kStagingBytes = 64 * 1024;  // >= kBatch records of max size
constexpr size_t kScanBytes = 256 * 1024;    // recovery read window
static_assert(kStagingBytes >= kBatch * kMaxRecordSectors * kSectorBytes);

// The journal's disk: virtio-blk, with write+flush batched in one notify.
class BlkStore final : public BlockStore {
 public:
  explicit BlkStore(VirtioBlk* blk) : blk_(blk) {}
  uint64_t capacity_sectors() const override { return blk_->capacity_sectors(); }
  bool read(uint64_t sector, void* buf, uint32_t count) override {
    return blk_->read(sector, buf, count * kSectorBytes);
  }
  bool write_flush(uint64_t sector, const void* buf, uint32_t count) override {
    BlkRequest w, f;
    // Requests complete in ring order in the VMM, so the flush covers the write.
    if (!blk_->submit_write(&w, sector, buf, count * kSectorBytes)) return false;
    if (!blk_->submit_flush(&f)) {
      blk_->complete_all();
      return false;
    }
    return blk_->complete_all() && w.ok() && f.ok();
  }

 private:
  VirtioBlk* blk_;
};

// Collects a batch's replies; they are sent after the batch is durable.
class MailUdp final : public net::UdpHandler {
 public:
  explicit MailUdp(MailServer* server) : server_(server) {}

  void on_udp(const net::UdpDatagram& d) override {
    if (count_ == kBatch) return;  // cannot happen: one datagram per frame
    Reply& r = replies_[count_++];
    r.ip = d.src_ip;
    r.port = d.src_port;
    r.len = server_->handle(d.data, d.len, r.data, sizeof r.data);
  }

  void send_all(net::NetStack* stack) {
    for (unsigned i = 0; i < count_; ++i) {
      const Reply& r = replies_[i];
      stack->send_udp(r.ip, FTVM_MAIL_PORT, r.port, reinterpret_cast<const uint8_t*>(r.data), r.len);
    }
    count_ = 0;
  }

 private:
  struct Reply {
    uint32_t ip;
    uint16_t port;
    size_t len;
    char data[FTVM_MAIL_MAX_DATAGRAM];
  };
  MailServer* server_;
  Reply replies_[kBatch];
  unsigned count_ = 0;
};

struct Recovery {
  MailIndex* index;
  uint64_t skipped;
};

void recover_record(void* ctx, Str msgid, Str mailbox, Str body) {
  auto* r = static_cast<Recovery*>(ctx);
  if (r->index->add(msgid, mailbox, body) != MailIndex::AddResult::kAdded) ++r->skipped;
}

void on_frame(void* ctx, const uint8_t* frame, size_t len) {
  static_cast<net::NetStack*>(ctx)->input(frame, len);
}

const char* open_result_name(Journal::OpenResult r) {
  switch (r) {
    case Journal::OpenResult::kRecovered: return "recovered";
    case Journal::OpenResult::kFormatted: return "formatted";
    case Journal::OpenResult::kNotAJournal: return "disk holds something else (refusing to format)";
    case Journal::OpenResult::kBadVersion: return "unsupported journal version";
    case Journal::OpenResult::kIoError: return "I/O error";
    case Journal::OpenResult::kTooSmall: return "disk too small";
  }
  return "?";
}

VirtioBlk g_blk;
VirtioNet g_net;

}  // namespace

int app_mailstore(const Args& args) {
  uint32_t ip, mask, gw = 0;
  Str ip_arg = args.get_str("ip", Str::of("10.0.0.2/24"));
  if (!parse_ipv4_cidr(ip_arg, &ip, &mask)) {
    con_printf("mailstore: bad ip=%.*s (want A.B.C.D/N)\n", static_cast<int>(ip_arg.n), ip_arg.p);
    return kExitBadSetup;
  }
  Str gw_arg;
  if (args.get("gw", &gw_arg) && !parse_ipv4(gw_arg, &gw)) {
    con_printf("mailstore: bad gw=\n");
    return kExitBadSetup;
  }
  // Arguments are all checked before the devices, so a typo is named as such.
  Str max_text;
  bool has_max = args.get("max_messages", &max_text);
  bool max_ok = true;
  uint64_t max_requested = args.get_u64("max_messages", 0, &max_ok);
  if (!max_ok) {
    con_printf("mailstore: bad max_messages= (want a number)\n");
    return kExitBadSetup;
  }
  // The heartbeat (FTVM_SLOT_HEALTH) every beat_ms (0, the default: none, and the
  // loop idles exactly as it always did); hang_after_ms: stop beating and spin after
  // that long, a hung app on purpose (tests of ftvm --health-grace-ms).
  bool beat_ok = true, hang_ok = true;
  const uint64_t beat_ms = args.get_u64("beat_ms", 0, &beat_ok);
  const uint64_t hang_after_ms = args.get_u64("hang_after_ms", 0, &hang_ok);
  if (!beat_ok || !hang_ok || (hang_after_ms != 0 && beat_ms == 0)) {
    con_printf("mailstore: bad beat_ms= or hang_after_ms= (want numbers; hanging needs beat_ms > 0)\n");
    return kExitBadSetup;
  }
  Arena& mem = arena();
  if (!g_blk.init(mem)) {
    con_printf("mailstore: no virtio-blk device: %s\n", g_blk.error());
    return kExitBadSetup;
  }
  if (!g_net.init(mem)) {
    con_printf("mailstore: no virtio-net device: %s\n", g_net.error());
    return kExitBadSetup;
  }

  auto* staging = static_cast<uint8_t*>(mem.alloc(kStagingBytes, 4096));
  auto* scan = static_cast<uint8_t*>(mem.alloc(kScanBytes, 4096));
  if (staging == nullptr || scan == nullptr) {
    con_printf("mailstore: out of memory\n");
    return kExitBadSetup;
  }
  // Index tables sized to what memory can hold: ~2 KiB per message covers a
  // full-size body, its strings and the table slots.
  uint64_t fit = mem.remaining() / 2048;
  uint64_t max_messages = has_max ? max_requested : (fit < (1u << 20) ? fit : (1u << 20));
  MailIndex index;
  if (max_messages == 0 || !index.init(&mem, static_cast<uint32_t>(max_messages), 4096)) {
    con_printf("mailstore: cannot size the index for %lu messages\n", max_messages);
    return kExitBadSetup;
  }

  BlkStore store(&g_blk);
  Journal journal(&store, staging, kStagingBytes, scan, kScanBytes);
  // A new journal gets a random id (device randomness: recorded and replayed).
  uint64_t new_id = slot_present(FTVM_SLOT_RNG) ? rng_u64() : clock_wall_ns();
  Recovery rec{&index, 0};
  Journal::OpenResult res = journal.open(new_id | 1, recover_record, &rec);
  if (res != Journal::OpenResult::kRecovered && res != Journal::OpenResult::kFormatted) {
    con_printf("mailstore: journal: %s\n", open_result_name(res));
    return kExitFailed;
  }
  con_printf("mailstore: journal %s id=%016lx records=%lu next_sector=%lu stop=%s skipped=%lu\n",
             open_result_name(res), journal.journal_id(), journal.records(), journal.next_sector(),
             journal.stop_reason(), rec.skipped);

  net::NetConfig cfg = {};
  memcpy(cfg.mac, g_net.mac(), 6);
  cfg.ip = ip;
  cfg.netmask = mask;
  cfg.gateway = gw;
  MailServer server(&index, &journal);
  net::NetStack stack(cfg, &g_net);
  MailUdp udp(&server);
  stack.bind_udp(FTVM_MAIL_PORT, &udp);
  stack.announce();
  g_net.flush_tx();

  const uint8_t* m = cfg.mac;
  con_printf("mailstore: ready ip=%u.%u.%u.%u mac=%02x:%02x:%02x:%02x:%02x:%02x messages=%lu\n",
             ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255, m[0], m[1], m[2], m[3], m[4],
             m[5], index.messages());

  Heartbeat heartbeat;
  heartbeat.start(beat_ms);
  for (;;) {
    // Taken before looking for work: an interrupt after it (the heartbeat's timer,
    // a frame) ends the idle wait below at once.
    const uint64_t snapshot = irq_total();
    heartbeat.poll();
    if (hang_after_ms != 0 && heartbeat.ticks() * beat_ms >= hang_after_ms) hang_forever("mailstore");
    unsigned n = g_net.poll_rx(on_frame, &stack, kBatch);
    if (!server.commit()) {
      // Nothing of this batch may be acknowledged, and the journal's state on
      // disk is unknown: stop rather than serve on a failing disk.
      con_printf("mailstore: journal write failed; stopping\n");
      return kExitFailed;
    }
    udp.send_all(&stack);
    g_net.flush_tx();
    if (n == kBatch) continue;  // more frames are probably waiting
    if (heartbeat.on()) {
      g_net.wait_rx_since(snapshot);
    } else {
      g_net.wait_rx();
    }
  }
}

}  // namespace ftvm::guest
