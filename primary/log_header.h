// What the primary's log header says about its VM, and how a replica checks that
// it is about to replay the same VM: same configuration, same guest image, same
// initial disk. A mismatch would diverge at once; this names it before booting.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "eventlog/eventlog.pb.h"
#include "vmm/machine.h"

namespace ftvm::primary {

// The header's description of `config` running on backend `backend_name`,
// including the SHA-256 of the guest image and the XXH3-128 of the disk image
// (unless `disk_digest` is false: a disk copied live is checked by its transfer,
// and hashing all of it would lengthen the pause). Throws ftvm::Error naming a file
// that cannot be read.
eventlog::VmConfig DescribeVm(const vmm::VmConfig& config, std::string_view backend_name, bool disk_digest = true);
// The guest image's SHA-256 (32 bytes) as stored in the header.
std::string ImageDigest(const std::string& path);
// XXH3-128 of a whole file, 16 bytes; `size` receives its length.
std::string FileDigest(const std::string& path, uint64_t* size = nullptr);

// The VM configuration a replica runs: `recorded` with the replica's own image,
// disk, console and backend choices. Throws ftvm::Error naming every mismatch it
// can prove: a different guest image, a disk of other contents or size, a
// backend other than the one recorded.
// `disk_arrives`: the primary sends the disk's contents (a replica joining a running
// VM), so `disk` is only where they go and is not compared.
vmm::VmConfig ReplicaConfig(const eventlog::LogHeader& header, const std::string& guest_image,
                            const std::string& disk, const std::string& console_path, bool disk_arrives = false);

}  // namespace ftvm::primary
