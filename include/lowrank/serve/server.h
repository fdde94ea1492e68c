#pragma once
// `lowrank serve`: an OpenAI-compatible HTTP server (vLLM's conventions) for one base model and
// named LoRA adapters. HTTP handlers run on cpp-httplib's thread pool and only parse, queue and
// stream; the scheduler's thread owns the model and decodes every running sequence in turn.
// docs/serve.md describes the endpoints.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "lowrank/model/model.h"
#include "lowrank/tokenizer/tokenizer.h"

namespace lowrank::serve {

struct ServerOptions {
  std::string model_name;               // the base model's name in requests' `model` and in /v1/models
  std::string api_key;                  // "": no authentication; else /v1/* need "Authorization: Bearer KEY"
  int64_t max_batch = 8;                // sequences decoded together; the rest wait in a queue
  size_t max_body_bytes = 8 << 20;      // larger request bodies get 413
  bool enable_lora_loading = false;     // POST /v1/load_lora_adapter and /v1/unload_lora_adapter
  std::string adapter_dir;              // "": none; else a request's `model` may name a folder in it (loaded on first use)
  size_t max_loaded_adapters = 0;       // adapters from adapter_dir kept loaded (0: no limit); the least recently used goes
  std::string chat_template;            // --chat-template: a built-in name or a Jinja file ("": the model's)
  // The decode step runs batches over a paged KV cache (serve/paged_decode_step.h) of
  // kv_cache_blocks blocks of 16 positions
  // (0: PagedDecodeStep::blocks_for_batch: --max-batch contexts).
  int64_t kv_cache_blocks = 0;
  // The paged step's device adapter cache (lora/adapter_cache.h): adapters kept on the device.
  size_t max_gpu_adapters = 64;
  // The paged step's merged copies (--merged-adapters; infer/batch_decoder.h: made after
  // BatchDecoder::kMergeAfterSteps decode steps alone): 0 = none.
  size_t merged_adapters = 0;
};

class Server {
 public:
  // `model` (CPU or CUDA) must outlive the server.
  Server(const model::Model& model, tok::Tokenizer tokenizer, ServerOptions options);
  ~Server();  // shutdown(); a thread in run() must have returned before the Server is destroyed
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // A PEFT adapter folder ("DIR" or "DIR:SCALE") that requests name as `name`. Throws Error.
  void load_adapter(const std::string& name, const std::string& spec);
  // Binds `host`:`port` (0: a free port) and returns the port. Throws Error when it cannot.
  int bind(const std::string& host, int port);
  // Serves until shutdown() has finished; call after bind().
  void run();
  // Stops taking generation requests (503), lets every accepted one finish, then stops serving.
  // Thread-safe; returns once the accepted requests have been answered.
  void shutdown();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lowrank::serve
