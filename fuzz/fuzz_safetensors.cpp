// libFuzzer target for the safetensors reader: any input must either parse into tensors whose
// bytes lie inside the input, or throw lowrank::Error. Any other exception, crash or ASan report
// is a finding. See docs/fuzzing.md.
#include <cstddef>
#include <cstdint>
#include <string>

#include "lowrank/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto file = lowrank::io::SafetensorsFile::from_bytes(
        std::string(reinterpret_cast<const char*>(data), size), "fuzz.safetensors");
    volatile unsigned sink = 0;
    for (const auto& info : file.tensors()) {
      if (info.shape.size() > 4) continue;
      const lowrank::Tensor t = file.get(info.name);
      // Touch the first and last byte: ASan flags a view that points outside the input.
      if (t.nbytes() > 0) {
        const auto* bytes = static_cast<const unsigned char*>(t.raw());
        sink = sink + bytes[0] + bytes[t.nbytes() - 1];
      }
    }
    for (const auto& [key, value] : file.metadata()) sink = sink + key.size() + value.size();
  } catch (const lowrank::Error&) {
    // Rejected input: the expected outcome for almost everything the fuzzer makes.
  }
  return 0;
}
