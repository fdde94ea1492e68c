// libFuzzer target for what `lowrank serve` reads from the network: a request body of
// /v1/completions, /v1/chat/completions, /tokenize or /detokenize (the first byte modulo 4, in
// that order), parsed and checked as the server does before anything reaches the model. Every input must either be accepted or throw
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
    switch (data[0] % 4) {
      case 0: (void)lowrank::serve::parse_completion_request(j); break;
      case 1: (void)lowrank::serve::parse_chat_request(j).messages.dump(); break;  // what the chat template renders from
      case 2: (void)lowrank::serve::parse_tokenize_request(j).messages.dump(); break;
      default: (void)lowrank::serve::parse_detokenize_request(j); break;
    }
  } catch (const lowrank::serve::ApiError&) {
  } catch (const lowrank::Error&) {
  }
  return 0;
}
