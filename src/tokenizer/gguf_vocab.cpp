// tokenizer.json → llama.cpp's tokenizer keys, following convert_hf_to_gguf.py (get_vocab_base,
// _set_vocab_gpt2) and gguf-py's SpecialVocab.
#include "lowrank/tokenizer/gguf_vocab.h"

#include <cctype>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>

#include "lowrank/core/error.h"
#include "lowrank/io/files.h"
#include "lowrank/tokenizer/tokenizer.h"

namespace lowrank::tok {
namespace {

using nlohmann::json;

// llama.cpp's token types (llama_token_type).
enum TokenType : int32_t { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

// The pre-tokenizer regexes of the byte-level tokenizers llama.cpp knows by name.
constexpr const char* kLlama3Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr const char* kQwen2Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

bool is_type(const json& j, const char* type) { return j.is_object() && j.value("type", "") == type; }

// SentencePiece's byte-fallback pieces: "<0x0A>".
bool is_byte_token(const std::string& t) {
  return t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && std::isxdigit(static_cast<unsigned char>(t[3])) &&
         std::isxdigit(static_cast<unsigned char>(t[4]));
}

// Whether the tokenizer puts "▁" before the text: a Prepend("▁") normalizer (Llama 2, Mistral) or
// a Metaspace pre-tokenizer that prepends (the newer form of the same).
bool prepends_space(const json& tj) {
  const std::function<bool(const json&)> prepend = [&](const json& n) {
    if (is_type(n, "Prepend")) return n.value("prepend", "") == "\xe2\x96\x81";
    if (is_type(n, "Sequence"))
      for (const auto& part : n.value("normalizers", json::array()))
        if (prepend(part)) return true;
    return false;
  };
  if (prepend(tj.value("normalizer", json()))) return true;
  const json pre = tj.value("pre_tokenizer", json());
  return is_type(pre, "Metaspace") && pre.value("prepend_scheme", "always") != "never" && pre.value("add_prefix_space", true);
}

// llama.cpp's name for the way `pre` splits text, or nullopt when it is none of the known ones.
// (The converter identifies it by hashing the ids of a test string; comparing the definitions
// gives the same answer for these tokenizers.)
std::optional<std::string> pre_tokenizer_name(const json& pre) {
  if (is_type(pre, "ByteLevel") && pre.value("use_regex", true) && !pre.value("add_prefix_space", false))
    return "gpt-2";
  if (!is_type(pre, "Sequence") || !pre.contains("pretokenizers")) return std::nullopt;
  const json& parts = pre["pretokenizers"];
  if (parts.size() != 2 || !is_type(parts[0], "Split") || !is_type(parts[1], "ByteLevel")) return std::nullopt;
  const json& split = parts[0];
  const json& byte_level = parts[1];
  if (byte_level.value("use_regex", true) || byte_level.value("add_prefix_space", false)) return std::nullopt;
  if (split.value("behavior", "") != "Isolated" || split.value("invert", false)) return std::nullopt;
  if (!split.contains("pattern") || !split["pattern"].is_object() || !split["pattern"].contains("Regex"))
    return std::nullopt;
  const std::string regex = split["pattern"]["Regex"].get<std::string>();
  if (regex == kLlama3Regex) return "llama-bpe";
  if (regex == kQwen2Regex) return "qwen2";
  return std::nullopt;
}

// The converter's does_token_look_special.
bool looks_special(const std::string& t) {
  return t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]" || (t.starts_with("<|") && t.ends_with("|>")) ||
         (t.starts_with("<\xef\xbd\x9c") && t.ends_with("\xef\xbd\x9c>")) || (t.starts_with("<unused") && t.ends_with(">"));
}

std::optional<std::string> token_content(const json& entry) {
  if (entry.is_string()) return entry.get<std::string>();
  if (entry.is_object() && entry.contains("content") && entry["content"].is_string())
    return entry["content"].get<std::string>();
  return std::nullopt;
}

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) s.replace(at, from.size(), to);
}

}  // namespace

