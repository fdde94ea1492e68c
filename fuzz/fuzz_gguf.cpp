// libFuzzer target for the GGUF reader (`lowrank inspect FILE.gguf`): any input must either parse
// into keys and tensors whose bytes lie inside the input, or throw lowrank::Error. Any other
// exception, crash or sanitizer report is a finding. See docs/fuzzing.md.
#include <cstddef>
#include <cstdint>
#include <string>

#include "lowrank/io/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto file = lowrank::io::GgufFile::from_bytes(std::string(reinterpret_cast<const char*>(data), size),
                                                        "fuzz.gguf");
    volatile size_t sink = 0;
    for (const auto& [key, value] : file.metadata()) sink = sink + key.size() + value.str().size();
    for (const auto& t : file.tensors()) {
      // Decoding reads every byte of a tensor: ASan flags one that reaches outside the input.
      if (t.bytes > (size_t{1} << 24)) continue;  // keep each input fast
      try {
        const lowrank::Tensor v = file.get_f32(t.name);
        if (v.numel() > 0) sink = sink + static_cast<size_t>(v.f32()[v.numel() - 1] != 0);
      } catch (const lowrank::Error&) {
        // a type lowrank does not decode
      }
    }
  } catch (const lowrank::Error&) {
    // Rejected input: the expected outcome for almost everything the fuzzer makes.
  }
  return 0;
}
