// Loads an ELF64 guest image into guest RAM and prepares the machine state to enter
// it directly in 64-bit long mode: boot GDT, identity page tables (2 MiB pages, RAM
// and the MMIO window), boot info with the command line.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "vmm/cpu_backend.h"
#include "vmm/guest_memory.h"

namespace ftvm::vmm {

struct LoadedImage {
  BootState boot;
  uint64_t image_end = 0;  // first page after the highest loaded byte
};

// Reads the whole file; throws ftvm::Error naming the file and the problem.
std::vector<uint8_t> ReadImageFile(const std::string& path);

// Validates and loads `image` (named `label` in errors). Throws ftvm::Error naming
// what is wrong: not ELF, wrong class/machine, truncated headers or segments, a
// segment outside RAM or below 1 MiB, an entry point outside the loaded code.
LoadedImage LoadElf(std::span<const uint8_t> image, const std::string& label, GuestMemory& memory);

// Writes the boot GDT, page tables and boot info; completes `loaded.boot`.
void PrepareBoot(LoadedImage& loaded, GuestMemory& memory, const std::string& cmdline,
                 uint32_t present_slots);

}  // namespace ftvm::vmm
