// LoRA and full fine-tuning gradients against PEFT + PyTorch (tests/reference/make_lora_fixtures.py,
// float64 reference): losses to 1e-5 relative, every gradient to 1e-4 of its largest element. The
// variants (DoRA with its magnitudes, embedding and lm_head LoRA, a tied embedding) take the same path.
#include <gtest/gtest.h>

#include <cmath>

#include "lowrank/io/files.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/lora/adapter.h"
#include "lowrank/lora/lora_hook.h"
#include "lowrank/lora/lora_variant.h"
#include "lowrank/model/backward.h"
#include "lowrank/ops/ops.h"
#include "lowrank/train/evaluate.h"
#include "lowrank/train/sequences.h"
#include "test_paths.h"

using namespace lowrank;

namespace {

struct Batch {
  model::TokenBatch tokens;
  std::vector<int32_t> targets;
  int64_t counted = 0;
};

Batch read_batch(const nlohmann::json& j) {
  Batch b;
  auto ids = j["input_ids"].get<std::vector<std::vector<int32_t>>>();
  auto labels = j["labels"].get<std::vector<std::vector<int32_t>>>();
  b.tokens.batch = static_cast<int64_t>(ids.size());
  b.tokens.seq = static_cast<int64_t>(ids[0].size());
  std::vector<int32_t> flat_labels;
  for (size_t r = 0; r < ids.size(); ++r) {
    b.tokens.ids.insert(b.tokens.ids.end(), ids[r].begin(), ids[r].end());
    flat_labels.insert(flat_labels.end(), labels[r].begin(), labels[r].end());
  }
  b.targets = model::shift_labels(flat_labels, b.tokens.batch, b.tokens.seq);
  for (int32_t t : b.targets) b.counted += t != -100;
  return b;
}

void expect_close(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  float max_ref = 0, max_err = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    max_ref = std::max(max_ref, std::fabs(want.f32()[i]));
    max_err = std::max(max_err, std::fabs(want.f32()[i] - got.f32()[i]));
  }
  EXPECT_LE(max_err, 1e-4f * max_ref) << what << ": max error " << max_err << ", max |grad| " << max_ref;
  EXPECT_GT(max_ref, 0.0f) << what << " (a zero reference gradient proves nothing)";
}

class LoraGradParity : public ::testing::TestWithParam<std::string> {};

TEST_P(LoraGradParity, LossGradientsAndEvalMatchPeft) {
  const std::string dir = test::fixture("lora/" + GetParam());
  auto expected = io::read_json(dir + "/expected.json");
  const std::string base = test::model_fixture(expected["base"].get<std::string>());
  model::Model m = model::Model::load(base);
  lora::Adapter adapter = lora::Adapter::load(dir + "/adapter", m);
  adapter.attach_biases(m);
  adapter.attach_base_layers(m);
  adapter.allocate_grads();
  EXPECT_EQ(adapter.parameter_count(), expected["trainable"].get<int64_t>());
  Batch b = read_batch(io::read_json(dir + "/batch.json"));
  lora::LoraHook hook({{&adapter, 1.0}});
  hook.set_training(true);
  auto r = model::forward_backward(m, b.tokens, b.targets, 1.0f / b.counted, &hook);
  EXPECT_EQ(r.tokens, b.counted);
  const double want_loss = expected["loss"].get<double>();
  EXPECT_NEAR(r.nll_sum / r.tokens, want_loss, 1e-5 * want_loss);

  auto grads = io::SafetensorsFile::open(dir + "/grads.safetensors");
  size_t compared = 0;
  for (auto& p : adapter.pairs)
    for (const auto& t : lora::lora_variant(p.kind).tensors(p)) {
      // PEFT's gradients name DoRA's magnitude after its module: "...lora_magnitude_vector.weight".
      std::string key = lora::peft_key(p.module, t.key);
      if (!grads.contains(key)) key += ".weight";
      expect_close(*t.grad, grads.get(key), p.module + " d" + t.name);
      ++compared;
    }
  for (const auto& bias : adapter.biases) {
    expect_close(bias.grad, grads.get(adapter.bias_key(bias)), bias.module + " dbias");
    ++compared;
  }
  EXPECT_EQ(compared, grads.tensors().size()) << "every PEFT gradient must have been compared";

  hook.set_training(false);
  auto seqs = train::read_token_sequences(base + "/eval.jsonl", m.config().vocab_size);
  auto ev = train::evaluate(m, seqs, &hook);
  const double want_eval = expected["eval_loss"].get<double>();
  EXPECT_NEAR(ev.loss, want_eval, 1e-5 * want_eval);
}

INSTANTIATE_TEST_SUITE_P(Peft, LoraGradParity,
                         ::testing::Values("llama_all_linear", "qwen2_qv_bias", "gpt2_conv1d", "llama_rslora_paths",
                                           "qwen3_all_linear", "gemma2_all_linear", "gemma3_all_linear",
                                           "phi3_all_linear", "llama_dora", "llama_embed_lm_head",
                                           "qwen2_tied_embed", "gemma2_embed", "gemma3_embed"));

