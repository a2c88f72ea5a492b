#include "eventlog/encoder.h"

#include <zstd.h>

#include "eventlog/records.h"

namespace ftvm::eventlog {

void RecordEncoder::CctxDeleter::operator()(ZSTD_CCtx_s* c) const { ZSTD_freeCCtx(c); }

RecordEncoder::RecordEncoder(int zstd_level) : level_(zstd_level) {}
RecordEncoder::~RecordEncoder() = default;
RecordEncoder::RecordEncoder(RecordEncoder&&) noexcept = default;
RecordEncoder& RecordEncoder::operator=(RecordEncoder&&) noexcept = default;

std::string RecordEncoder::encode(RecordType type, uint64_t position, std::span<const uint8_t> payload,
                                  bool compress, std::vector<uint8_t>& out) {
  if (!IsKnownRecordType(static_cast<uint8_t>(type)))
    return "unknown record type " + std::to_string(static_cast<unsigned>(type));
  if (position < last_position_)
    return RecordTypeName(type) + " at position " + std::to_string(position) + " goes backwards (last position " +
           std::to_string(last_position_) + ")";
  if (payload.size() > kMaxPayloadBytes)
    return RecordTypeName(type) + " payload of " + std::to_string(payload.size()) + " bytes exceeds the cap of " +
           std::to_string(kMaxPayloadBytes) + " (split it)";
  if (std::string problem = PayloadProblem(type, payload); !problem.empty()) return problem;

  std::span<const uint8_t> stored = payload;
  uint8_t flags = 0;
  if (compress && !payload.empty()) {
    if (!cctx_) cctx_.reset(ZSTD_createCCtx());
    if (cctx_) {
      scratch_.resize(ZSTD_compressBound(payload.size()));
      size_t n = ZSTD_compressCCtx(cctx_.get(), scratch_.data(), scratch_.size(), payload.data(), payload.size(),
                                   level_);
      // Keep the compressed form only when it is smaller: random data (RNG blobs,
      // encrypted pages) would otherwise grow by the frame overhead.
      if (!ZSTD_isError(n) && n < payload.size()) {
        stored = std::span<const uint8_t>(scratch_.data(), n);
        flags = kFlagZstd;
      }
    }
  }
  AppendRecord(out, type, flags, position, stored);
  last_position_ = position;
  ++records_;
  return "";
}

}  // namespace ftvm::eventlog
