// GDT with kernel and user segments and a 64-bit TSS, whose RSP0 is the stack the
// CPU switches to when an interrupt or exception arrives at ring 3.
#include "guest/kernel/gdt.h"

#include <stdint.h>

#include "guest/kernel/kernel.h"

extern "C" {
extern char ftvm_kstack_top[];
extern char ftvm_dfstack_top[];
void load_gdt(const void* gdtr, uint16_t tss_selector);
}

namespace {

struct __attribute__((packed)) Tss {
  uint32_t reserved0;
  uint64_t rsp[3];
  uint64_t reserved1;
  uint64_t ist[7];
  uint64_t reserved2;
  uint16_t reserved3;
  uint16_t iopb_offset;
};
static_assert(sizeof(Tss) == 104);

struct __attribute__((packed)) Gdtr {
  uint16_t limit;
  uint64_t base;
};

// Selectors: 0x08 kernel code, 0x10 kernel data (same as the loader's boot GDT),
// 0x18 user data, 0x20 user code, 0x28 TSS (two slots).
alignas(16) uint64_t g_gdt[7] = {
    0,
    0x00af9a000000ffffull,  // kernel code: present, DPL0, L=1
    0x00cf92000000ffffull,  // kernel data: present, DPL0, writable
    0x00cff2000000ffffull,  // user data: DPL3
    0x00affa000000ffffull,  // user code: DPL3, L=1
    0,
    0,
};
Tss g_tss;

}  // namespace

KTEXT void gdt_init() {
  g_tss.rsp[0] = reinterpret_cast<uint64_t>(ftvm_kstack_top);
  g_tss.ist[0] = reinterpret_cast<uint64_t>(ftvm_dfstack_top);  // IST1: double fault
  g_tss.iopb_offset = sizeof(Tss);  // no I/O permission bitmap: ring 3 gets no ports
  uint64_t base = reinterpret_cast<uint64_t>(&g_tss);
  uint64_t limit = sizeof(Tss) - 1;
  g_gdt[5] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ull << 40) |  // P, type 9
             (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
  g_gdt[6] = base >> 32;
  static Gdtr gdtr;
  gdtr.limit = sizeof(g_gdt) - 1;
  gdtr.base = reinterpret_cast<uint64_t>(g_gdt);
  load_gdt(&gdtr, kTssSelector);
}
