#pragma once
// Chat templates: the Jinja template in tokenizer_config.json ("chat_template") that turns a list
// of messages into the model's prompt text. lowrank interprets the Jinja subset HF templates use
// and renders byte-for-byte what transformers' apply_chat_template renders (same environment:
// trim_blocks, lstrip_blocks, loop controls, its tojson, raise_exception, strftime_now).
// See docs/chat-templates.md for the supported subset.
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lowrank::tok {

struct ChatMessage {
  std::string role;
  std::string content;
};
// [{"role": ..., "content": ...}, ...] for render()/apply_chat_template().
nlohmann::json to_json(const std::vector<ChatMessage>& messages);

namespace detail {
struct ChatTemplateProgram;
}

class ChatTemplate {
 public:
  // Parses a template; throws Error("chat template line L, column C: ...") on syntax errors and
  // on unknown filters or tests.
  static ChatTemplate parse(const std::string& source);

  // Renders with `vars` (a JSON object) as the template's variables: typically messages (array
  // of {role, content, ...}), add_generation_prompt, bos_token, eos_token, tools, plus any
  // extra keys. Throws Error on runtime errors (with the template line); a template's
  // raise_exception(msg) throws Error whose what() is exactly msg.
  std::string render(const nlohmann::json& vars) const;
  // Same with insertion-ordered objects: key order is visible to templates (tojson, items()),
  // and nlohmann::json sorts keys, so use this to match transformers on tool schemas etc.
  std::string render_ordered(const nlohmann::ordered_json& vars) const;

  const std::string& source() const;

 private:
  std::shared_ptr<const detail::ChatTemplateProgram> program_;
};

// Picks the template of a tokenizer_config.json object: "chat_template" as a string, or as a
// list of {"name", "template"} (transformers' choice: "tool_use" when `has_tools` and present,
// else "default"). Throws Error if there is none, naming the built-in --chat-template choices.
std::string chat_template_from_config(const nlohmann::json& tokenizer_config, bool has_tools = false);
std::string chat_template_from_config(const nlohmann::ordered_json& tokenizer_config, bool has_tools = false);

// Renders `messages` with the template of `tokenizer_config` like transformers'
// apply_chat_template(messages, tokenize=False): variables are messages, tools (null),
// documents (null), add_generation_prompt, and the config's named special tokens (bos_token,
// eos_token, unk_token, sep_token, pad_token, cls_token, mask_token; a string or
// {"content": ...}). `extra_vars` (an object) adds or overrides variables, e.g. tools,
// enable_thinking, date_string. Throws Error if the config has no template.
std::string apply_chat_template(const nlohmann::json& tokenizer_config, const nlohmann::json& messages,
                                bool add_generation_prompt);
std::string apply_chat_template(const nlohmann::json& tokenizer_config, const nlohmann::json& messages,
                                bool add_generation_prompt, const nlohmann::json& extra_vars);
std::string apply_chat_template_ordered(const nlohmann::ordered_json& tokenizer_config,
                                        const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                        const nlohmann::ordered_json& extra_vars = nlohmann::ordered_json::object());

// The template in a model folder, where transformers looks for it: chat_template.jinja, then
// chat_template.json ({"chat_template": ...}), then tokenizer_config.json. nullopt if none.
std::optional<std::string> find_chat_template(const std::string& model_dir);

// Built-in templates for --chat-template NAME: "llama3", "llama2", "mistral", "gemma",
// "chatml" and "qwen3" (exact copies of those models' templates); nullopt for unknown names.
std::optional<std::string> builtin_chat_template(std::string_view name);
std::vector<std::string> builtin_chat_template_names();

// The template a --chat-template flag names: a built-in name or the path of a Jinja file. Throws
// Error("--chat-template: ...") listing the built-ins otherwise.
std::string chat_template_from_flag(const std::string& value);
// The template to use for a model with adapters, in this order: the --chat-template flag (when
// not empty), chat_template.jinja in the first adapter folder (written by `train --chat-template`),
// the model folder's own (find_chat_template). nullopt if there is none.
std::optional<std::string> resolve_chat_template(const std::string& flag, const std::vector<std::string>& adapter_dirs,
                                                 const std::string& model_dir);

}  // namespace lowrank::tok
