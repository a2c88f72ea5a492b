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
      const bool delta = type == RecordType::kCheckpoint && have_delta_base_;
      scratch_.resize(ZSTD_compressBound(payload.size()));
      size_t n = ZSTD_CCtx_setParameter(cctx_.get(), ZSTD_c_compressionLevel, level_);
      if (!ZSTD_isError(n) && delta) n = ZSTD_CCtx_refPrefix(cctx_.get(), delta_base_.data(), delta_base_.size());
      if (!ZSTD_isError(n))
        n = ZSTD_compress2(cctx_.get(), scratch_.data(), scratch_.size(), payload.data(), payload.size());
      // Keep the compressed form only when it is smaller: random data (RNG blobs,
      // encrypted pages) would otherwise grow by the frame overhead.
      if (!ZSTD_isError(n) && n < payload.size()) {
        stored = std::span<const uint8_t>(scratch_.data(), n);
        flags = delta ? kFlagZstd | kFlagDelta : kFlagZstd;
      }
      // A failed call leaves the context with a prefix set for the next frame.
      if (ZSTD_isError(n)) ZSTD_CCtx_reset(cctx_.get(), ZSTD_reset_session_and_parameters);
    }
  }
  if (type == RecordType::kCheckpoint) {
    have_delta_base_ = payload.size() <= kMaxDeltaBaseBytes;
    if (have_delta_base_) delta_base_.assign(payload.begin(), payload.end());
  }
  AppendRecord(out, type, flags, position, stored);
  last_position_ = position;
  ++records_;
  return "";
}

}  // namespace ftvm::eventlog
