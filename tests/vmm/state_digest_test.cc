// The digests primary and replica compare (MemoryDigest, Sha256, StateDigest,
// DigestHex) and the canonical register encoding they cover (VcpuRegs).
#include "vmm/state_digest.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <xxhash.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "vmm/cpu_backend.h"
#include "vmm/guest_memory.h"
#include "vmm/page_bitmap.h"

namespace ftvm::vmm {
namespace {

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// ---- MemoryDigest ---------------------------------------------------------------

constexpr uint64_t kPages = 1024;  // 4 MiB

class MemoryDigestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::mt19937_64 rng(7);
    for (uint64_t i = 0; i < mem.size() / 8; ++i)
      if (rng() % 3 == 0) reinterpret_cast<uint64_t*>(mem.host_base())[i] = rng();
  }
  // Writes random bytes into `n` random pages; returns which.
  PageBitmap Scribble(std::mt19937_64& rng, int n) {
    PageBitmap b(kPages);
    for (int i = 0; i < n; ++i) {
      const uint64_t p = rng() % kPages;
      const uint64_t off = rng() % (kPageSize - 8);
      const uint64_t v = rng() | 1;
      std::memcpy(mem.host_base() + p * kPageSize + off, &v, sizeof v);
      b.set(p);
    }
    return b;
  }

  GuestMemory mem = GuestMemory::Create(kPages * kPageSize);
};

// Pages the guest never wrote are holes in the memfd: the digest counts them as
// zero pages without reading them, so they stay unallocated, and the result is the
// same as hashing every page.
TEST(MemoryDigestHoles, UntouchedPagesAreHashedAsZerosWithoutBeingAllocated) {
  GuestMemory sparse = GuestMemory::Create(kPages * kPageSize);
  for (uint64_t p : {0ull, 1ull, 2ull, 500ull, 1023ull}) sparse.host_base()[p * kPageSize + 17] = uint8_t(p + 1);
  struct stat before {};
  ASSERT_EQ(fstat(sparse.fd(), &before), 0);
  MemoryDigest d(sparse);
  struct stat after {};
  ASSERT_EQ(fstat(sparse.fd(), &after), 0);
  EXPECT_EQ(after.st_blocks, before.st_blocks) << "hashing allocated untouched pages";
  EXPECT_LE(uint64_t(after.st_blocks) * 512, 5 * kPageSize);
  // The same sums as reading every page.
  uint64_t lo = 0, hi = 0;
  for (uint64_t p = 0; p < kPages; ++p) {
    XXH128_hash_t h = XXH3_128bits_withSeed(sparse.host_base() + p * kPageSize, kPageSize, p);
    lo += h.low64;
    hi += h.high64;
  }
  MemorySum want;
  for (int i = 0; i < 8; ++i) want[i] = uint8_t(lo >> (8 * i)), want[8 + i] = uint8_t(hi >> (8 * i));
  EXPECT_EQ(d.value(), want);
}

TEST_F(MemoryDigestTest, SameMemorySameDigest) {
  MemoryDigest a(mem), b(mem);
  EXPECT_EQ(a.pages(), kPages);
  EXPECT_EQ(a.value(), b.value());
  a.update(PageBitmap(kPages));  // nothing to rehash
  EXPECT_EQ(a.value(), b.value());
}

TEST_F(MemoryDigestTest, ACopyIntoStorageIsTheSameDigestAndKeepsUpdating) {
  std::mt19937_64 rng(7);
  Scribble(rng, 20);
  MemoryDigest original(mem);
  MemoryDigest copy(mem, MemoryDigest::Unfilled{});
  copy.copy_from(original);
  EXPECT_EQ(copy.value(), original.value());
  for (uint64_t p = 0; p < kPages; ++p) ASSERT_EQ(copy.page_hash32(p), original.page_hash32(p)) << "page " << p;
  // The copy is a digest like any other: told of new writes, it follows them.
  PageBitmap written = Scribble(rng, 5);
  copy.update(written);
  EXPECT_EQ(copy.value(), MemoryDigest(mem).value());
  EXPECT_NE(copy.value(), original.value());
  // Only a digest of memory of the same size fits.
  GuestMemory other = GuestMemory::Create((kPages + 1) * kPageSize);
  MemoryDigest wrong(other, MemoryDigest::Unfilled{});
  EXPECT_THROW(wrong.copy_from(original), Error);
}

