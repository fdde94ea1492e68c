// Public chat-template API: parse/render, apply_chat_template, and finding a model's template.
#include "lowrank/tokenizer/chat_template.h"

#include <fstream>
#include <mutex>
#include <sstream>
#include <unordered_map>

#include "chat_template_eval.h"
#include "chat_template_parser.h"
#include "lowrank/core/error.h"
#include "lowrank/io/files.h"

namespace lowrank::tok {

namespace detail {
struct ChatTemplateProgram {
  std::string source;
  jinja::Program program;
};
}  // namespace detail

nlohmann::json to_json(const std::vector<ChatMessage>& messages) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& m : messages) out.push_back({{"role", m.role}, {"content", m.content}});
  return out;
}

ChatTemplate ChatTemplate::parse(const std::string& source) {
  auto program = std::make_shared<detail::ChatTemplateProgram>();
  program->source = source;
  program->program = jinja::parse_program(source);
  ChatTemplate t;
  t.program_ = std::move(program);
  return t;
}

namespace {

template <typename Json>
std::string render_json(const detail::ChatTemplateProgram* program, const Json& vars) {
  if (!program) throw lowrank::error("chat template: render() on a template that was not parsed");
  if (!vars.is_object()) throw lowrank::error("chat template variables must be a JSON object, got ", vars.type_name());
  jinja::Value v = jinja::from_json(vars);
  return jinja::Interpreter(program->program, v).render();
}

std::string builtin_names_list() {
  std::string names;
  for (const auto& n : builtin_chat_template_names()) names += (names.empty() ? "" : ", ") + n;
  return names;
}

template <typename Json>
std::string template_from_config(const Json& config, bool has_tools) {
  if (!config.is_object()) throw lowrank::error("tokenizer_config must be a JSON object");
  auto it = config.find("chat_template");
  if (it == config.end() || it->is_null())
    throw lowrank::error(
        "tokenizer_config.json has no chat_template; choose a built-in one with --chat-template NAME (",
        builtin_names_list(), ")");
  if (it->is_string()) return it->template get<std::string>();
  if (!it->is_array())
    throw lowrank::error("tokenizer_config.json: chat_template must be a string or a list of {name, template}");
  std::string names, tool_use, dflt;
  bool has_tool_use = false, has_default = false;
  for (const auto& entry : *it) {
    if (!entry.is_object() || !entry.contains("name") || !entry.contains("template") || !entry["name"].is_string() ||
        !entry["template"].is_string())
      throw lowrank::error(
          "tokenizer_config.json: each chat_template list entry needs string \"name\" and \"template\"");
    std::string name = entry["name"].template get<std::string>();
    names += (names.empty() ? "" : ", ") + name;
    if (name == "tool_use") {
      has_tool_use = true;
      tool_use = entry["template"].template get<std::string>();
    } else if (name == "default") {
      has_default = true;
      dflt = entry["template"].template get<std::string>();
    }
  }
  if (has_tools && has_tool_use) return tool_use;
  if (has_default) return dflt;
  throw lowrank::error("tokenizer_config.json has several chat templates (", names,
                       ") and no \"default\"; choose one with --chat-template NAME (", builtin_names_list(), ")");
}

// Parsed templates by source: training renders thousands of conversations with one template.
std::shared_ptr<const detail::ChatTemplateProgram> cached_program(const std::string& source) {
  static std::mutex mu;
  static std::unordered_map<std::string, std::shared_ptr<const detail::ChatTemplateProgram>> cache;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(source);
    if (it != cache.end()) return it->second;
  }
  auto program = std::make_shared<detail::ChatTemplateProgram>();
  program->source = source;
  program->program = jinja::parse_program(source);
  std::lock_guard<std::mutex> lock(mu);
  if (cache.size() >= 16) cache.clear();
  cache.emplace(source, program);
  return program;
}

const char* const kSpecialTokenKeys[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                         "pad_token", "cls_token", "mask_token"};

