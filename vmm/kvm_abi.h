// Kernel-exact layouts for KVM structures with flexible array members.
//
// linux-libc-dev 6.1 declares them with __DECLARE_FLEX_ARRAY, which in C++ becomes a
// zero-length array wrapped in a struct: sizeof(kvm_cpuid2) is 12 in C++ but 8 in C
// (kvm_msrs: 16 vs 8). The size is encoded in the ioctl numbers, so the <linux/kvm.h>
// macros compiled as C++ produce numbers the kernel rejects (EINVAL), and the entries
// sit 4 bytes off. Found by running the KVM backend under nested KVM; every
// variable-length KVM ioctl goes through these definitions instead.
#pragma once

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cstdint>

namespace ftvm::vmm::kvm_abi {

// struct kvm_cpuid2 / kvm_msrs as the kernel lays them out: a header followed by the
// entries.
struct ArrayHeader {
  uint32_t nent;
  uint32_t padding;
};
static_assert(sizeof(ArrayHeader) == 8);
static_assert(sizeof(kvm_cpuid_entry2) == 40);
static_assert(sizeof(kvm_msr_entry) == 16);

// struct kvm_xsave: 4096 bytes in C, 4100 in C++ (its flexible `extra` member).
struct Xsave {
  uint32_t region[1024];
};
static_assert(sizeof(Xsave) == 4096);

constexpr unsigned long kGetXsave = _IOR(KVMIO, 0xa4, Xsave);
constexpr unsigned long kSetXsave = _IOW(KVMIO, 0xa5, Xsave);
constexpr unsigned long kGetSupportedCpuid = _IOWR(KVMIO, 0x05, ArrayHeader);
constexpr unsigned long kSetCpuid2 = _IOW(KVMIO, 0x90, ArrayHeader);
constexpr unsigned long kGetMsrs = _IOWR(KVMIO, 0x88, ArrayHeader);
constexpr unsigned long kSetMsrs = _IOW(KVMIO, 0x89, ArrayHeader);

}  // namespace ftvm::vmm::kvm_abi
