// Factories for the virtio-mmio devices the machine plugs into its fixed slots.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "vmm/devices/device.h"
#include "vmm/guest_memory.h"

namespace ftvm::vmm {

using MacAddress = std::array<uint8_t, 6>;

// "52:54:00:12:34:56" -> bytes; throws ftvm::Error naming the bad text.
MacAddress ParseMac(const std::string& text);

// Throw ftvm::Error naming the file or interface when it cannot be opened.
std::unique_ptr<Device> MakeVirtioBlkDevice(GuestMemory& memory, InterruptSink& irq, const std::string& image);
std::unique_ptr<Device> MakeVirtioNetDevice(GuestMemory& memory, InterruptSink& irq, const std::string& tap,
                                            const MacAddress& mac);

}  // namespace ftvm::vmm
