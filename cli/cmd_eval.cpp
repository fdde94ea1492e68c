// lowrank eval: loss and perplexity of a model (optionally with adapters) on a JSONL dataset.
#include <cstdio>

#include "command.h"
#include "lowrank/core/device_memory.h"
#include "lowrank/core/log.h"
#include "lowrank/lora/adapter_set.h"
#include "lowrank/model/model.h"
#include "lowrank/tokenizer/chat_template.h"
#include "lowrank/train/evaluate.h"
#include "lowrank/train/progress.h"
#include "lowrank/train/dataset.h"
#include "lowrank/train/text_encoder.h"

namespace lowrank::cli {
namespace {

struct EvalOptions {
  std::string model, data;
  std::vector<std::string> adapters;
  int64_t seq_len = 0;
  bool json = false;
  bool quiet = false;
  std::string device = "cpu";
  std::string chat_template;
  std::string quantize = "none";
};

int run_eval(const EvalOptions& o) {
  const Device device = parse_device(o.device);
  check_device(device, "--device " + o.device);
  model::Model m = model::Model::load(o.model, device, device.is_cuda() ? DType::BF16 : DType::F32,
                                      model::inference_quantization(o.quantize, device, o.model));
  lora::AdapterSet adapters(o.adapters, m);
  // The same data formats and scoring as train's --eval-data (whole examples, --seq-len windows).
  const auto encoder =
      train::make_text_encoder(o.model, tok::resolve_chat_template(o.chat_template, adapters.dirs(), o.model));
  train::DatasetOptions dopt;
  dopt.seq_len = o.seq_len > 0 ? o.seq_len : m.config().max_position_embeddings;  // .txt block size
  dopt.vocab_size = m.config().vocab_size;
  dopt.encoder = encoder ? &*encoder : nullptr;
  dopt.truncate = false;
  const auto data = train::Dataset::load(o.data, dopt);
  train::ProgressOptions popt;
  popt.label = "sequence";
  popt.quiet = o.quiet || data.size() < 16;  // a bar only for work long enough to watch
  train::ProgressBar bar(data.size(), popt);
  auto r = train::evaluate_examples(m, data, adapters.hook(), o.seq_len,
                                    [&](int64_t done, int64_t) { bar.update(done); });
  bar.finish();
  if (o.json) {
    nlohmann::json j{{"loss", r.loss}, {"perplexity", r.perplexity}, {"tokens", r.tokens}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("loss %.6f  perplexity %.4f  tokens %lld  sequences %lld\n", r.loss, r.perplexity,
                static_cast<long long>(r.tokens), static_cast<long long>(r.sequences));
  }
  return 0;
}

RegisterCommand reg{{"eval", "Loss and perplexity of a model (with adapters) on a dataset",
                     [](CLI::App& app) {
                       auto o = std::make_shared<EvalOptions>();
                       app.add_option("--model", o->model, "Hugging Face model folder")->required();
                       app.add_option("--adapter", o->adapters, "Adapter folder, optionally DIR:SCALE (repeatable)");
                       app.add_option("--data", o->data, "Data as train takes it: JSONL ({\"input_ids\", \"labels\"?}, {\"text\"}, {\"prompt\", \"completion\"}, {\"messages\"}; one sequence a line) or .txt")->required();
                       app.add_option("--seq-len", o->seq_len, "Split longer sequences into windows of L tokens")
                           ->check(CLI::PositiveNumber);
                       app.add_flag("--json", o->json, "Print one JSON object");
                       app.add_option("--chat-template", o->chat_template,
                                      "Template for {\"messages\"} data: a built-in or a Jinja file (default: the "
                                      "first adapter's chat_template.jinja, else the model's)");
                       app.add_flag("--quiet", o->quiet, "No progress bar");
                       app.add_option("--device", o->device, "cpu or cuda[:N] (bf16 on CUDA)")->capture_default_str();
                       app.add_option("--quantize", o->quantize,
                                      "none, or nf4: the blocks' linear weights in 4-bit NormalFloat (as train --quantize)")
                           ->capture_default_str();
                       return [o] { return run_eval(*o); };
                     }}};

}  // namespace
}  // namespace lowrank::cli
