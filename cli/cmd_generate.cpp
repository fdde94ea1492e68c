// lowrank generate: text generation with a model and optional live (unmerged) adapters.
#include <cstdio>
#include <fstream>
#include <optional>
#include <string>

#include "command.h"
#include "lowrank/core/device_memory.h"
#include "lowrank/core/error.h"
#include "lowrank/infer/batch_generator.h"
#include "lowrank/infer/generator.h"
#include "lowrank/io/files.h"
#include "lowrank/io/jsonl.h"
#include "lowrank/lora/adapter_set.h"
#include "lowrank/tokenizer/chat_template.h"
#include "lowrank/tokenizer/incremental_decoder.h"
#include "lowrank/tokenizer/tokenizer.h"
#include "lowrank/train/progress.h"
#include "lowrank/train/sequences.h"

namespace lowrank::cli {
namespace {

struct GenerateArgs {
  std::string model, prompt, input, output, chat_template;
  std::vector<std::string> adapters;
  infer::GenerateOptions gen;
  bool max_new_given = false;
  bool prompt_given = false;
  bool chat = false;
  bool quiet = false;
  std::string device = "cpu";
  std::string quantize = "none";
  int64_t batch_size = 64;
};

std::optional<tok::Tokenizer> load_tokenizer(const std::string& dir) {
  namespace fs = std::filesystem;
  if (io::file_exists((fs::path(dir) / "tokenizer.json").string()) ||
      io::file_exists((fs::path(dir) / "vocab.json").string()))
    return tok::Tokenizer::load(dir);
  return std::nullopt;
}

// Prompt text -> ids: the chat template (with --chat: `chat_template`) or the tokenizer with its
// special tokens.
std::vector<int32_t> encode_prompt(const GenerateArgs& a, const std::optional<tok::Tokenizer>& tk,
                                   const std::optional<std::string>& chat_template, const std::string& text) {
  if (!tk) throw error(a.model, ": no tokenizer.json, so text prompts cannot be encoded (give input_ids)");
  if (!a.chat) return tk->encode(text, true);
  nlohmann::json messages = nlohmann::json::array({{{"role", "user"}, {"content", text}}});
  nlohmann::json cfg = tk->config();
  if (chat_template) cfg["chat_template"] = *chat_template;
  const std::string rendered = tok::apply_chat_template(cfg, messages, true);  // Error naming the built-ins if none
  return tk->encode(rendered, false);  // the template already holds the special tokens
}

int run_generate(GenerateArgs& a) {
  if (a.prompt_given == !a.input.empty()) throw error("give exactly one of --prompt or --input");
  if (a.prompt_given && a.prompt.empty()) throw error("--prompt is empty");
  if (!a.input.empty() && a.output.empty()) throw error("--input needs --output");
  if (a.gen.max_new_tokens <= 0) throw error("--max-new-tokens must be positive");
  if (a.batch_size <= 0) throw error("--batch-size must be positive");
  const Device device = parse_device(a.device);
  check_device(device, "--device " + a.device);
  model::Model m = model::Model::load(a.model, device, device.is_cuda() ? DType::BF16 : DType::F32,
                                      model::inference_quantization(a.quantize, device, a.model));
  lora::AdapterSet adapters(a.adapters, m);
  auto tk = load_tokenizer(a.model);
  // --chat-template, else the first adapter's chat_template.jinja, else the model folder's.
  const std::optional<std::string> chat_template =
      a.chat ? tok::resolve_chat_template(a.chat_template, adapters.dirs(), a.model) : std::nullopt;
  a.gen.eos_ids = infer::model_eos_ids(m.config());
  if (a.gen.eos_ids.empty() && !a.max_new_given)
    throw error(a.model, ": the model declares no eos_token_id (config.json / generation_config.json), so ",
                "generation would only stop at the length limit; pass --max-new-tokens explicitly");
  a.gen.sampling.validate();
  infer::Generator gen(m, adapters.hook());

  if (a.prompt_given) {
    auto ids = encode_prompt(a, tk, chat_template, a.prompt);
    std::optional<tok::IncrementalDecoder> text;
    if (tk) text.emplace(*tk, true);
    auto print = [](const std::string& piece) { std::fwrite(piece.data(), 1, piece.size(), stdout); };
    gen.generate(ids, a.gen, [&](int32_t id) {  // stream: each token's text once it is whole
      if (text) print(text->add(id));
      else std::printf("%d ", id);
      std::fflush(stdout);
    });
    if (text) print(text->finish());
    std::printf("\n");
    return 0;
  }
  // Every line is read (and checked) first; then they are decoded together through the paged KV
  // cache (continuous batching, --batch-size at once).
  std::vector<nlohmann::json> records;
  std::vector<std::vector<int32_t>> prompts;
  io::for_each_jsonl(a.input, [&](int64_t, const nlohmann::json& rec) {
    std::vector<int32_t> ids;
    if (rec.contains("input_ids")) ids = train::parse_input_ids(rec, m.config().vocab_size);
    else if (rec.contains("prompt") && rec["prompt"].is_string()) ids = encode_prompt(a, tk, chat_template, rec["prompt"].get<std::string>());
    else throw error("expected \"prompt\" (a string) or \"input_ids\"");
    infer::generation_budget(m.config(), ids, a.gen.max_new_tokens);  // the line's own error, with its number
    records.push_back(rec);
    prompts.push_back(std::move(ids));
  });
  infer::BatchOptions b;
  b.max_batch = a.batch_size;
  train::ProgressOptions popt;
  popt.label = "line";
  popt.quiet = a.quiet || prompts.size() < 16;  // a bar only for work long enough to watch
  train::ProgressBar bar(static_cast<int64_t>(prompts.size()), popt);
  int64_t done = 0, tokens = 0;
  b.on_token = [&](size_t, int32_t) { ++tokens; };
  b.on_done = [&](size_t) {
    bar.update(++done, {.tokens = tokens});
    tokens = 0;
  };
  const std::vector<std::vector<int32_t>> outputs = infer::generate_batch(m, adapters.hook(), prompts, a.gen, b);
  bar.finish();
  std::string lines;
  for (size_t i = 0; i < records.size(); ++i) {
    nlohmann::json o = records[i];
    o["output_ids"] = outputs[i];
    if (tk) o["text"] = tk->decode(outputs[i], true);
    lines += o.dump() + "\n";
  }
  io::write_file_atomic(a.output, lines);
  return 0;
}

RegisterCommand reg{{"generate", "Generate text with a model and optional adapters (unmerged)",
                     [](CLI::App& app) {
                       auto a = std::make_shared<GenerateArgs>();
                       app.add_option("--model", a->model, "Hugging Face model folder")->required();
                       app.add_option("--adapter", a->adapters, "Adapter folder, optionally DIR:SCALE (repeatable)");
                       app.add_option("--prompt", a->prompt, "Prompt text (the output streams to stdout)")
                           ->each([a](const std::string&) { a->prompt_given = true; });
                       app.add_option("--input", a->input, "JSONL of {\"prompt\"} or {\"input_ids\"} lines");
                       app.add_option("--output", a->output, "JSONL output for --input");
                       app.add_option("--max-new-tokens", a->gen.max_new_tokens, "Most tokens to generate")
                           ->capture_default_str()
                           ->each([a](const std::string&) { a->max_new_given = true; });
                       app.add_flag("--greedy", a->gen.sampling.greedy, "Argmax decoding");
                       app.add_option("--temperature", a->gen.sampling.temperature)->capture_default_str();
                       app.add_option("--top-k", a->gen.sampling.top_k, "0: off")->capture_default_str();
                       app.add_option("--top-p", a->gen.sampling.top_p, "1: off")->capture_default_str();
                       app.add_option("--repetition-penalty", a->gen.sampling.repetition_penalty)->capture_default_str();
                       app.add_option("--min-p", a->gen.sampling.min_p,
                                      "Drop tokens less likely than this fraction of the most likely (0: off)")
                           ->capture_default_str();
                       app.add_option("--presence-penalty", a->gen.sampling.presence_penalty,
                                      "OpenAI's: subtracted once from each generated token's logit, in [-2, 2]")
                           ->capture_default_str();
                       app.add_option("--frequency-penalty", a->gen.sampling.frequency_penalty,
                                      "OpenAI's: subtracted per occurrence in the generated tokens, in [-2, 2]")
                           ->capture_default_str();
                       app.add_option("--seed", a->gen.sampling.seed)->capture_default_str();
                       app.add_option("--device", a->device, "cpu or cuda[:N] (bf16 on CUDA)")->capture_default_str();
                       app.add_option("--quantize", a->quantize,
                                      "none, or nf4: the blocks' linear weights in 4-bit NormalFloat (as train --quantize)")
                           ->capture_default_str();
                       app.add_option("--batch-size", a->batch_size,
                                      "With --input: lines decoded together (continuous batching)")
                           ->capture_default_str();
                       app.add_flag("--chat", a->chat, "Format the prompt with the model's chat template");
                       app.add_flag("--quiet", a->quiet, "With --input: no progress bar");
                       app.add_option("--chat-template", a->chat_template,
                                      "Template for --chat: a built-in (llama3, chatml, llama2, mistral, gemma, qwen3) "
                                      "or a Jinja file (default: the first adapter's chat_template.jinja, else the model's)");
                       return [a] { return run_generate(*a); };
                     }}};

}  // namespace
}  // namespace lowrank::cli
