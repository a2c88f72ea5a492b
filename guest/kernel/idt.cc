#include "guest/kernel/idt.h"

#include <stdint.h>

#include "guest/kernel/gdt.h"
#include "guest/kernel/kernel.h"
#include "vmm/abi/ftvm_abi.h"

extern "C" {
extern const uint64_t ftvm_exc_stubs[32];
extern const uint64_t ftvm_irq_stubs[FTVM_IRQ_LINES];
}

namespace {

struct __attribute__((packed)) Gate {
  uint16_t offset_lo;
  uint16_t selector;
  uint8_t ist;
  uint8_t type_attr;
  uint16_t offset_mid;
  uint32_t offset_hi;
  uint32_t reserved;
};
static_assert(sizeof(Gate) == 16);

struct __attribute__((packed)) Idtr {
  uint16_t limit;
  uint64_t base;
};

constexpr unsigned kVectors = FTVM_IRQ_VECTOR_BASE + FTVM_IRQ_LINES;
constexpr uint8_t kIntGate = 0x8e;      // present, DPL0, 64-bit interrupt gate (IF off)
constexpr uint8_t kIntGateUser = 0xee;  // same, DPL3: int3/into from ring 3 reach it
alignas(16) Gate g_idt[kVectors];

KTEXT void set_gate(unsigned vec, uint64_t handler, uint8_t type_attr, uint8_t ist) {
  Gate& g = g_idt[vec];
  g.offset_lo = static_cast<uint16_t>(handler);
  g.selector = kKernelCs;
  g.ist = ist;
  g.type_attr = type_attr;
  g.offset_mid = static_cast<uint16_t>(handler >> 16);
  g.offset_hi = static_cast<uint32_t>(handler >> 32);
  g.reserved = 0;
}

}  // namespace

KTEXT void idt_init() {
  for (unsigned v = 0; v < 32; ++v) {
    uint8_t attr = (v == 3 || v == 4) ? kIntGateUser : kIntGate;
    set_gate(v, ftvm_exc_stubs[v], attr, v == 8 ? 1 : 0);  // #DF on its own stack (IST1)
  }
  for (unsigned line = 0; line < FTVM_IRQ_LINES; ++line) {
    set_gate(FTVM_IRQ_VECTOR_BASE + line, ftvm_irq_stubs[line], kIntGate, 0);
  }
  static Idtr idtr;
  idtr.limit = sizeof(g_idt) - 1;
  idtr.base = reinterpret_cast<uint64_t>(g_idt);
  asm volatile("lidt %0" : : "m"(idtr));
}
