// Fuzz target for the device side of a split virtqueue (vmm/devices/virtqueue.h):
// the guest writes descriptor tables, rings and indices into its RAM, and the VMM
// walks them. A malformed ring must break the queue, never make the VMM touch memory
// outside guest RAM.
//
// Input: a 32-byte queue layout (u16 size, u16 max size, u32 descriptor table, u32
// driver area and u32 device area addresses, a flags byte: event index, which
// operations to try; at +22 a u16 length N), then N bytes of a checkpoint's
// snapshot::Virtqueue which, when N is not 0, sets the queue up instead of the
// layout (Virtqueue::restore), then the guest RAM image (64 KiB of RAM: the input's
// rest at address 0, zeros after it).
// Invariants: every buffer of a chain lies inside guest RAM, readable ones before
// writable ones, and the byte counts add up; the iovec helpers copy exactly what the
// chain holds; a queue that broke says why and gives nothing more; a queue saved and
// restored saves the same again.
#include <cstring>

#include "common/error.h"
#include "eventlog/format.h"
#include "fuzz/harness.h"
#include "vmm/abi/ftvm_abi.h"
#include "vmm/devices/virtqueue.h"
#include "vmm/snapshot.pb.h"

namespace {

using namespace ftvm;
using namespace ftvm::vmm;
using fuzz::Require;

constexpr uint64_t kRamBytes = 64u << 10;
constexpr size_t kLayoutBytes = 32;
constexpr int kMaxPops = 80;

bool InRam(const GuestMemory& mem, const iovec& v) {
  const auto* p = static_cast<const uint8_t*>(v.iov_base);
  return p >= mem.host_base() && v.iov_len <= mem.size() && p - mem.host_base() <= int64_t(mem.size() - v.iov_len);
}

void CheckChain(GuestMemory& mem, const DescChain& chain, uint16_t size) {
  Require(chain.head < size, "the head is a descriptor of the queue");
  uint64_t readable = 0, writable = 0;
  for (const iovec& v : chain.readable) {
    Require(InRam(mem, v), "a readable buffer lies inside guest RAM");
    readable += v.iov_len;
  }
  for (const iovec& v : chain.writable) {
    Require(InRam(mem, v), "a writable buffer lies inside guest RAM");
    writable += v.iov_len;
  }
  Require(readable == chain.readable_bytes && writable == chain.writable_bytes, "byte counts add up");
  // What a device does with a chain: read the request, write the answer.
  std::vector<uint8_t> copy(std::min<uint64_t>(chain.readable_bytes, 1u << 20));
  Require(CopyFromIov(chain.readable, 0, copy.data(), copy.size()) == copy.size(), "the readable part copies out");
  const size_t answer = std::min<uint64_t>(chain.writable_bytes, 1u << 20);
  std::vector<uint8_t> zeros(answer + 1);
  Require(CopyToIov(chain.writable, 0, zeros.data(), zeros.size()) == answer, "the writable part takes its size");
  std::vector<iovec> slice;
  Require(SliceIov(chain.writable, answer / 2, answer, slice) == answer - answer / 2, "a slice ends with the list");
}

void Run(std::span<const uint8_t> input) {
  if (input.size() < kLayoutBytes) return;
  using eventlog::GetLe16;
  using eventlog::GetLe32;
  const uint16_t size = GetLe16(input.data());
  const uint16_t max_size = std::max<uint16_t>(1, GetLe16(input.data() + 2));
  const uint8_t flags = input[16];
  // A checkpoint's queue state (the primary's, so outside input too) may come first.
  const size_t state_bytes = std::min<size_t>(GetLe16(input.data() + 22), input.size() - kLayoutBytes);
  const std::span<const uint8_t> state = input.subspan(kLayoutBytes, state_bytes);
  const std::span<const uint8_t> image = input.subspan(kLayoutBytes + state_bytes);
  GuestMemory mem = GuestMemory::Create(kRamBytes);
  mem.write(0, image.data(), std::min<uint64_t>(image.size(), kRamBytes));

  Virtqueue q(mem, max_size);
  if (snapshot::Virtqueue checkpoint; state_bytes > 0) {
    if (!fuzz::ParseProto(state, checkpoint)) return;
    q.restore(checkpoint);
    if (!q.ready() || q.broken()) return;
    Require(q.size() == checkpoint.size() && q.last_avail_idx() == checkpoint.last_avail() &&
                q.used_idx() == checkpoint.used_idx(),
            "a restored queue has the checkpoint's size and indices");
  } else {
    q.set_size(size);
    q.set_desc_gpa(GetLe32(input.data() + 4));
    q.set_driver_gpa(GetLe32(input.data() + 8));
    q.set_device_gpa(GetLe32(input.data() + 12));
    q.set_event_idx(flags & 1);
    if (!q.activate()) {
      Require(q.broken() && !q.error().empty() && !q.ready(), "a queue that cannot start says why");
      return;
    }
    if (flags & 2) q.restore_indices(GetLe16(input.data() + 18), GetLe16(input.data() + 20));
  }
  Require(q.size() <= max_size && std::has_single_bit(q.size()), "an active queue has a valid size");
  DescChain chain;
  for (int n = 0; n < kMaxPops; ++n) {
    if (flags & 4) (n % 2 ? q.enable_notifications() : q.disable_notifications());
    const bool available = q.has_available();
    const PopResult r = q.pop(chain);
    if (r == PopResult::kBroken) {
      Require(q.broken() && !q.error().empty(), "a broken queue says why");
      Require(q.pop(chain) == PopResult::kBroken && !q.has_available(), "a broken queue stays broken");
      break;
    }
    Require((r == PopResult::kChain) == available, "pop finds a chain exactly when one is available");
    if (r == PopResult::kEmpty) break;
    CheckChain(mem, chain, q.size());
    if ((flags & 8) && n % 3 == 0) {
      q.unpop();
      continue;
    }
    q.push(chain.head, static_cast<uint32_t>(std::min<uint64_t>(chain.writable_bytes, UINT32_MAX)));
    q.needs_interrupt();
  }

  snapshot::Virtqueue saved;
  q.save(saved);
  Virtqueue restored(mem, max_size);
  restored.restore(saved);
  snapshot::Virtqueue again;
  restored.save(again);
  Require(again.SerializeAsString() == saved.SerializeAsString(), "a restored queue saves the same");
}

// A well-formed queue of 8..64 entries with a few chains made available.
std::vector<uint8_t> Seed(std::minstd_rand& rng) {
  const uint16_t size = uint16_t(8) << (rng() % 4);
  // The areas in the image (kept short: libFuzzer's inputs are a few KiB), the
  // buffers in RAM beyond it.
  const uint32_t desc = 0x40, driver = 0x480, device = 0x600, buffers = 0x1000;
  std::vector<uint8_t> out;
  fuzz::AppendLe(out, size, 2);
  fuzz::AppendLe(out, 256, 2);
  fuzz::AppendLe(out, desc, 4);
  fuzz::AppendLe(out, driver, 4);
  fuzz::AppendLe(out, device, 4);
  out.push_back(static_cast<uint8_t>(rng() % 16));
  out.resize(kLayoutBytes);
  std::vector<uint8_t> ram(device + 6 + 8 * size + 2);
  const uint16_t chains = uint16_t(1 + rng() % std::min<uint16_t>(size / 2, 6));
  uint16_t next_desc = 0;
  for (uint16_t c = 0; c < chains; ++c) {
    const uint16_t head = next_desc;
    const int links = 1 + int(rng() % 2);
    for (int l = 0; l < links; ++l, ++next_desc) {
      virtq_desc d{};
      d.addr = buffers + 512 * (rng() % 100);
      d.len = 16 + uint32_t(rng() % 480);
      d.flags = uint16_t((l + 1 < links ? VIRTQ_DESC_F_NEXT : 0) | (l == links - 1 ? VIRTQ_DESC_F_WRITE : 0));
      d.next = uint16_t(next_desc + 1);
      std::memcpy(ram.data() + desc + 16 * next_desc, &d, sizeof d);
    }
    eventlog::PutLe16(ram.data() + driver + 4 + 2 * c, head);
  }
  eventlog::PutLe16(ram.data() + driver + 2, chains);
  if (rng() % 4 == 0) {  // the same queue as a checkpoint restores it
    snapshot::Virtqueue state;
    state.set_size(size);
    state.set_desc_gpa(desc);
    state.set_driver_gpa(driver);
    state.set_device_gpa(device);
    state.set_ready(true);
    const std::string bytes = state.SerializeAsString();
    eventlog::PutLe16(out.data() + 22, uint16_t(bytes.size()));
    out.insert(out.end(), bytes.begin(), bytes.end());
  }
  out.insert(out.end(), ram.begin(), ram.end());
  return out;
}

}  // namespace

const ftvm::fuzz::Target ftvm::fuzz::kTarget = {"virtqueue", Run, Seed, nullptr};