template <typename Json>
std::string apply_impl(const Json& config, const Json& messages, bool add_generation_prompt, const Json& extra) {
  if (!messages.is_array()) throw lowrank::error("chat messages must be a JSON array, got ", messages.type_name());
  if (!extra.is_null() && !extra.is_object())
    throw lowrank::error("extra chat template variables must be a JSON object");
  bool has_tools = extra.is_object() && extra.contains("tools") && !extra["tools"].is_null();
  std::string source = template_from_config(config, has_tools);
  Json vars = Json::object();
  for (const char* key : kSpecialTokenKeys) {
    auto it = config.find(key);
    if (it == config.end()) continue;
    if (it->is_string())
      vars[key] = *it;
    else if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
      vars[key] = (*it)["content"];
  }
  vars["messages"] = messages;
  vars["tools"] = nullptr;
  vars["documents"] = nullptr;
  vars["add_generation_prompt"] = add_generation_prompt;
  if (extra.is_object())
    for (auto it = extra.begin(); it != extra.end(); ++it) vars[it.key()] = it.value();
  return render_json(cached_program(source).get(), vars);
}

}  // namespace

std::string ChatTemplate::render(const nlohmann::json& vars) const { return render_json(program_.get(), vars); }

std::string ChatTemplate::render_ordered(const nlohmann::ordered_json& vars) const {
  return render_json(program_.get(), vars);
}

const std::string& ChatTemplate::source() const {
  static const std::string empty;
  return program_ ? program_->source : empty;
}

std::string chat_template_from_config(const nlohmann::json& config, bool has_tools) {
  return template_from_config(config, has_tools);
}
std::string chat_template_from_config(const nlohmann::ordered_json& config, bool has_tools) {
  return template_from_config(config, has_tools);
}

std::string apply_chat_template(const nlohmann::json& config, const nlohmann::json& messages,
                                bool add_generation_prompt) {
  return apply_impl(config, messages, add_generation_prompt, nlohmann::json::object());
}

std::string apply_chat_template(const nlohmann::json& config, const nlohmann::json& messages,
                                bool add_generation_prompt, const nlohmann::json& extra_vars) {
  return apply_impl(config, messages, add_generation_prompt, extra_vars);
}

std::string apply_chat_template_ordered(const nlohmann::ordered_json& config, const nlohmann::ordered_json& messages,
                                        bool add_generation_prompt, const nlohmann::ordered_json& extra_vars) {
  return apply_impl(config, messages, add_generation_prompt, extra_vars);
}

namespace {

std::optional<std::string> read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return std::nullopt;
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

nlohmann::ordered_json read_json_file(const std::string& path, const std::string& text) {
  try {
    return nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw lowrank::error(path, ": invalid JSON: ", io::json_error_text(e));
  }
}

}  // namespace

std::optional<std::string> find_chat_template(const std::string& model_dir) {
  std::string dir = model_dir.empty() || model_dir.back() == '/' ? model_dir : model_dir + "/";
  if (auto text = read_text(dir + "chat_template.jinja")) return text;
  if (auto text = read_text(dir + "chat_template.json")) {
    auto j = read_json_file(dir + "chat_template.json", *text);
    if (j.is_object() && j.contains("chat_template") && j["chat_template"].is_string())
      return j["chat_template"].get<std::string>();
  }
  if (auto text = read_text(dir + "tokenizer_config.json")) {
    auto j = read_json_file(dir + "tokenizer_config.json", *text);
    if (j.is_object() && j.contains("chat_template") && !j["chat_template"].is_null())
      return template_from_config(j, false);
  }
  return std::nullopt;
}

std::string chat_template_from_flag(const std::string& value) {
  if (auto builtin = builtin_chat_template(value)) return *builtin;
  if (io::file_exists(value))
    if (auto text = read_text(value)) return *text;
  std::string names;
  for (const auto& n : builtin_chat_template_names()) names += (names.empty() ? "" : ", ") + n;
  throw error("--chat-template: '", value, "' is neither a built-in template (", names, ") nor a readable file");
}

std::optional<std::string> resolve_chat_template(const std::string& flag, const std::vector<std::string>& adapter_dirs,
                                                 const std::string& model_dir) {
  if (!flag.empty()) return chat_template_from_flag(flag);
  if (!adapter_dirs.empty())
    if (auto text = read_text(adapter_dirs.front() + "/chat_template.jinja")) return text;
  return find_chat_template(model_dir);
}

}  // namespace lowrank::tok