TEST_F(MemoryDigestTest, UpdateWithTheWrittenPagesEqualsAFreshDigest) {
  MemoryDigest d(mem);
  std::mt19937_64 rng(99);
  for (int round = 0; round < 10; ++round) {
    const MemorySum before = d.value();
    PageBitmap written = Scribble(rng, 1 + int(rng() % 40));
    d.update(written);
    EXPECT_NE(d.value(), before) << "round " << round;
    EXPECT_EQ(d.value(), MemoryDigest(mem).value()) << "round " << round;
  }
}

TEST_F(MemoryDigestTest, UpdateWithASupersetEqualsAFreshDigest) {
  MemoryDigest d(mem);
  std::mt19937_64 rng(5);
  PageBitmap written = Scribble(rng, 20);
  PageBitmap superset = written;
  for (uint64_t p = 0; p < kPages; p += 7) superset.set(p);
  d.update(superset);
  EXPECT_EQ(d.value(), MemoryDigest(mem).value());
  // All pages, and again (an unchanged page rehashed changes nothing).
  PageBitmap all(kPages);
  all.set_range(0, mem.size());
  Scribble(rng, 3);
  d.update(all);
  d.update(all);
  EXPECT_EQ(d.value(), MemoryDigest(mem).value());
}

TEST_F(MemoryDigestTest, AChangeNotToldIsNotSeenAndOneToldIs) {
  MemoryDigest d(mem);
  const MemorySum original = d.value();
  uint8_t& byte = mem.host_base()[37 * kPageSize + 5];
  const uint8_t old = byte;
  byte = uint8_t(old ^ 0x40);
  EXPECT_EQ(d.value(), original) << "value() must not rehash by itself";
  EXPECT_NE(MemoryDigest(mem).value(), original);
  PageBitmap other(kPages);
  other.set(36);
  other.set(38);
  d.update(other);
  EXPECT_EQ(d.value(), original) << "neighbouring pages rehashed: still the stale value";
  PageBitmap told(kPages);
  told.set(37);
  d.update(told);
  EXPECT_NE(d.value(), original);
  EXPECT_EQ(d.value(), MemoryDigest(mem).value());
  // Writing the old byte back and telling brings the original value back.
  byte = old;
  d.update(told);
  EXPECT_EQ(d.value(), original);
}

TEST_F(MemoryDigestTest, PageHashesMatchCurrentContents) {
  MemoryDigest d(mem);
  for (uint64_t p : {uint64_t(0), uint64_t(1), uint64_t(500), kPages - 1}) EXPECT_EQ(d.page_hash32(p), d.current_hash32(p));
  mem.host_base()[500 * kPageSize] ^= 1;
  EXPECT_NE(d.page_hash32(500), d.current_hash32(500)) << "the stored hash is the one from the last update";
  PageBitmap b(kPages);
  b.set(500);
  d.update(b);
  EXPECT_EQ(d.page_hash32(500), d.current_hash32(500));
}

TEST_F(MemoryDigestTest, PageNumberIsPartOfTheHash) {
  // Two pages with the same contents hash differently, so moving a page's contents
  // elsewhere (or swapping two pages) changes the digest.
  std::memset(mem.host_base() + 10 * kPageSize, 0xaa, kPageSize);
  std::memset(mem.host_base() + 11 * kPageSize, 0xaa, kPageSize);
  MemoryDigest d(mem);
  EXPECT_NE(d.page_hash32(10), d.page_hash32(11));
  std::memset(mem.host_base() + 20 * kPageSize, 0x11, kPageSize);
  std::memset(mem.host_base() + 21 * kPageSize, 0x22, kPageSize);
  const MemorySum before = MemoryDigest(mem).value();
  std::memset(mem.host_base() + 20 * kPageSize, 0x22, kPageSize);
  std::memset(mem.host_base() + 21 * kPageSize, 0x11, kPageSize);
  EXPECT_NE(MemoryDigest(mem).value(), before);
}

