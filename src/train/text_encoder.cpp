#include "lowrank/train/text_encoder.h"

#include <filesystem>

#include "lowrank/io/files.h"
#include "lowrank/tokenizer/tokenizer.h"

namespace lowrank::train {

std::optional<TextEncoder> make_text_encoder(const std::string& model_dir) {
  namespace fs = std::filesystem;
  const bool has_json = io::file_exists((fs::path(model_dir) / "tokenizer.json").string());
  const bool has_pair = io::file_exists((fs::path(model_dir) / "vocab.json").string()) &&
                        io::file_exists((fs::path(model_dir) / "merges.txt").string());
  if (!has_json && !has_pair) return std::nullopt;
  auto tokenizer = std::make_shared<tok::Tokenizer>(tok::Tokenizer::load(model_dir));
  TextEncoder e;
  e.encode = [tokenizer](const std::string& text, bool add_special) { return tokenizer->encode(text, add_special); };
  e.eos_id = tokenizer->eos_id();
  return e;
}

}  // namespace lowrank::train
