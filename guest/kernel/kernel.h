// What the ring-0 kernel shares with ring-3 code. Pages are user-accessible
// (identity map), so ring 3 reads these directly without any exit.
#ifndef FTVM_GUEST_KERNEL_KERNEL_H_
#define FTVM_GUEST_KERNEL_KERNEL_H_

// The #defines are for isr.S too; the rest is C++ only.
#ifndef __ASSEMBLER__
#include <stdint.h>

#include "vmm/abi/ftvm_abi.h"
#endif

// Exit codes the kit uses besides an app's own 0/1/2.
#define FTVM_GUEST_EXIT_BAD_BOOTINFO 0x60u  // boot info magic/version mismatch
#define FTVM_GUEST_EXIT_NO_POWEROFF  0x61u  // power device ignored the power-off
#define FTVM_GUEST_EXIT_EXCEPTION    0xa0u  // + vector: CPU exception (160-191, clear of ftvm run's 125)

// `int3` with RAX = this value is the hang app's request for a hung kernel: the
// #BP stub spins at ring 0 with interrupts off, forever (isr.S). Any other int3 is
// the breakpoint exception it always was. Fits an imm32 (cmp sign-extends).
#define FTVM_GUEST_HANG_KERNEL_MAGIC 0x474e4148  /* "HANG" */

#ifndef __ASSEMBLER__
extern "C" {
// Interrupts delivered per line, incremented by the ring-0 stubs (isr.S).
extern volatile uint64_t ftvm_irq_count[FTVM_IRQ_LINES];
// All interrupts delivered, any line: the event count idle waits are based on.
extern volatile uint64_t ftvm_irq_total;
// Boot info as handed over in RDI (validated by kmain before ring 3 starts).
extern const struct ftvm_bootinfo* ftvm_boot;
// First free byte after the image (end of the linker's last section).
extern char __image_end[];
}

// Ring-0 code lives in .ktext so the build can check that privileged instructions
// (port I/O, hlt, cli, lgdt...) appear nowhere else.
#define KTEXT __attribute__((section(".ktext")))
#endif  // __ASSEMBLER__

#endif  // FTVM_GUEST_KERNEL_KERNEL_H_
