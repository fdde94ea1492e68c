// lowrank serve: the OpenAI-compatible HTTP server for a base model and named LoRA adapters.
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>

#include "command.h"
#include "lowrank/core/device_memory.h"
#include "lowrank/core/error.h"
#include "lowrank/io/files.h"
#include "lowrank/core/log.h"
#include "lowrank/serve/server.h"

namespace lowrank::cli {
namespace {

int stop_pipe[2] = {-1, -1};  // SIGINT/SIGTERM write their number here

void on_stop_signal(int sig) {
  const char c = static_cast<char>(sig);
  const int saved = errno;
  if (write(stop_pipe[1], &c, 1) < 0) {
  }  // nothing more a handler can do
  errno = saved;
}

struct ServeArgs {
  std::string model, served_name, device = "cpu", host = "127.0.0.1";
  std::vector<std::string> adapters;  // NAME=DIR[:SCALE]
  int port = 8000;
  int64_t max_gpu_adapters = 64;  // checked, then options.max_gpu_adapters
  int64_t merged_adapters = 0;    // checked, then options.merged_adapters
  int64_t max_loaded_adapters = 0;  // checked, then options.max_loaded_adapters
  serve::ServerOptions options;
};

int run_serve(ServeArgs& a) {
  const Device device = parse_device(a.device);
  check_device(device, "--device " + a.device);
  if (a.options.kv_cache_blocks < 0) throw error("--kv-cache-blocks must not be negative");
  if (!a.options.adapter_dir.empty() && !io::is_directory(a.options.adapter_dir))
    throw error("--adapter-dir ", a.options.adapter_dir, ": not a folder");
  if (a.max_loaded_adapters < 0) throw error("--max-loaded-adapters must not be negative");
  if (a.max_loaded_adapters > 0 && a.options.adapter_dir.empty())
    throw error("--max-loaded-adapters bounds the adapters --adapter-dir loads; give --adapter-dir");
  a.options.max_loaded_adapters = static_cast<size_t>(a.max_loaded_adapters);
  // The server keeps 2 HTTP threads per sequence: an unbounded batch would exhaust the process table.
  if (a.options.max_batch < 1 || a.options.max_batch > 4096)
    throw error("--max-batch must be in [1, 4096], got ", a.options.max_batch);
  if (a.max_gpu_adapters < 1) throw error("--max-gpu-adapters must be at least 1");
  a.options.max_gpu_adapters = static_cast<size_t>(a.max_gpu_adapters);
  if (a.merged_adapters < 0 || a.merged_adapters > 1024) throw error("--merged-adapters must be in [0, 1024]");
  a.options.merged_adapters = static_cast<size_t>(a.merged_adapters);
  if (a.port < 0 || a.port > 65535) throw error("--port must be in [0, 65535] (0: any free port)");
  if (a.options.max_body_bytes < 1024) throw error("--max-body-bytes must be at least 1024");
  a.options.model_name = a.served_name.empty() ? a.model : a.served_name;

  // On CUDA bf16; on the CPU f32 (a bf16 checkpoint too big for that in bf16: weights.h); on
  // every device decoding batched over a paged KV cache (docs/serve.md).
  model::Model m = model::Model::load(a.model, device, device.is_cuda() ? DType::BF16 : DType::F32,
                                      model::inference_quantization("none", device, a.model));
  serve::Server server(m, tok::Tokenizer::load(a.model), a.options);
  for (const auto& spec : a.adapters) {
    const auto eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
      throw error("--adapter ", spec, ": expected NAME=DIR or NAME=DIR:SCALE");
    server.load_adapter(spec.substr(0, eq), spec.substr(eq + 1));
  }

  // SIGINT/SIGTERM only write to a pipe (all a signal handler may safely do; any thread may
  // receive them, OpenBLAS starts its own before main); a thread reading it shuts the server
  // down, which waits for the running requests.
  if (pipe(stop_pipe) != 0) throw error("cannot create a pipe: ", std::strerror(errno));
  struct sigaction on_stop {};
  on_stop.sa_handler = on_stop_signal;
  on_stop.sa_flags = SA_RESTART;
  sigemptyset(&on_stop.sa_mask);
  sigaction(SIGINT, &on_stop, nullptr);
  sigaction(SIGTERM, &on_stop, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client that left is seen as a failed write, not a dead server

  const int port = server.bind(a.host, a.port);
  std::fprintf(stderr, "lowrank serve: %s on http://%s:%d (max batch %lld%s)\n", a.options.model_name.c_str(),
               a.host.c_str(), port, static_cast<long long>(a.options.max_batch),
               a.adapters.empty() ? "" : (", " + std::to_string(a.adapters.size()) + " adapters").c_str());
  std::thread stopper([&] {
    char sig = 0;
    while (read(stop_pipe[0], &sig, 1) < 0 && errno == EINTR) {
    }
    if (sig == 0) return;  // the server stopped by itself
    std::fprintf(stderr, "lowrank serve: %s: finishing running requests, then exiting\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    server.shutdown();
  });
  server.run();
  const char none = 0;
  if (write(stop_pipe[1], &none, 1) != 1) std::fprintf(stderr, "lowrank serve: cannot end the signal thread\n");
  stopper.join();
  std::fprintf(stderr, "lowrank serve: stopped\n");
  return 0;
}

RegisterCommand reg{{"serve", "Serve a model and its adapters over the OpenAI HTTP API",
                     [](CLI::App& app) {
                       auto a = std::make_shared<ServeArgs>();
                       app.add_option("--model", a->model, "Hugging Face model folder (with tokenizer.json)")->required();
                       app.add_option("--adapter", a->adapters,
                                      "A PEFT adapter that requests name as `model`: NAME=DIR or NAME=DIR:SCALE (repeatable)");
                       app.add_option("--served-model-name", a->served_name, "The base model's name in requests (default: --model)");
                       app.add_option("--device", a->device, "cpu (f32) or cuda[:N] (bf16)")
                           ->capture_default_str();
                       app.add_option("--kv-cache-blocks", a->options.kv_cache_blocks,
                                      "Blocks of 16 positions in the paged KV cache (0: --max-batch full contexts; on the "
                                      "CPU of at most 4,096 positions each, a quarter of the memory in all)")
                           ->capture_default_str();
                       app.add_option("--host", a->host, "Address to listen on")->capture_default_str();
                       app.add_option("--port", a->port, "Port to listen on (0: any free port)")->capture_default_str();
                       app.add_option("--api-key", a->options.api_key, "Require \"Authorization: Bearer KEY\" on /v1/*");
                       app.add_option("--max-batch", a->options.max_batch, "Sequences decoded together; the rest queue")
                           ->capture_default_str();
                       app.add_option("--max-gpu-adapters", a->max_gpu_adapters,
                                      "CUDA: adapters kept on the GPU (the rest stay in host memory; least recently "
                                      "used are evicted)")
                           ->capture_default_str();
                       app.add_option("--merged-adapters", a->merged_adapters,
                                      "CUDA: once an adapter has had the decode batches to itself for 16 steps, run its "
                                      "batches on a copy of the model with the adapter merged into its weights (no "
                                      "LoRA cost per token; outputs differ from unmerged LoRA by rounding); keep at "
                                      "most N copies (0: never merge)")
                           ->capture_default_str();
                       app.add_option("--max-body-bytes", a->options.max_body_bytes, "Larger request bodies get 413")
                           ->capture_default_str();
                       app.add_option("--chat-template", a->options.chat_template,
                                      "Template for /v1/chat/completions: a built-in (llama3, chatml, llama2, mistral, gemma, "
                                      "qwen3) or a Jinja file (default: an adapter's chat_template.jinja, else the model's)");
                       app.add_flag("--enable-lora-loading", a->options.enable_lora_loading,
                                    "Allow POST /v1/load_lora_adapter and /v1/unload_lora_adapter");
                       app.add_option("--adapter-dir", a->options.adapter_dir,
                                      "A folder of adapter folders: a request whose `model` names one loads it on first use");
                       app.add_option("--max-loaded-adapters", a->max_loaded_adapters,
                                      "With --adapter-dir: adapters from it kept loaded in host memory; loading one more "
                                      "unloads the least recently used (0: no limit)")
                           ->capture_default_str();
                       return [a] { return run_serve(*a); };
                     }}};

}  // namespace
}  // namespace lowrank::cli
