#include "vmm/virtio_devices.h"

#include <cstdio>

#include "common/error.h"
#include "vmm/abi/ftvm_abi.h"
#include "vmm/devices/tap.h"
#include "vmm/devices/virtio_blk.h"
#include "vmm/devices/virtio_mmio.h"
#include "vmm/devices/virtio_net.h"

namespace ftvm::vmm {

MacAddress ParseMac(const std::string& text) {
  MacAddress mac{};
  unsigned b[6];
  char tail;
  if (std::sscanf(text.c_str(), "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &tail) != 6 ||
      text.size() != 17)
    throw Error("MAC address '" + text + "' is not of the form xx:xx:xx:xx:xx:xx");
  for (int i = 0; i < 6; ++i) mac[i] = uint8_t(b[i]);
  if (mac[0] & 1) throw Error("MAC address '" + text + "' is a multicast address");
  return mac;
}

std::unique_ptr<Device> MakeVirtioBlkDevice(GuestMemory& memory, InterruptSink& irq, const std::string& image) {
  return std::make_unique<VirtioMmioDevice>("virtio-blk", memory, irq, FTVM_IRQ_VIRTIO_BLK,
                                            std::make_unique<VirtioBlk>(image));
}

std::unique_ptr<Device> MakeVirtioNetDevice(GuestMemory& memory, InterruptSink& irq, const std::string& tap,
                                            const MacAddress& mac) {
  return std::make_unique<VirtioMmioDevice>("virtio-net", memory, irq, FTVM_IRQ_VIRTIO_NET,
                                            std::make_unique<VirtioNet>(Tap(tap), mac));
}

}  // namespace ftvm::vmm
