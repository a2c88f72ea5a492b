#include "vmm/cpu_backend.h"

#include <unistd.h>

#include "common/log.h"

namespace ftvm::vmm {

std::unique_ptr<CpuBackend> MakeBackend(BackendKind kind, GuestMemory& memory) {
  switch (kind) {
    case BackendKind::kKvm:
      return MakeKvmBackend(memory);
    case BackendKind::kEmulated:
      return MakeEmulatedBackend(memory);
    case BackendKind::kAuto:
      if (access("/dev/kvm", F_OK) == 0) return MakeKvmBackend(memory);
      log::warn("vmm.no_kvm", {{"detail", "/dev/kvm not found; running the guest on the software CPU "
                                          "(correct but much slower)"}});
      return MakeEmulatedBackend(memory);
  }
  return MakeEmulatedBackend(memory);
}

std::string_view BackendKindName(BackendKind kind) {
  switch (kind) {
    case BackendKind::kAuto: return "auto";
    case BackendKind::kKvm: return "kvm";
    case BackendKind::kEmulated: return "emulated";
  }
  return "?";
}

std::optional<BackendKind> ParseBackendKind(std::string_view text) {
  if (text == "auto") return BackendKind::kAuto;
  if (text == "kvm") return BackendKind::kKvm;
  if (text == "emulated") return BackendKind::kEmulated;
  return std::nullopt;
}

}  // namespace ftvm::vmm