GgufVocabSummary add_gguf_vocab(io::GgufWriter& w, const std::string& model_dir, int64_t vocab_size,
                                const std::string& chat_template) {
  namespace fs = std::filesystem;
  GgufVocabSummary summary;
  std::string path = (fs::path(model_dir) / "tokenizer.json").string();
  const bool gpt2_files = !io::file_exists(path) && io::file_exists((fs::path(model_dir) / "vocab.json").string()) &&
                          io::file_exists((fs::path(model_dir) / "merges.txt").string());
  if (!io::file_exists(path) && !gpt2_files) {
    summary.model = "none";
    w.set("tokenizer.ggml.model", io::GgufValue::string("none"));
    return summary;
  }
  if (gpt2_files) path = (fs::path(model_dir) / "vocab.json").string();  // named in errors
  const json tj = gpt2_files ? tokenizer_json_from_vocab_merges(model_dir) : io::read_json(path);
  const json model = tj.value("model", json::object());
  if (model.value("type", "") != "BPE")
    throw error(path, ": a ", model.value("type", "?"), " tokenizer model; only byte-level BPE tokenizers are written to GGUF");
  const json pre = tj.value("pre_tokenizer", json());
  const bool sentencepiece = model.value("byte_fallback", false);
  if (!sentencepiece && !is_type(tj.value("decoder", json()), "ByteLevel"))
    throw error(path, ": a BPE tokenizer that is neither byte-level nor SentencePiece-style (byte fallback); llama.cpp "
                "would split text differently");
  std::optional<std::string> pre_name;
  if (sentencepiece) {
    if (!pre.is_null() && !is_type(pre, "Metaspace"))
      throw error(path, ": a SentencePiece-style tokenizer with the pre-tokenizer ", pre.dump().substr(0, 200),
                  ", which llama.cpp's SentencePiece tokenizer does not apply");
    pre_name = "default";
  } else {
    pre_name = pre_tokenizer_name(pre);
  }
  if (!pre_name)
    throw error(path, ": its pre-tokenizer (", pre.dump().substr(0, 200),
                ") is none that llama.cpp knows by name (gpt-2, llama-bpe, qwen2); llama.cpp would split text differently");
  summary.model = sentencepiece ? "llama" : "gpt2";
  summary.pre = *pre_name;

  // Tokens and types, id by id.
  std::vector<std::string> tokens(static_cast<size_t>(vocab_size));
  std::vector<int32_t> types(static_cast<size_t>(vocab_size), Unused);
  std::vector<bool> have(static_cast<size_t>(vocab_size), false);
  auto place = [&](int64_t id, const std::string& text, int32_t type) {
    if (id < 0 || id >= vocab_size)
      throw error(path, ": token '", text, "' has id ", id, ", beyond the model's ", vocab_size, " embedding rows");
    tokens[id] = text;
    types[id] = type;
    have[id] = true;
  };
  const std::string unk = model.value("unk_token", json()).is_string() ? model["unk_token"].get<std::string>() : "";
  if (model.contains("vocab") && model["vocab"].is_object())
    for (const auto& [text, id] : model["vocab"].items()) {
      if (!id.is_number_integer()) continue;
      int32_t type = Normal;
      if (sentencepiece && is_byte_token(text)) type = Byte;
      if (sentencepiece && text == unk) type = Unknown;
      place(id.get<int64_t>(), text, type);
    }
  std::map<std::string, int64_t> added_ids;  // content → id, the special ids' lookup (SpecialVocab's)
  for (const json& a : tj.value("added_tokens", json::array())) {
    const std::string content = a.value("content", "");
    const int64_t id = a.value("id", int64_t{-1});
    added_ids.emplace(content, id);
    if (sentencepiece && content == unk) {
      place(id, content, Unknown);
    } else if (a.value("special", false) || looks_special(content)) {
      place(id, content, Control);
    } else {
      std::string text = content;
      replace_all(text, "\xe2\x96\x81", " ");  // pre-normalised user-defined spaces
      place(id, text, UserDefined);
    }
  }
  for (int64_t i = 0; i < vocab_size; ++i)
    if (!have[i]) tokens[i] = "[PAD" + std::to_string(i) + "]";
  summary.tokens = vocab_size;

  std::vector<std::string> merges;
  for (const json& m : model.value("merges", json::array())) {
    if (m.is_string()) {
      merges.push_back(m.get<std::string>());
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      std::string a = m[0].get<std::string>(), b = m[1].get<std::string>();
      replace_all(a, " ", "\xc4\xa0");  // a space inside a pair: U+0120, as the converter writes it
      replace_all(b, " ", "\xc4\xa0");
      merges.push_back(a + " " + b);
    } else {
      throw error(path, ": a merge that is neither \"a b\" nor [\"a\", \"b\"]: ", m.dump().substr(0, 80));
    }
  }
  summary.merges = static_cast<int64_t>(merges.size());

  w.set("tokenizer.ggml.model", io::GgufValue::string(summary.model));
  w.set("tokenizer.ggml.pre", io::GgufValue::string(*pre_name));
  if (sentencepiece) {
    // llama.cpp's SentencePiece tokenizer merges, among adjacent pieces whose concatenation is a
    // token, the one with the highest score: a token's score is minus the rank of the merge that
    // makes it, so it merges in the order of tokenizer.json's merges, as HF's BPE does.
    std::map<std::string, int64_t> ids;
    for (int64_t i = 0; i < vocab_size; ++i) ids.emplace(tokens[i], i);
    std::vector<float> scores(static_cast<size_t>(vocab_size), 0.0f);
    std::vector<bool> scored(static_cast<size_t>(vocab_size), false);
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      const std::string& m = merges[rank];
      const size_t space = m.find(' ', 1);
      if (space == std::string::npos) continue;
      const auto it = ids.find(m.substr(0, space) + m.substr(space + 1));
      if (it == ids.end() || scored[it->second]) continue;
      scores[it->second] = -static_cast<float>(rank);
      scored[it->second] = true;
    }
    for (int64_t i = 0; i < vocab_size; ++i)
      if (types[i] == Control || types[i] == UserDefined) scores[i] = -1000.0f;  // the converter's
    w.set("tokenizer.ggml.tokens", io::GgufValue::string_array(std::move(tokens)));
    w.set("tokenizer.ggml.scores", io::GgufValue::f32_array(scores));
    w.set("tokenizer.ggml.token_type", io::GgufValue::i32_array(types));
    // HF prepends "▁" by a normalizer (Prepend) or the Metaspace pre-tokenizer; llama.cpp by this flag.
    w.set("tokenizer.ggml.add_space_prefix", io::GgufValue::boolean(prepends_space(tj)));
  } else {
    w.set("tokenizer.ggml.tokens", io::GgufValue::string_array(std::move(tokens)));
    w.set("tokenizer.ggml.token_type", io::GgufValue::i32_array(types));
    w.set("tokenizer.ggml.merges", io::GgufValue::string_array(std::move(merges)));
  }

  // Special ids: tokenizer_config.json's tokens found among the added tokens, then config.json's ids.
  const std::string config_path = (fs::path(model_dir) / "tokenizer_config.json").string();
  const json tc = io::file_exists(config_path) ? io::read_json(config_path) : json::object();
  const std::string cfg_path = (fs::path(model_dir) / "config.json").string();
  const json cfg = io::file_exists(cfg_path) ? io::read_json(cfg_path) : json::object();
  std::map<std::string, int64_t> special;
  std::map<std::string, std::string> special_text;
  for (const char* kind : {"bos", "eos", "unk", "pad"}) {
    if (const auto text = tc.contains(std::string(kind) + "_token") ? token_content(tc[std::string(kind) + "_token"]) : std::nullopt) {
      special_text[kind] = *text;
      if (const auto it = added_ids.find(*text); it != added_ids.end() && it->second >= 0 && it->second < vocab_size)
        special[kind] = it->second;
    }
    if (!special.count(kind)) {
      json id = cfg.value(std::string(kind) + "_token_id", json());
      if (id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < vocab_size) special[kind] = id.get<int64_t>();
    }
  }
  // Whether BOS / EOS are added: the post-processor's template, then tokenizer_config.json's flags.
  std::map<std::string, bool> add;
  const json post = tj.value("post_processor", json());
  for (const json& p : post.is_object() ? post.value("processors", json::array({post})) : json::array()) {
    if (!is_type(p, "TemplateProcessing")) continue;
    const json single = p.value("single", json::array());
    if (single.size() < 2) continue;
    const auto first = single.front().contains("SpecialToken") ? token_content(single.front()["SpecialToken"]["id"]) : std::nullopt;
    const auto last = single.back().contains("SpecialToken") ? token_content(single.back()["SpecialToken"]["id"]) : std::nullopt;
    if (first) add["bos"] = special_text.count("bos") && *first == special_text["bos"];
    if (last) add["eos"] = special_text.count("eos") && *last == special_text["eos"];
  }
  for (const char* kind : {"bos", "eos"})
    if (const json flag = tc.value(std::string("add_") + kind + "_token", json()); flag.is_boolean()) add[kind] = flag.get<bool>();

  const std::map<std::string, std::string> id_keys = {{"bos", "tokenizer.ggml.bos_token_id"},
                                                      {"eos", "tokenizer.ggml.eos_token_id"},
                                                      {"unk", "tokenizer.ggml.unknown_token_id"},
                                                      {"pad", "tokenizer.ggml.padding_token_id"}};
  for (const char* kind : {"bos", "eos", "unk", "pad"})
    if (special.count(kind)) w.set(id_keys.at(kind), io::GgufValue::u32(static_cast<uint32_t>(special[kind])));
  for (const char* kind : {"bos", "eos"})
    if (add.count(kind)) w.set(std::string("tokenizer.ggml.add_") + kind + "_token", io::GgufValue::boolean(add[kind]));
  if (!chat_template.empty()) w.set("tokenizer.chat_template", io::GgufValue::string(chat_template));
  return summary;
}

}  // namespace lowrank::tok
