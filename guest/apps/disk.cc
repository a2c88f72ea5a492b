// app=disk ops=N seed=S batch=B blocks=K: random 4 KiB block reads and writes on
// the virtio disk, verified against what this run wrote. Each written block
// carries {magic, block number, generation, crc32} and a payload derived from
// (seed, block, generation), so a read proves both placement and content.
// Requests go to the device in batches of B per notify. Deterministic for a seed.
#include <stdint.h>

#include "guest/apps/app.h"
#include "guest/lib/arena.h"
#include "guest/lib/console.h"
#include "guest/lib/crc32.h"
#include "guest/lib/virtio_blk.h"

namespace ftvm::guest {
namespace {

constexpr uint32_t kBlockBytes = 4096;
constexpr uint32_t kSectorsPerBlock = kBlockBytes / VIRTIO_BLK_SECTOR_SIZE;
constexpr uint32_t kBlockMagic = 0x4b534944;  // "DISK"
constexpr unsigned kMaxBatch = 64;

struct BlockHeader {
  uint32_t magic;
  uint32_t block;
  uint32_t gen;
  uint32_t crc;  // of the payload after the header
};

uint64_t splitmix64(uint64_t* s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void fill_block(uint8_t* buf, uint64_t seed, uint32_t block, uint32_t gen) {
  uint64_t s = seed ^ (static_cast<uint64_t>(block) << 32) ^ gen;
  auto* words = reinterpret_cast<uint64_t*>(buf + sizeof(BlockHeader));
  for (size_t i = 0; i < (kBlockBytes - sizeof(BlockHeader)) / 8; ++i) words[i] = splitmix64(&s);
  BlockHeader h{kBlockMagic, block, gen, crc32(buf + sizeof h, kBlockBytes - sizeof h)};
  memcpy(buf, &h, sizeof h);
}

// Checks a block read back; prints the first few mismatches.
bool verify_block(const uint8_t* buf, uint8_t* scratch, uint64_t seed, uint32_t block, uint32_t gen,
                  uint64_t* reported) {
  fill_block(scratch, seed, block, gen);
  if (memcmp(buf, scratch, kBlockBytes) == 0) return true;
  if ((*reported)++ < 5) {
    BlockHeader h;
    memcpy(&h, buf, sizeof h);
    con_printf("disk: block %u mismatch: want gen %u, got magic=0x%x block=%u gen=%u crc_ok=%d\n", block,
               gen, h.magic, h.block, h.gen,
               h.crc == crc32(buf + sizeof h, kBlockBytes - sizeof h) ? 1 : 0);
  }
  return false;
}

VirtioBlk g_blk;

struct Op {
  BlkRequest req;
  uint32_t block;
  uint32_t gen;  // expected (read) or written (write)
  bool write;
};

}  // namespace

int app_disk(const Args& args) {
  bool ok[4];
  uint64_t ops = args.get_u64("ops", 200, &ok[0]);
  uint64_t seed = args.get_u64("seed", 1, &ok[1]);
  uint64_t batch = args.get_u64("batch", 16, &ok[2]);
  uint64_t want_blocks = args.get_u64("blocks", 1024, &ok[3]);
  if (!ok[0] || !ok[1] || !ok[2] || !ok[3] || batch == 0 || batch > kMaxBatch || want_blocks == 0) {
    con_printf("disk: bad ops= seed= batch= (1..%u) or blocks=\n", kMaxBatch);
    return kExitBadSetup;
  }
  VirtioBlk& blk = g_blk;
  if (!blk.init(arena())) {
    con_printf("disk: no virtio-blk device: %s\n", blk.error());
    return kExitBadSetup;
  }
  uint64_t blocks = blk.capacity_sectors() / kSectorsPerBlock;
  if (blocks > want_blocks) blocks = want_blocks;
  if (blocks < batch) {
    con_printf("disk: disk too small (%lu sectors)\n", blk.capacity_sectors());
    return kExitBadSetup;
  }
  auto* gens = arena().alloc_array<uint32_t>(blocks);  // 0 = not written by this run
  auto* written = arena().alloc_array<uint32_t>(blocks);  // blocks with gens != 0
  uint64_t nwritten = 0;
  auto* bufs = static_cast<uint8_t*>(arena().alloc(kBlockBytes * (batch + 1), 4096));
  Op* batch_ops = arena().alloc_array<Op>(batch);
  if (gens == nullptr || written == nullptr || bufs == nullptr || batch_ops == nullptr) {
    con_printf("disk: out of memory\n");
    return kExitBadSetup;
  }
  uint8_t* scratch = bufs + kBlockBytes * batch;
  uint64_t rng = seed;
  uint64_t reads = 0, writes = 0, verified = 0, errors = 0, io_errors = 0, reported = 0;

  for (uint64_t done = 0; done < ops;) {
    unsigned n = 0;
    for (; n < batch && done < ops; ++n, ++done) {
      // Half reads (of blocks this run wrote), half writes (anywhere). A block at
      // most once per batch: requests in flight together have no defined order.
      bool write = nwritten == 0 || (splitmix64(&rng) & 1) != 0;
      uint32_t b = 0;
      for (int attempt = 0;; ++attempt) {
        if (attempt == 8) write = true;  // reads keep colliding: write instead
        b = static_cast<uint32_t>(write ? splitmix64(&rng) % blocks
                                        : written[splitmix64(&rng) % nwritten]);
        bool dup = false;
        for (unsigned k = 0; k < n; ++k) dup |= batch_ops[k].block == b;
        if (!dup) break;
      }
      Op& op = batch_ops[n];
      op.block = b;
      op.write = write;
      if (write && gens[b] == 0) written[nwritten++] = b;
      uint8_t* buf = bufs + kBlockBytes * n;
      if (op.write) {
        op.gen = ++gens[b];
        fill_block(buf, seed, b, op.gen);
        blk.submit_write(&op.req, static_cast<uint64_t>(b) * kSectorsPerBlock, buf, kBlockBytes);
        ++writes;
      } else {
        op.gen = gens[b];
        blk.submit_read(&op.req, static_cast<uint64_t>(b) * kSectorsPerBlock, buf, kBlockBytes);
        ++reads;
      }
    }
    blk.complete_all();  // one notify for the whole batch
    for (unsigned k = 0; k < n; ++k) {
      Op& op = batch_ops[k];
      if (!op.req.ok()) {
        ++io_errors;
        continue;
      }
      if (op.write) continue;
      if (verify_block(bufs + kBlockBytes * k, scratch, seed, op.block, op.gen, &reported)) {
        ++verified;
      } else {
        ++errors;
      }
    }
  }
  if (!blk.flush()) ++io_errors;

  // Final pass: every block written in this run reads back as its last write.
  for (uint32_t b = 0; b < blocks;) {
    unsigned n = 0;
    for (; n < batch && b < blocks; ++b) {
      if (gens[b] == 0) continue;
      Op& op = batch_ops[n];
      op.block = b;
      op.gen = gens[b];
      blk.submit_read(&op.req, static_cast<uint64_t>(b) * kSectorsPerBlock, bufs + kBlockBytes * n,
                      kBlockBytes);
      ++n;
    }
    if (n == 0) break;
    blk.complete_all();
    for (unsigned k = 0; k < n; ++k) {
      Op& op = batch_ops[k];
      if (!op.req.ok()) {
        ++io_errors;
      } else if (verify_block(bufs + kBlockBytes * k, scratch, seed, op.block, op.gen, &reported)) {
        ++verified;
      } else {
        ++errors;
      }
    }
  }
  errors += io_errors;
  con_printf("disk: ops=%lu verified=%lu errors=%lu reads=%lu writes=%lu io_errors=%lu notifies=%lu\n",
             ops, verified, errors, reads, writes, io_errors, blk.notifies());
  return errors == 0 ? kExitOk : kExitFailed;
}

}  // namespace ftvm::guest
