// Port I/O: ring 0 only (it faults at ring 3 under PVM). Always inlined so the
// instructions land in the calling .ktext function.
#ifndef FTVM_GUEST_KERNEL_PORT_H_
#define FTVM_GUEST_KERNEL_PORT_H_

#include <stddef.h>
#include <stdint.h>

#include "vmm/abi/ftvm_abi.h"

__attribute__((always_inline)) inline void port_out8(uint16_t port, uint8_t v) {
  asm volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}
__attribute__((always_inline)) inline void port_out32(uint16_t port, uint32_t v) {
  asm volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}
__attribute__((always_inline)) inline void port_puts(const char* s, size_t n) {
  for (size_t i = 0; i < n; ++i) port_out8(FTVM_PORT_CONSOLE, static_cast<uint8_t>(s[i]));
}
// Powers off; if that does not stop us, halt forever with interrupts off.
[[noreturn]] __attribute__((always_inline)) inline void port_power_off(uint32_t code) {
  port_out32(FTVM_PORT_POWER, code);
  for (;;) asm volatile("cli; hlt");
}

#endif  // FTVM_GUEST_KERNEL_PORT_H_
