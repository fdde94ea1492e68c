// libFuzzer target for the chat-template interpreter: any template source must either parse and
// render (against a fixed conversation) or throw lowrank::Error — never crash, hang or overflow.
#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "lowrank/core/error.h"
#include "lowrank/tokenizer/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const nlohmann::json vars = {
      {"messages", {{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "Hi"}},
                    {{"role", "assistant"}, {"content", "Hello!"}}}},
      {"add_generation_prompt", true},
      {"bos_token", "<s>"},
      {"eos_token", "</s>"}};
  try {
    auto t = lowrank::tok::ChatTemplate::parse(std::string(reinterpret_cast<const char*>(data), size));
    (void)t.render(vars);
  } catch (const lowrank::Error&) {
  }
  return 0;
}