TEST(FullGradParity, EveryWeightGradientMatchesPyTorch) {
  const std::string dir = test::fixture("lora/llama_full");
  auto expected = io::read_json(dir + "/expected.json");
  model::Model m = model::Model::load(test::model_fixture("llama"));
  Batch b = read_batch(io::read_json(dir + "/batch.json"));
  model::ModelWeights g = model::zeros_like(m.weights());
  auto r = model::forward_backward(m, b.tokens, b.targets, 1.0f / b.counted, nullptr, &g);
  const double want_loss = expected["loss"].get<double>();
  EXPECT_NEAR(r.nll_sum / r.tokens, want_loss, 1e-5 * want_loss);
  auto ref = io::SafetensorsFile::open(dir + "/grads.safetensors");
  auto ours = model::checkpoint_tensors(m.config(), g);
  EXPECT_EQ(ours.size(), ref.tensors().size());
  for (const auto& [name, t] : ours) expect_close(t, ref.get(name), name);
}

// An adapter with `targets` and trained copies of embed_tokens and lm_head (train
// --modules-to-save), attached to `m` with its gradients allocated.
lora::Adapter adapter_saving_embedding_layers(model::Model& m, const std::string& targets) {
  lora::LoraConfig c;
  c.set_targets(targets);
  c.modules_to_save = {"embed_tokens", "lm_head"};
  Rng rng(3);
  lora::Adapter a = lora::Adapter::create(m, c, rng);
  a.attach_saved_modules(m);
  a.allocate_grads();
  return a;
}

// A LoRA run with modules_to_save (train --modules-to-save): while B is zero the model is the base,
// so PEFT's gradients of its copies of embed_tokens and lm_head are PyTorch's full-model gradients
// of those two weights (the llama_full fixture).
TEST(ModulesToSaveGrads, EqualPyTorchsFullGradientsOfThoseLayers) {
  const std::string dir = test::fixture("lora/llama_full");
  model::Model m = model::Model::load(test::model_fixture("llama"));
  lora::Adapter a = adapter_saving_embedding_layers(m, "q_proj,v_proj");
  ASSERT_EQ(a.saved_modules.size(), 2u);
  Batch b = read_batch(io::read_json(dir + "/batch.json"));
  lora::LoraHook hook({{&a, 1.0}});
  hook.set_training(true);
  auto r = model::forward_backward(m, b.tokens, b.targets, 1.0f / b.counted, &hook);
  const double want_loss = io::read_json(dir + "/expected.json")["loss"].get<double>();
  EXPECT_NEAR(r.nll_sum / r.tokens, want_loss, 1e-5 * want_loss);
  auto ref = io::SafetensorsFile::open(dir + "/grads.safetensors");
  for (const auto& s : a.saved_modules) expect_close(s.grad, ref.get(s.module + ".weight"), s.module);
}

// A tied pair with a scaled embedding (Gemma 2): each copy gets its own layer's gradient, which
// add up to the tied weight's gradient of full fine-tuning.
TEST(ModulesToSaveGrads, TiedCopiesSplitTheTiedGradient) {
  model::Model full = model::Model::load(test::model_fixture("gemma2"));
  model::Model m = model::Model::load(test::model_fixture("gemma2"));
  ASSERT_EQ(m.weights().lm_head.raw(), m.weights().embed.raw()) << "a tied fixture";
  model::TokenBatch tokens{{}, 2, 9};
  std::vector<int32_t> targets;
  for (int64_t i = 0; i < tokens.rows(); ++i) {
    tokens.ids.push_back(static_cast<int32_t>((i * 37 + 5) % m.config().vocab_size));
    targets.push_back(i % tokens.seq == tokens.seq - 1 ? -100 : static_cast<int32_t>((i * 11 + 3) % m.config().vocab_size));
  }
  model::ModelWeights g = model::zeros_like(full.weights());
  model::forward_backward(full, tokens, targets, 0.1f, nullptr, &g);

  lora::Adapter a = adapter_saving_embedding_layers(m, "none");
  EXPECT_NE(m.weights().lm_head.raw(), m.weights().embed.raw()) << "the copies untie the pair";
  lora::LoraHook hook({{&a, 1.0}});
  hook.set_training(true);
  model::forward_backward(m, tokens, targets, 0.1f, &hook);
  ASSERT_EQ(a.saved_modules.size(), 2u);
  Tensor sum = a.saved_modules[0].grad.clone();
  ops::add_(sum, a.saved_modules[1].grad);
  expect_close(sum, g.embed, "embed + lm_head copies' gradients");
  for (const auto& s : a.saved_modules) {
    float largest = 0;
    for (int64_t i = 0; i < s.grad.numel(); ++i) largest = std::max(largest, std::fabs(s.grad.f32()[i]));
    EXPECT_GT(largest, 0.0f) << s.module;
  }
}

}  // namespace
