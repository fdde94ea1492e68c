#pragma once
// A model folder for data tests: the llama fixture (vocab 320) plus a byte-level BPE tokenizer
// with no merges (ids 0..255 are bytes) and ChatML special tokens, so text and chat data work.
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "lowrank/io/files.h"
#include "test_paths.h"

namespace lowrank::test {

// GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to U+0100...
inline std::string byte_symbol(int b) {
  int cp = b;
  const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  if (!printable) {
    int n = 0;
    for (int x = 0; x < b; ++x)
      if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) ++n;
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) s += static_cast<char>(cp);
  else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// Writes the folder and returns its path. Special ids: 256 <|im_start|>, 257 <|im_end|>, 258 <|endoftext|>.
inline std::string write_byte_model(const std::string& dir) {
  namespace fs = std::filesystem;
  fs::create_directories(dir);
  for (const char* f : {"config.json", "model.safetensors", "generation_config.json"})
    fs::copy_file(model_fixture("llama") + "/" + f, dir + "/" + f, fs::copy_options::overwrite_existing);
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_symbol(b)] = b;
  nlohmann::json added = nlohmann::json::array();
  int id = 256;
  for (const char* t : {"<|im_start|>", "<|im_end|>", "<|endoftext|>"})
    added.push_back({{"id", id++}, {"content", t}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                     {"normalized", false}, {"special", true}});
  nlohmann::json byte_level{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  nlohmann::json tk{{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added},
                    {"normalizer", nullptr}, {"pre_tokenizer", byte_level}, {"post_processor", nullptr},
                    {"decoder", byte_level},
                    {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                               {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                               {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
                               {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
  io::write_json_atomic(dir + "/tokenizer.json", tk);
  const std::string chatml =
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
      "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
  io::write_json_atomic(dir + "/tokenizer_config.json",
                        {{"eos_token", "<|im_end|>"}, {"pad_token", "<|endoftext|>"}, {"chat_template", chatml}});
  return dir;
}

}  // namespace lowrank::test
