// CPU inference throughput of a ~100M-parameter Llama-shaped random model: forward (prefill) at
// sequence length 512, and KV-cached decoding, without an adapter, with a live (unmerged) LoRA
// adapter, and merged. Prints numbers; no pass/fail.
//   bench_cpu_infer [--seq 512] [--decode 64] [--reps 3] [--rank 16] [--vocab 32000]
//                   [--model DIR]   a model folder instead of the random model
//                   [--save DIR]    write the random model as a model folder and stop
//                                   (bench/llamacpp_cpu.sh: the same weights for llama.cpp)
//                   [--save-dtype f32|bf16]   its weights' type (default f32)
//                   [--keep-bf16 1] a bf16 folder's projections kept in bf16 (Quantization::KeepBf16)
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#include "lowrank/core/rng.h"
#include "lowrank/io/files.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/infer/generator.h"
#include "lowrank/lora/adapter.h"
#include "lowrank/lora/lora_hook.h"
#include "lowrank/lora/merge.h"
#include "lowrank/model/random_model.h"
#include "lowrank/ops/ops.h"

using namespace lowrank;
using clock_type = std::chrono::steady_clock;

namespace {
double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

struct Numbers {
  double prefill_tps = 0, decode_tps = 0;
};

Numbers measure(const model::Model& m, model::ProjectionHook* hook, int64_t seq, int64_t decode, int reps) {
  Rng rng(1);
  std::vector<int32_t> ids(seq);
  for (auto& t : ids) t = static_cast<int32_t>(rng.below(m.config().vocab_size - 1));
  Numbers n;
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t = clock_type::now();
    Tensor h = m.hidden_states({ids, 1, seq}, hook);
    Tensor logits = m.project_vocab(h.slice_rows(seq - 1, seq));
    best = std::min(best, seconds_since(t));
  }
  n.prefill_tps = seq / best;
  infer::GenerateOptions o;
  o.max_new_tokens = decode;
  o.sampling.greedy = true;  // no eos: always `decode` tokens
  infer::Generator g(m, hook);
  std::vector<int32_t> prompt(ids.begin(), ids.begin() + 16);
  best = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t = clock_type::now();
    auto out = g.generate(prompt, o);
    best = std::min(best, seconds_since(t) / static_cast<double>(out.size()));
  }
  n.decode_tps = 1.0 / best;
  return n;
}
}  // namespace

int main(int argc, char** argv) {
  int64_t seq = 512, decode = 64, rank = 16, vocab = 32000;
  int reps = 3;
  std::string model_dir, save_dir, save_dtype = "f32";
  bool keep_bf16 = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--seq")) seq = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--vocab")) vocab = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--model")) model_dir = argv[i + 1];
    else if (!std::strcmp(argv[i], "--save")) save_dir = argv[i + 1];
    else if (!std::strcmp(argv[i], "--save-dtype")) save_dtype = argv[i + 1];
    else if (!std::strcmp(argv[i], "--keep-bf16")) keep_bf16 = std::atoi(argv[i + 1]) != 0;
    else if (!std::strcmp(argv[i], "--decode")) decode = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--rank")) rank = std::atoll(argv[i + 1]);
    else {
      std::fprintf(stderr, "error: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  // ~100M parameters: GPT-2-small-like widths in a Llama block (tied embeddings).
  auto cfg = model::llama_config(768, 12, 12, 12, 2048, vocab, 2048);
  model::Model m = model_dir.empty() ? model::random_model(cfg, 7)
                                     : model::Model::load(model_dir, Device::cpu(), DType::F32,
                                                          keep_bf16 ? model::Quantization::KeepBf16
                                                                    : model::Quantization::None);
  if (!save_dir.empty()) {
    std::filesystem::create_directories(save_dir);
    const DType dt = save_dtype == "bf16" ? DType::BF16 : DType::F32;
    auto tensors = model::checkpoint_tensors(cfg, m.weights());
    for (auto& [name, t] : tensors) t = t.to(dt);
    io::write_safetensors(save_dir + "/model.safetensors", tensors, {{"format", "pt"}});
    io::write_json_atomic(save_dir + "/config.json",
                          {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_size", 768},
                           {"num_hidden_layers", 12}, {"num_attention_heads", 12}, {"num_key_value_heads", 12},
                           {"head_dim", 64}, {"intermediate_size", 2048}, {"vocab_size", vocab},
                           {"max_position_embeddings", 2048}, {"rms_norm_eps", cfg.norm_eps}, {"rope_theta", cfg.rope.theta},
                           {"hidden_act", "silu"}, {"tie_word_embeddings", true},
                           {"torch_dtype", dt == DType::BF16 ? "bfloat16" : "float32"},
                           {"bos_token_id", 0}, {"eos_token_id", 1}});
    std::printf("wrote %s (%.1fM parameters)\n", save_dir.c_str(), m.parameter_count() / 1e6);
    return 0;
  }
  const auto& c = m.config();
  std::printf("model: %s, %.1fM parameters (hidden %lld, %lld layers, %lld heads, ffn %lld, vocab %lld)\n",
              model_dir.empty() ? "random Llama-shaped" : model_dir.c_str(), m.parameter_count() / 1e6,
              (long long)c.hidden_size, (long long)c.num_layers, (long long)c.num_heads, (long long)c.intermediate_size,
              (long long)c.vocab_size);
  std::printf("threads: OMP_NUM_THREADS=%s\n", std::getenv("OMP_NUM_THREADS") ? std::getenv("OMP_NUM_THREADS") : "(default)");
  lora::LoraConfig lc;
  lc.r = rank;
  lc.alpha = 2.0 * rank;
  lc.all_linear = true;
  Rng rng(3);
  lora::Adapter adapter = lora::Adapter::create(m, lc, rng);
  for (auto& p : adapter.pairs)  // nonzero B so the adapter does real work
    for (int64_t i = 0; i < p.B.numel(); ++i) p.B.f32()[i] = rng.normal() * 0.01f;
  lora::LoraHook hook({{&adapter, 1.0}});

  auto base = measure(m, nullptr, seq, decode, reps);
  auto live = measure(m, &hook, seq, decode, reps);
  lora::merge_adapter(m, adapter, 1.0);
  auto merged = measure(m, nullptr, seq, decode, reps);
  std::printf("%-34s %14s %14s\n", "configuration", "prefill tok/s", "decode tok/s");
  std::printf("%-34s %14.1f %14.2f\n", "base model", base.prefill_tps, base.decode_tps);
  std::printf("%-34s %14.1f %14.2f\n", ("LoRA r=" + std::to_string(rank) + " all-linear, unmerged").c_str(),
              live.prefill_tps, live.decode_tps);
  std::printf("%-34s %14.1f %14.2f\n", "LoRA merged", merged.prefill_tps, merged.decode_tps);
  std::printf("unmerged overhead vs merged: prefill %+.1f%%, decode %+.1f%%\n",
              100.0 * (merged.prefill_tps / live.prefill_tps - 1.0), 100.0 * (merged.decode_tps / live.decode_tps - 1.0));
  std::printf("forward at seq %lld: %.1f tokens/s (%.2f GFLOP/s at 2*N FLOPs per token)\n", (long long)seq,
              base.prefill_tps, base.prefill_tps * 2.0 * m.parameter_count() / 1e9);
  return 0;
}
