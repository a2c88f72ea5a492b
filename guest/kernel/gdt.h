#ifndef FTVM_GUEST_KERNEL_GDT_H_
#define FTVM_GUEST_KERNEL_GDT_H_

#include <stdint.h>

constexpr uint16_t kKernelCs = 0x08;
constexpr uint16_t kUserDs = 0x1b;
constexpr uint16_t kUserCs = 0x23;
constexpr uint16_t kTssSelector = 0x28;

void gdt_init();

#endif  // FTVM_GUEST_KERNEL_GDT_H_
