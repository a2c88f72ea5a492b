#include "vmm/cpu_backend.h"

#include <unistd.h>

#include <cstdio>
#include <type_traits>
#include <utility>

#include "common/log.h"

namespace ftvm::vmm {

std::unique_ptr<CpuBackend> MakeBackend(BackendKind kind, GuestMemory& memory) {
  switch (kind) {
    case BackendKind::kKvm:
      return MakeKvmBackend(memory);
    case BackendKind::kEmulated:
      return MakeEmulatedBackend(memory);
    case BackendKind::kAuto:
      if (access("/dev/kvm", F_OK) == 0) return MakeKvmBackend(memory);
      log::warn("vmm.no_kvm", {{"detail", "/dev/kvm not found; running the guest on the software CPU "
                                          "(correct but much slower)"}});
      return MakeEmulatedBackend(memory);
  }
  return MakeEmulatedBackend(memory);
}

std::string_view BackendKindName(BackendKind kind) {
  switch (kind) {
    case BackendKind::kAuto: return "auto";
    case BackendKind::kKvm: return "kvm";
    case BackendKind::kEmulated: return "emulated";
  }
  return "?";
}

std::optional<BackendKind> ParseBackendKind(std::string_view text) {
  if (text == "auto") return BackendKind::kAuto;
  if (text == "kvm") return BackendKind::kKvm;
  if (text == "emulated") return BackendKind::kEmulated;
  return std::nullopt;
}

}  // namespace ftvm::vmm

namespace ftvm::vmm {
namespace {

// Little-endian field-by-field encoding shared by encode, decode and
// first_difference, so the three can never disagree on the layout.
template <typename Visitor>
void VisitFields(VcpuRegs& r, Visitor&& v) {
  static const char* const kGprNames[16] = {"rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                                            "r8",  "r9",  "r10", "r11", "r12", "r13", "r14", "r15"};
  static const char* const kSegNames[6] = {"cs", "ss", "ds", "es", "fs", "gs"};
  for (int i = 0; i < 16; ++i) v(kGprNames[i], r.gpr[i]);
  v("rip", r.rip);
  v("rflags", r.rflags);
  v("cr0", r.cr0);
  v("cr2", r.cr2);
  v("cr3", r.cr3);
  v("cr4", r.cr4);
  v("efer", r.efer);
  for (int i = 0; i < 6; ++i) v(kSegNames[i], r.selector[i]);
  v("fs_base", r.fs_base);
  v("gs_base", r.gs_base);
  v("gdt_base", r.gdt_base);
  v("idt_base", r.idt_base);
  v("gdt_limit", r.gdt_limit);
  v("idt_limit", r.idt_limit);
  v("tr", r.tr_selector);
  v("tr_base", r.tr_base);
  static const char* const kXmm[16][2] = {
      {"xmm0.lo", "xmm0.hi"},   {"xmm1.lo", "xmm1.hi"},   {"xmm2.lo", "xmm2.hi"},   {"xmm3.lo", "xmm3.hi"},
      {"xmm4.lo", "xmm4.hi"},   {"xmm5.lo", "xmm5.hi"},   {"xmm6.lo", "xmm6.hi"},   {"xmm7.lo", "xmm7.hi"},
      {"xmm8.lo", "xmm8.hi"},   {"xmm9.lo", "xmm9.hi"},   {"xmm10.lo", "xmm10.hi"}, {"xmm11.lo", "xmm11.hi"},
      {"xmm12.lo", "xmm12.hi"}, {"xmm13.lo", "xmm13.hi"}, {"xmm14.lo", "xmm14.hi"}, {"xmm15.lo", "xmm15.hi"}};
  for (int i = 0; i < 16; ++i) {
    v(kXmm[i][0], r.xmm[i][0]);
    v(kXmm[i][1], r.xmm[i][1]);
  }
  v("mxcsr", r.mxcsr);
}

}  // namespace

std::vector<uint8_t> VcpuRegs::encode() const {
  std::vector<uint8_t> out;
  out.reserve(kEncodedBytes);
  VcpuRegs copy = *this;
  VisitFields(copy, [&](const char*, auto& field) {
    auto v = field;
    for (size_t b = 0; b < sizeof v; ++b) out.push_back(uint8_t(uint64_t(v) >> (8 * b)));
  });
  return out;
}

std::optional<VcpuRegs> VcpuRegs::decode(std::span<const uint8_t> bytes) {
  if (bytes.size() != kEncodedBytes) return std::nullopt;
  VcpuRegs r;
  size_t at = 0;
  VisitFields(r, [&](const char*, auto& field) {
    uint64_t v = 0;
    for (size_t b = 0; b < sizeof field; ++b) v |= uint64_t(bytes[at + b]) << (8 * b);
    field = static_cast<std::remove_reference_t<decltype(field)>>(v);
    at += sizeof field;
  });
  return r;
}

std::string VcpuRegs::first_difference(const VcpuRegs& mine, const VcpuRegs& theirs) {
  std::vector<std::pair<const char*, uint64_t>> a, b;
  VcpuRegs x = mine, y = theirs;
  VisitFields(x, [&](const char* name, auto& f) { a.emplace_back(name, uint64_t(f)); });
  VisitFields(y, [&](const char* name, auto& f) { b.emplace_back(name, uint64_t(f)); });
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].second != b[i].second) {
      char text[96];
      std::snprintf(text, sizeof text, "%s 0x%llx (recorded 0x%llx)", a[i].first,
                    static_cast<unsigned long long>(a[i].second), static_cast<unsigned long long>(b[i].second));
      return text;
    }
  }
  return "";
}

}  // namespace ftvm::vmm
