#include "primary/log_header.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <vector>

#include "common/error.h"
#include "common/unique_fd.h"
#include "vmm/devices/virtio_blk.h"
#include "vmm/loader.h"
#include "vmm/state_digest.h"

namespace ftvm::primary {

std::string ImageDigest(const std::string& path) {
  std::vector<uint8_t> image = vmm::ReadImageFile(path);
  vmm::Sha256Digest d = vmm::Sha256(image);
  return std::string(d.begin(), d.end());
}

std::string FileDigest(const std::string& path, uint64_t* size) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw SysError("disk image " + path);
  XXH3_state_t* state = XXH3_createState();
  if (state == nullptr) throw Error("out of memory hashing " + path);
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> guard(state, &XXH3_freeState);
  XXH3_128bits_reset(state);
  std::vector<uint8_t> buf(1 << 20);
  uint64_t total = 0;
  for (;;) {
    ssize_t n = read(fd.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw SysError("reading disk image " + path);
    }
    if (n == 0) break;
    XXH3_128bits_update(state, buf.data(), size_t(n));
    total += uint64_t(n);
  }
  if (size != nullptr) *size = total;
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, XXH3_128bits_digest(state));
  return std::string(reinterpret_cast<const char*>(c.digest), sizeof c.digest);
}

eventlog::VmConfig DescribeVm(const vmm::VmConfig& c, std::string_view backend_name, bool disk_digest) {
  eventlog::VmConfig vm;
  vm.set_app(c.app);
  for (const std::string& a : c.app_args) vm.add_app_args(a);
  vm.set_mem_mib(c.mem_mib);
  vm.set_has_disk(!c.disk.empty());
  vm.set_has_net(c.has_nic());
  vm.set_mac(c.mac);
  vm.set_ip(c.ip);
  vm.set_gateway(c.gateway);
  vm.set_backend(std::string(backend_name));
  vm.set_guest_image(c.guest_image);
  if (!c.disk.empty()) {
    vm.set_disk_serial(c.disk_serial.empty() ? vmm::VirtioBlk::DefaultSerial(c.disk) : c.disk_serial);
    uint64_t bytes = 0;
    if (disk_digest) {
      vm.set_disk_digest(FileDigest(c.disk, &bytes));
    } else {
      struct stat st {};
      if (stat(c.disk.c_str(), &st) != 0) throw SysError("disk image " + c.disk);
      bytes = uint64_t(st.st_size);
    }
    vm.set_disk_bytes(bytes);
  }
  return vm;
}

vmm::VmConfig ReplicaConfig(const eventlog::LogHeader& header, const std::string& guest_image,
                            const std::string& disk, const std::string& console_path, bool disk_arrives) {
  const eventlog::VmConfig& vm = header.vm();
  vmm::VmConfig c;
  c.mode = vmm::ExecutionMode::kReplay;
  c.guest_image = guest_image.empty() ? vm.guest_image() : guest_image;
  if (ImageDigest(c.guest_image) != header.guest_image_sha256())
    throw Error("guest image " + c.guest_image + " is not the image the log was recorded with (SHA-256 differs)");
  c.app = vm.app();
  c.app_args.assign(vm.app_args().begin(), vm.app_args().end());
  c.mem_mib = vm.mem_mib();
  if (vm.has_disk()) {
    if (disk.empty())
      throw Error("the recorded VM had a disk: give the replica its own copy of the primary's initial disk (--disk)");
    uint64_t bytes = vm.disk_bytes();
    std::string digest = vm.disk_digest();
    if (!disk_arrives) digest = FileDigest(disk, &bytes);
    if (bytes != vm.disk_bytes())
      throw Error("disk " + disk + " has " + std::to_string(bytes) + " bytes; the recorded disk had " +
                  std::to_string(vm.disk_bytes()));
    if (digest != vm.disk_digest())
      throw Error("disk " + disk + " differs from the recorded VM's disk when recording began");
    c.disk = disk;
    c.disk_serial = vm.disk_serial();
  } else if (!disk.empty()) {
    throw Error("the recorded VM had no disk, but --disk was given");
  }
  c.nic_without_tap = vm.has_net();
  c.mac = vm.mac();
  c.ip = vm.ip();
  c.gateway = vm.gateway();
  std::optional<vmm::BackendKind> kind = vmm::ParseBackendKind(vm.backend());
  if (!kind || *kind == vmm::BackendKind::kAuto)
    throw Error("the log names backend '" + vm.backend() + "', which this ftvm does not know");
  c.backend = *kind;
  c.console_path = console_path;
  vmm::ValidateConfig(c);
  return c;
}

}  // namespace ftvm::primary
