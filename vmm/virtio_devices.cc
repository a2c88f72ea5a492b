#include "vmm/virtio_devices.h"

#include <cctype>
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
  bool shape_ok = text.size() == 17;
  for (size_t i = 0; shape_ok && i < text.size(); ++i)
    shape_ok = (i % 3 == 2) ? text[i] == ':' : std::isxdigit(static_cast<unsigned char>(text[i])) != 0;
  if (!shape_ok ||
      std::sscanf(text.c_str(), "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &tail) != 6)
    throw Error("MAC address '" + text + "' is not of the form xx:xx:xx:xx:xx:xx");
  for (int i = 0; i < 6; ++i) mac[i] = uint8_t(b[i]);
  if (mac[0] & 1) throw Error("MAC address '" + text + "' is a multicast address");
  return mac;
}

std::unique_ptr<Device> MakeVirtioBlkDevice(GuestMemory& memory, InterruptSink& irq, const std::string& image,
                                            const std::string& serial, DeviceIo& io) {
  return std::make_unique<VirtioMmioDevice>("virtio-blk", memory, irq, FTVM_IRQ_VIRTIO_BLK,
                                            std::make_unique<VirtioBlk>(image, serial, io));
}

std::unique_ptr<Device> MakeVirtioNetDevice(GuestMemory& memory, InterruptSink& irq,
                                            const std::optional<std::string>& tap, const MacAddress& mac,
                                            DeviceIo& io) {
  std::optional<Tap> host;
  if (tap) host.emplace(*tap);
  return std::make_unique<VirtioMmioDevice>("virtio-net", memory, irq, FTVM_IRQ_VIRTIO_NET,
                                            std::make_unique<VirtioNet>(std::move(host), mac, io));
}

}  // namespace ftvm::vmm
