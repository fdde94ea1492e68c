#include "lowrank/train/text_encoder.h"

#include <filesystem>

#include "lowrank/core/error.h"
#include "lowrank/io/files.h"
#include "lowrank/tokenizer/chat_template.h"
#include "lowrank/tokenizer/tokenizer.h"

namespace lowrank::train {
namespace {

// Ids and labels of a conversation: the template renders messages[:i] for growing i; the text
// each assistant turn adds (after the generation prompt) carries loss, everything else is -100.
// Pieces are tokenized separately, which is exact when the template's boundaries are special
// tokens or line breaks (true of the Llama, ChatML, Mistral and Gemma templates).
std::vector<int32_t> encode_conversation(const tok::Tokenizer& tk, const nlohmann::json& config,
                                         const nlohmann::json& messages, std::vector<int32_t>* labels) {
  std::vector<int32_t> ids;
  labels->clear();
  auto add = [&](const std::string& text, bool loss) {
    auto piece = tk.encode(text, false);
    ids.insert(ids.end(), piece.begin(), piece.end());
    for (int32_t id : piece) labels->push_back(loss ? id : -100);
  };
  std::string done;
  for (size_t i = 0; i < messages.size(); ++i) {
    const auto& m = messages[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      throw error("messages[", i, "] must be an object with a \"role\" string");
    const nlohmann::json upto = nlohmann::json(std::vector<nlohmann::json>(messages.begin(), messages.begin() + i + 1));
    const std::string full = tok::apply_chat_template(config, upto, false);
    if (m["role"] == "assistant") {
      const nlohmann::json before = nlohmann::json(std::vector<nlohmann::json>(messages.begin(), messages.begin() + i));
      const std::string prompt = tok::apply_chat_template(config, before, true);
      if (prompt.compare(0, done.size(), done) != 0 || full.compare(0, prompt.size(), prompt) != 0)
        throw error("the chat template does not render conversations as growing prefixes, so assistant turns "
                    "cannot be located for the loss mask");
      add(prompt.substr(done.size()), false);
      add(full.substr(prompt.size()), true);
    } else {
      if (full.compare(0, done.size(), done) != 0)
        throw error("the chat template does not render conversations as growing prefixes");
      add(full.substr(done.size()), false);
    }
    done = full;
  }
  return ids;
}

}  // namespace

std::optional<TextEncoder> make_text_encoder(const std::string& model_dir,
                                             const std::optional<std::string>& chat_template) {
  namespace fs = std::filesystem;
  const bool has_json = io::file_exists((fs::path(model_dir) / "tokenizer.json").string());
  const bool has_pair = io::file_exists((fs::path(model_dir) / "vocab.json").string()) &&
                        io::file_exists((fs::path(model_dir) / "merges.txt").string());
  if (!has_json && !has_pair) return std::nullopt;
  auto tokenizer = std::make_shared<tok::Tokenizer>(tok::Tokenizer::load(model_dir));
  TextEncoder e;
  e.encode = [tokenizer](const std::string& text, bool add_special) { return tokenizer->encode(text, add_special); };
  e.eos_id = tokenizer->eos_id();
  if (auto tmpl = chat_template ? chat_template : tok::find_chat_template(model_dir)) {
    auto config = std::make_shared<nlohmann::json>(tokenizer->config());
    (*config)["chat_template"] = *tmpl;
    e.encode_chat = [tokenizer, config](const nlohmann::json& messages, std::vector<int32_t>* labels) {
      return encode_conversation(*tokenizer, *config, messages, labels);
    };
  }
  return e;
}

}  // namespace lowrank::train
