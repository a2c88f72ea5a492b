// Factories for the virtio-mmio devices the machine plugs into its fixed slots.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "vmm/devices/device.h"
#include "vmm/devices/device_io.h"
#include "vmm/guest_memory.h"

namespace ftvm::vmm {

using MacAddress = std::array<uint8_t, 6>;

// "52:54:00:12:34:56" -> bytes; throws ftvm::Error naming the bad text.
MacAddress ParseMac(const std::string& text);

// Throw ftvm::Error naming the file or interface when it cannot be opened.
// `serial`: the disk's GET_ID (empty: the file name). `tap` empty: no host side
// (a replica replaying frames from the log).
std::unique_ptr<Device> MakeVirtioBlkDevice(GuestMemory& memory, InterruptSink& irq, const std::string& image,
                                            const std::string& serial, DeviceIo& io);
std::unique_ptr<Device> MakeVirtioNetDevice(GuestMemory& memory, InterruptSink& irq,
                                            const std::optional<std::string>& tap, const MacAddress& mac,
                                            DeviceIo& io);

}  // namespace ftvm::vmm
