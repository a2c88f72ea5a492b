// The half of a fuzz target that every target in fuzz/ shares (fuzz/harness.cc):
// the libFuzzer entry points and, built with -DFTVM_FUZZ_STANDALONE, a deterministic
// regression runner. A target file defines `ftvm::fuzz::kTarget` and nothing else
// global; fuzz/meson.build builds each target both ways.
//
//  - libFuzzer (clang -fsanitize=fuzzer,address,undefined): every input goes to
//    Target::run. A custom mutator now and then starts over from a generated valid
//    input (Target::seed), so a run reaches deep states without a seed corpus, and
//    after most mutations lets the target repair checksums (Target::repair), so
//    mutated inputs get past them to the code behind.
//  - the regression runner: Target::run over 200 generated inputs and a fixed set of
//    mutations of each (bit flips, byte stores, truncation, insertion, deletion,
//    duplication, interesting integers fixed-width and as varints), each with and
//    without repair; then over the files and directories named on the command line
//    (fuzz/corpus/<target>: inputs that once found a bug; or a crash input).
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace ftvm::fuzz {

struct Target {
  const char* name;
  // Decodes `input` the way the code under test does and checks every invariant it
  // can with Require(). Must not throw: decoders' documented errors are caught inside.
  void (*run)(std::span<const uint8_t> input);
  // A valid input (what a well-behaved peer would send), drawn with `rng`.
  std::vector<uint8_t> (*seed)(std::minstd_rand& rng);
  // Optional (nullptr): makes the checksums in a mutated input right again.
  void (*repair)(std::span<uint8_t> input);
};

// Defined by the target's file.
extern const Target kTarget;

// Aborts, naming the target and the invariant, when `ok` is false.
void Require(bool ok, const char* what);

// Appends `v` little-endian in `bytes` bytes (seeds build their inputs with these).
void AppendLe(std::vector<uint8_t>& out, uint64_t v, size_t bytes);

// Parses `payload` as a `Proto` as a receiver would; when it parses, checks that it
// re-serializes to bytes that parse again to the same serialization. Returns whether
// it parsed (into `out`).
template <typename Proto>
bool ParseProto(std::span<const uint8_t> payload, Proto& out) {
  if (!out.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) return false;
  const std::string bytes = out.SerializeAsString();
  Proto again;
  Require(again.ParseFromString(bytes), "a parsed message re-serializes to a parsable one");
  Require(again.SerializeAsString() == bytes, "re-serialization is stable");
  return true;
}

}  // namespace ftvm::fuzz
