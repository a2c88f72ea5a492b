// CRC32C (Castagnoli, polynomial 0x1EDC6F41 reflected = 0x82F63B78), the checksum of
// every event-log header and record. It is the one the SSE4.2 crc32 instruction
// computes, so on x86 hosts it costs well under a cycle per byte; the table version
// is for CPUs without SSE4.2 and is the reference the hardware one is tested against.
#pragma once

#include <cstdint>
#include <span>

namespace ftvm::eventlog {

// The standard CRC32C of `data` (initial value ~0, final xor ~0):
// Crc32c("123456789") == 0xE3069283.
//
// `crc` continues a previous result, so that
// Crc32c(b, Crc32c(a)) == Crc32c(a followed by b); a record's CRC is computed over its
// fixed header and its payload without copying them together.
uint32_t Crc32c(std::span<const uint8_t> data, uint32_t crc = 0);

// The two implementations behind Crc32c, exposed for tests and benchmarks.
// Crc32cHardware must only be called when Crc32cHardwareAvailable() is true.
uint32_t Crc32cTable(std::span<const uint8_t> data, uint32_t crc = 0);
uint32_t Crc32cHardware(std::span<const uint8_t> data, uint32_t crc = 0);
bool Crc32cHardwareAvailable();

}  // namespace ftvm::eventlog
