// libFuzzer target for what `lowrank serve` reads from the network: a request body of
// /v1/completions (first byte even) or /v1/chat/completions (odd), parsed and checked as the server
// does before anything reaches the model. Every input must either be accepted or throw
// serve::ApiError or lowrank::Error (the server answers 4xx with an OpenAI error body); anything
// else — another exception (a 500 "internal error"), a crash, a sanitizer report — is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "lowrank/core/error.h"
#include "lowrank/serve/openai_protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    const nlohmann::json j = lowrank::serve::parse_body(body);
    if (data[0] & 1) {
      const lowrank::serve::ChatRequest r = lowrank::serve::parse_chat_request(j);
      (void)r.messages.dump();  // what the chat template renders from
    } else {
      (void)lowrank::serve::parse_completion_request(j);
    }
  } catch (const lowrank::serve::ApiError&) {
  } catch (const lowrank::Error&) {
  }
  return 0;
}
