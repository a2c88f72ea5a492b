// Ring-0 setup: validate boot info, install GDT/TSS/IDT, then drop to ring 3 for
// good. Everything here is emulated instruction by instruction under PVM, so it
// stays short; all real work happens in ring 3 (guest/apps/runtime.cc).
#include <stddef.h>
#include <stdint.h>

#include "guest/kernel/gdt.h"
#include "guest/kernel/idt.h"
#include "guest/kernel/kernel.h"
#include "guest/kernel/port.h"
#include "guest/lib/fmt.h"

extern "C" {
alignas(64) volatile uint64_t ftvm_irq_count[FTVM_IRQ_LINES];
volatile uint64_t ftvm_irq_total;
const ftvm_bootinfo* ftvm_boot;

void enter_user(uint64_t rip, uint64_t rsp, uint64_t arg) __attribute__((noreturn));
void ftvm_user_entry();      // runtime.cc (ring 3)
extern char ftvm_ustack_top[];  // runtime.cc
}

extern "C" [[noreturn]] KTEXT void kmain(const ftvm_bootinfo* bi) {
  if (bi->magic != FTVM_BOOTINFO_MAGIC || bi->abi_version != FTVM_ABI_VERSION) {
    char line[200];
    size_t n = ftvm::guest::fmt_snprintf(
        line, sizeof line,
        "ftvm-guest: boot info mismatch at 0x%lx: magic=0x%x abi_version=%u "
        "(this kit expects magic=0x%x abi_version=%u)\n",
        reinterpret_cast<uint64_t>(bi), bi->magic, bi->abi_version, FTVM_BOOTINFO_MAGIC,
        FTVM_ABI_VERSION);
    port_puts(line, n < sizeof line ? n : sizeof line - 1);
    port_power_off(FTVM_GUEST_EXIT_BAD_BOOTINFO);
  }
  ftvm_boot = bi;
  gdt_init();
  idt_init();
  enter_user(reinterpret_cast<uint64_t>(&ftvm_user_entry),
             reinterpret_cast<uint64_t>(ftvm_ustack_top), reinterpret_cast<uint64_t>(bi));
}
