// Host tests of the guest kit's freestanding library parts and the compute core.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "guest/apps/compute_core.h"
#include "guest/lib/args.h"
#include "guest/lib/crc32.h"
#include "guest/lib/fmt.h"
#include "guest/lib/str.h"

namespace ftvm::guest {
namespace {

template <typename... A>
std::string Fmt(const char* f, A... a) {
  char buf[256];
  size_t n = fmt_snprintf(buf, sizeof buf, f, a...);
  EXPECT_EQ(n, strlen(buf));
  return buf;
}

// Our formatter must agree with the C library for everything it supports.
template <typename... A>
void ExpectLikeLibc(const char* f, A... a) {
  char want[256];
  snprintf(want, sizeof want, f, a...);
  EXPECT_EQ(Fmt(f, a...), want) << "format: " << f;
}

TEST(Fmt, MatchesLibc) {
  ExpectLikeLibc("%d %i %u", -42, 7, 3000000000u);
  ExpectLikeLibc("%x %X %08x %-6x|", 0xbeefu, 0xbeefu, 0x12u, 0xabu);
  ExpectLikeLibc("%lx %lu %ld", 0xffffffffffffffffUL, 18446744073709551615UL, -9223372036854775807L - 1);
  ExpectLikeLibc("%llu %llx", 12345678901234ULL, 0xdeadbeefcafeULL);
  ExpectLikeLibc("%016lx", 0x1234UL);
  ExpectLikeLibc("%5d|%-5d|%05d|%05d", 42, 42, 42, -42);
  ExpectLikeLibc("%s|%10s|%-10s|%.3s|%.*s", "abc", "abc", "abc", "abcdef", 2, "xyz");
  ExpectLikeLibc("%c%c %3c", 'o', 'k', 'z');
  ExpectLikeLibc("%zu %%", size_t(99));
  ExpectLikeLibc("%*d|%-*d|", 4, 7, 4, 7);
  ExpectLikeLibc("%u.%u.%u.%u", 10u, 0u, 0u, 2u);
  ExpectLikeLibc("%02x:%02x", 0x5u, 0xabu);
}

TEST(Fmt, PointerNullAndTruncation) {
  EXPECT_EQ(Fmt("%p", reinterpret_cast<void*>(0x1000)), "0x1000");
  EXPECT_EQ(Fmt("%s", static_cast<const char*>(nullptr)), "(null)");
  char small[5];
  EXPECT_EQ(fmt_snprintf(small, sizeof small, "%s", "abcdefgh"), 8u);  // would-be length
  EXPECT_STREQ(small, "abcd");
  EXPECT_EQ(fmt_snprintf(nullptr, 0, "%d", 12345), 5u);
  EXPECT_EQ(Fmt("100%"), "100");  // trailing lone '%' is dropped, no overread
}

TEST(Str, ParseNumbersAndAddresses) {
  uint64_t v;
  EXPECT_TRUE(parse_u64(Str::of("0"), &v) && v == 0);
  EXPECT_TRUE(parse_u64(Str::of("18446744073709551615"), &v) && v == UINT64_MAX);
  EXPECT_FALSE(parse_u64(Str::of("18446744073709551616"), &v));
  EXPECT_TRUE(parse_u64(Str::of("0x1F"), &v) && v == 31);
  EXPECT_FALSE(parse_u64(Str::of(""), &v));
  EXPECT_FALSE(parse_u64(Str::of("12a"), &v));
  EXPECT_FALSE(parse_u64(Str::of("-1"), &v));
  uint32_t ip, mask;
  EXPECT_TRUE(parse_ipv4_cidr(Str::of("10.0.0.2/24"), &ip, &mask));
  EXPECT_EQ(ip, 0x0a000002u);
  EXPECT_EQ(mask, 0xffffff00u);
  EXPECT_TRUE(parse_ipv4_cidr(Str::of("192.168.1.1"), &ip, &mask));
  EXPECT_EQ(mask, 0xffffff00u);  // default /24
  EXPECT_TRUE(parse_ipv4_cidr(Str::of("1.2.3.4/32"), &ip, &mask));
  EXPECT_EQ(mask, 0xffffffffu);
  EXPECT_TRUE(parse_ipv4_cidr(Str::of("1.2.3.4/0"), &ip, &mask));
  EXPECT_EQ(mask, 0u);
  for (const char* bad : {"1.2.3", "1.2.3.4.5", "256.1.1.1", "1..2.3", "1.2.3.4/33", "a.b.c.d", "1.2.3.4/"}) {
    EXPECT_FALSE(parse_ipv4_cidr(Str::of(bad), &ip, &mask)) << bad;
  }
}

TEST(Args, KeyValueLookup) {
  Args a(Str::of("app=disk ops=500  seed=0x10 flag empty= ops=600"));
  EXPECT_TRUE(a.get_str("app", Str::of("?")).eq("disk"));
  EXPECT_EQ(a.get_u64("ops", 1), 600u);  // the last one wins
  EXPECT_EQ(a.get_u64("seed", 1), 16u);
  EXPECT_EQ(a.get_u64("missing", 77), 77u);
  Str v;
  EXPECT_TRUE(a.get("flag", &v) && v.empty());
  EXPECT_TRUE(a.get("empty", &v) && v.empty());
  EXPECT_FALSE(a.get("op", &v));  // no prefix matches
  bool ok = true;
  EXPECT_EQ(Args(Str::of("n=12x")).get_u64("n", 5, &ok), 5u);
  EXPECT_FALSE(ok);
}

TEST(Crc32, KnownValues) {
  EXPECT_EQ(crc32("123456789", 9), 0xcbf43926u);
  EXPECT_EQ(crc32("", 0), 0u);
  // Streaming equals one shot.
  EXPECT_EQ(crc32_update(crc32("1234", 4), "56789", 5), 0xcbf43926u);
}

TEST(ComputeCore, DeterministicAndResumable) {
  // Pinned values: the guest app printed the same for iters=10000000 under the
  // software CPU (compute: iters=10000000 checksum=0xffea23a9da237a2d).
  EXPECT_EQ(ftvm_compute(10000000), 0xffea23a9da237a2dull);
  ftvm_compute_state s;
  ftvm_compute_init(&s);
  for (int i = 0; i < 10; ++i) ftvm_compute_run(&s, 1000);
  EXPECT_EQ(ftvm_compute_digest(&s), ftvm_compute(10000));
  EXPECT_NE(ftvm_compute(10000), ftvm_compute(10001));
}

}  // namespace
}  // namespace ftvm::guest
