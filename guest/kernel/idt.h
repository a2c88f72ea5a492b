#ifndef FTVM_GUEST_KERNEL_IDT_H_
#define FTVM_GUEST_KERNEL_IDT_H_

// Installs exception stubs (vectors 0-31) and interrupt-line stubs
// (FTVM_IRQ_VECTOR_BASE + line). Vectors above those are left out of the IDT limit.
void idt_init();

#endif  // FTVM_GUEST_KERNEL_IDT_H_