TEST_F(MemoryDigestTest, PagesOutsideMemoryAreIgnored) {
  MemoryDigest d(mem);
  const MemorySum v = d.value();
  PageBitmap big(kPages * 2);
  big.set(kPages);
  big.set(kPages * 2 - 1);
  d.update(big);
  EXPECT_EQ(d.value(), v);
}

// ---- Sha256, StateDigest, DigestHex ---------------------------------------------

TEST(Sha256, KnownVectors) {
  EXPECT_EQ(DigestHex(Sha256({})), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(DigestHex(Sha256(Bytes("abc"))), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(DigestHex(Sha256(Bytes("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"))),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  std::string million(1000000, 'a');
  EXPECT_EQ(DigestHex(Sha256(Bytes(million))), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(DigestHex, LowercaseTwoDigitsPerByte) {
  const uint8_t b[] = {0x00, 0x0f, 0xa0, 0xff, 0x5c};
  EXPECT_EQ(DigestHex(b), "000fa0ff5c");
  EXPECT_EQ(DigestHex({}), "");
}

TEST(StateDigest, IsSha256OfPositionRegsDevicesAndMemory) {
  const std::string regs(VcpuRegs::kEncodedBytes, 'r');
  const std::string devices = "device state";
  MemorySum memory;
  for (size_t i = 0; i < memory.size(); ++i) memory[i] = uint8_t(0xf0 + i);
  const uint64_t position = 0x0102030405060708ull;
  std::string all = "\x08\x07\x06\x05\x04\x03\x02\x01";  // position, little-endian
  all += regs + devices;
  all.append(reinterpret_cast<const char*>(memory.data()), memory.size());
  EXPECT_EQ(StateDigest(position, Bytes(regs), Bytes(devices), memory), Sha256(Bytes(all)));
}

TEST(StateDigest, EveryInputChangesIt) {
  const std::string regs(VcpuRegs::kEncodedBytes, 'r');
  const std::string devices = "dev";
  MemorySum memory{};
  const Sha256Digest base = StateDigest(5, Bytes(regs), Bytes(devices), memory);
  EXPECT_EQ(StateDigest(5, Bytes(regs), Bytes(devices), memory), base);
  EXPECT_NE(StateDigest(6, Bytes(regs), Bytes(devices), memory), base);
  EXPECT_NE(StateDigest(5ull << 56, Bytes(regs), Bytes(devices), memory), base);
  std::string regs2 = regs;
  regs2[100] = 's';
  EXPECT_NE(StateDigest(5, Bytes(regs2), Bytes(devices), memory), base);
  EXPECT_NE(StateDigest(5, Bytes(regs), Bytes("dew"), memory), base);
  MemorySum memory2 = memory;
  memory2[15] = 1;
  EXPECT_NE(StateDigest(5, Bytes(regs), Bytes(devices), memory2), base);
}

// ---- VcpuRegs ------------------------------------------------------------------

// Every field distinct and using all of its bytes.
VcpuRegs SampleRegs() {
  VcpuRegs r;
  uint64_t v = 0x1122334455667788ull;
  auto next = [&] { return v = v * 6364136223846793005ull + 1442695040888963407ull; };
  for (auto& g : r.gpr) g = next();
  r.rip = next();
  r.rflags = next();
  r.cr0 = next();
  r.cr2 = next();
  r.cr3 = next();
  r.cr4 = next();
  r.efer = next();
  for (auto& s : r.selector) s = uint16_t(next());
  r.fs_base = next();
  r.gs_base = next();
  r.gdt_base = next();
  r.idt_base = next();
  r.gdt_limit = uint16_t(next());
  r.idt_limit = uint16_t(next());
  r.tr_selector = uint16_t(next());
  r.tr_base = next();
  for (auto& x : r.xmm) {
    x[0] = next();
    x[1] = next();
  }
  r.mxcsr = uint32_t(next());
  return r;
}

uint64_t LoadLe(const std::vector<uint8_t>& b, size_t at, size_t bytes) {
  uint64_t v = 0;
  for (size_t i = 0; i < bytes; ++i) v |= uint64_t(b.at(at + i)) << (8 * i);
  return v;
}

TEST(VcpuRegs, EncodingHasTheDocumentedSizeAndLayout) {
  EXPECT_EQ(VcpuRegs::kEncodedBytes, 502u);
  EXPECT_EQ(VcpuRegs().encode().size(), VcpuRegs::kEncodedBytes);
  EXPECT_EQ(VcpuRegs().encode(), std::vector<uint8_t>(VcpuRegs::kEncodedBytes, 0));
  const VcpuRegs r = SampleRegs();
  const std::vector<uint8_t> e = r.encode();
  ASSERT_EQ(e.size(), VcpuRegs::kEncodedBytes);
  // Little-endian, fields in declaration order, no padding.
  for (int i = 0; i < 16; ++i) EXPECT_EQ(LoadLe(e, 8 * size_t(i), 8), r.gpr[i]) << "gpr " << i;
  EXPECT_EQ(LoadLe(e, 128, 8), r.rip);
  EXPECT_EQ(LoadLe(e, 136, 8), r.rflags);
  EXPECT_EQ(LoadLe(e, 144, 8), r.cr0);
  EXPECT_EQ(LoadLe(e, 152, 8), r.cr2);
  EXPECT_EQ(LoadLe(e, 160, 8), r.cr3);
  EXPECT_EQ(LoadLe(e, 168, 8), r.cr4);
  EXPECT_EQ(LoadLe(e, 176, 8), r.efer);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(LoadLe(e, 184 + 2 * size_t(i), 2), r.selector[i]) << "selector " << i;
  EXPECT_EQ(LoadLe(e, 196, 8), r.fs_base);
  EXPECT_EQ(LoadLe(e, 204, 8), r.gs_base);
  EXPECT_EQ(LoadLe(e, 212, 8), r.gdt_base);
  EXPECT_EQ(LoadLe(e, 220, 8), r.idt_base);
  EXPECT_EQ(LoadLe(e, 228, 2), r.gdt_limit);
  EXPECT_EQ(LoadLe(e, 230, 2), r.idt_limit);
  EXPECT_EQ(LoadLe(e, 232, 2), r.tr_selector);
  EXPECT_EQ(LoadLe(e, 234, 8), r.tr_base);
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(LoadLe(e, 242 + 16 * size_t(i), 8), r.xmm[i][0]) << "xmm" << i;
    EXPECT_EQ(LoadLe(e, 250 + 16 * size_t(i), 8), r.xmm[i][1]) << "xmm" << i;
  }
  EXPECT_EQ(LoadLe(e, 498, 4), r.mxcsr);
}

TEST(VcpuRegs, DecodeInvertsEncode) {
  const VcpuRegs r = SampleRegs();
  std::optional<VcpuRegs> d = VcpuRegs::decode(r.encode());
  ASSERT_TRUE(d.has_value());
  EXPECT_TRUE(*d == r);
  EXPECT_EQ(VcpuRegs::first_difference(*d, r), "");
  std::optional<VcpuRegs> zero = VcpuRegs::decode(VcpuRegs().encode());
  ASSERT_TRUE(zero.has_value());
  EXPECT_TRUE(*zero == VcpuRegs());
}

TEST(VcpuRegs, DecodeRejectsWrongSizes) {
  std::vector<uint8_t> e = SampleRegs().encode();
  EXPECT_FALSE(VcpuRegs::decode({}).has_value());
  EXPECT_FALSE(VcpuRegs::decode(std::span<const uint8_t>(e).first(e.size() - 1)).has_value());
  e.push_back(0);
  EXPECT_FALSE(VcpuRegs::decode(e).has_value());
}

TEST(VcpuRegs, EveryEncodedByteBelongsToAField) {
  // Flip each byte of the encoding: the decoded registers differ, first_difference
  // names a field, and encoding them again gives exactly the flipped bytes.
  const VcpuRegs r = SampleRegs();
  const std::vector<uint8_t> e = r.encode();
  for (size_t i = 0; i < e.size(); ++i) {
    std::vector<uint8_t> f = e;
    f[i] ^= 0xff;
    std::optional<VcpuRegs> d = VcpuRegs::decode(f);
    ASSERT_TRUE(d.has_value());
    ASSERT_FALSE(*d == r) << "byte " << i;
    ASSERT_NE(VcpuRegs::first_difference(*d, r), "") << "byte " << i;
    ASSERT_EQ(d->encode(), f) << "byte " << i;
  }
}

TEST(VcpuRegs, FirstDifferenceNamesTheFirstDifferingField) {
  VcpuRegs recorded;
  recorded.rip = 0x1000;
  VcpuRegs mine = recorded;
  EXPECT_EQ(VcpuRegs::first_difference(mine, recorded), "");
  mine.rip = 0x1004;
  EXPECT_EQ(VcpuRegs::first_difference(mine, recorded), "rip 0x1004 (recorded 0x1000)");
  mine.mxcsr = 0x1f80;
  mine.xmm[3][1] = 7;
  EXPECT_EQ(VcpuRegs::first_difference(mine, recorded), "rip 0x1004 (recorded 0x1000)") << "rip comes first";
  mine.gpr[VcpuRegs::kR9] = 0xffffffffffffffffull;
  EXPECT_EQ(VcpuRegs::first_difference(mine, recorded), "r9 0xffffffffffffffff (recorded 0x0)");

  auto only = [&](auto set) {
    VcpuRegs a;
    set(a);
    return VcpuRegs::first_difference(a, VcpuRegs());
  };
  EXPECT_EQ(only([](VcpuRegs& a) { a.gpr[VcpuRegs::kRax] = 1; }), "rax 0x1 (recorded 0x0)");
  EXPECT_EQ(only([](VcpuRegs& a) { a.gpr[VcpuRegs::kR15] = 2; }), "r15 0x2 (recorded 0x0)");
  EXPECT_EQ(only([](VcpuRegs& a) { a.rflags = 0x202; }), "rflags 0x202 (recorded 0x0)");
  EXPECT_EQ(only([](VcpuRegs& a) { a.cr2 = 0xdead; }), "cr2 0xdead (recorded 0x0)");
  EXPECT_EQ(only([](VcpuRegs& a) { a.efer = 0x500; }), "efer 0x500 (recorded 0x0)");
  EXPECT_EQ(only([](VcpuRegs& a) { a.selector[1] = 0x10; }), "ss 0x10 (recorded 0x0)");
  EXPECT_EQ(only([](VcpuRegs& a) { a.selector[5] = 0x2b; }), "gs 0x2b (recorded 0x0)");
  EXPECT_EQ(only([](VcpuRegs& a) { a.fs_base = 0x7000; }), "fs_base 0x7000 (recorded 0x0)");
  EXPECT_EQ(only([](VcpuRegs& a) { a.idt_limit = 0xfff; }), "idt_limit 0xfff (recorded 0x0)");
  EXPECT_EQ(only([](VcpuRegs& a) { a.tr_selector = 0x28; }), "tr 0x28 (recorded 0x0)");
  EXPECT_EQ(only([](VcpuRegs& a) { a.tr_base = 0x9000; }), "tr_base 0x9000 (recorded 0x0)");
  EXPECT_EQ(only([](VcpuRegs& a) { a.xmm[15][1] = 3; }), "xmm15.hi 0x3 (recorded 0x0)");
  EXPECT_EQ(only([](VcpuRegs& a) { a.xmm[0][0] = 4; }), "xmm0.lo 0x4 (recorded 0x0)");
  EXPECT_EQ(only([](VcpuRegs& a) { a.mxcsr = 0x1f80; }), "mxcsr 0x1f80 (recorded 0x0)");
}

}  // namespace
}  // namespace ftvm::vmm
