// libFuzzer target for the JSON a user hands us besides tokenizers: the first byte picks the
// reader, the rest is the file's text. 0: config.json (ModelConfig), 1: adapter_config.json
// (LoraConfig), 2: a JSONL training/eval file of input_ids / labels lines (Dataset, vocab 1000).
// Every input must either be accepted or throw lowrank::Error (a clear `error:` for the user);
// anything else (another exception, a crash, a sanitizer report) is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <unistd.h>

#include "lowrank/core/error.h"
#include "lowrank/io/files.h"
#include "lowrank/lora/config.h"
#include "lowrank/model/config.h"
#include "lowrank/train/dataset.h"

namespace {

// One scratch file per process (libFuzzer runs inputs one after another).
const std::string& scratch_jsonl() {
  static const std::string path = "/tmp/lowrank_fuzz_configs_" + std::to_string(::getpid()) + ".jsonl";
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    switch (data[0] % 3) {
      case 0:
        (void)lowrank::model::ModelConfig::from_json(lowrank::io::parse_json(text, "config.json"), "config.json");
        break;
      case 1:
        (void)lowrank::lora::LoraConfig::from_json(lowrank::io::parse_json(text, "adapter_config.json"),
                                                   "adapter_config.json");
        break;
      default: {
        std::FILE* f = std::fopen(scratch_jsonl().c_str(), "wb");
        if (!f) return 0;
        std::fwrite(text.data(), 1, text.size(), f);
        std::fclose(f);
        lowrank::train::DatasetOptions o;
        o.seq_len = 64;
        o.vocab_size = 1000;
        (void)lowrank::train::Dataset::load(scratch_jsonl(), o);
        break;
      }
    }
  } catch (const lowrank::Error&) {
    // A clear error for the user: the expected outcome for most inputs.
  }
  return 0;
}
