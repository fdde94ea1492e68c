// libFuzzer target for the tokenizer: the first part of the input (up to a 0 byte) is taken as
// tokenizer.json, the rest as text to encode and decode. Loading must either succeed or throw
// lowrank::Error; encoding must not crash and ids must not be negative. (Ids past the vocabulary
// are possible, as in HF: a post-processor's special-token ids are taken verbatim; the model
// layer rejects them with a clear error.)
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "lowrank/core/error.h"
#include "lowrank/tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t split = input.find('\0');
  const std::string json = input.substr(0, split);
  const std::string text = split == std::string::npos ? std::string("Hello, world!") : input.substr(split + 1);
  try {
    auto tk = lowrank::tok::Tokenizer::from_json(json, "", "fuzz.json");
    auto ids = tk.encode(text, true);
    for (int32_t id : ids)
      if (id < 0) std::abort();
    (void)tk.decode(ids, false);
  } catch (const lowrank::Error&) {
    // Rejected tokenizer or text (e.g. invalid UTF-8): the expected outcome for most inputs.
  }
  return 0;
}
