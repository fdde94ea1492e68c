// LoRA variants beyond the gradients (grad_parity_test.cpp): merging DoRA and embedding layers
// equals applying them unmerged; PEFT's saved embedding weights are used on load; adapters we save
// load back to the same tensors.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "io/io_test_helpers.h"
#include "lowrank/io/files.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/lora/adapter.h"
#include "lowrank/lora/lora_hook.h"
#include "lowrank/lora/merge.h"
#include "lowrank/model/backward.h"
#include "lowrank/train/evaluate.h"
#include "lowrank/train/sequences.h"
#include "test_paths.h"

using namespace lowrank;

namespace {

double max_abs_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  double d = 0;
  for (int64_t i = 0; i < a.numel(); ++i) d = std::max(d, std::fabs(double(a.f32()[i]) - b.f32()[i]));
  return d;
}

// The eval loss of `case_name`'s fixture adapter unmerged, then merged into the weights.
std::pair<double, double> unmerged_and_merged(const std::string& case_name) {
  const std::string dir = test::fixture("lora/" + case_name);
  const std::string base = test::model_fixture(io::read_json(dir + "/expected.json")["base"].get<std::string>());
  model::Model m = model::Model::load(base);
  lora::Adapter a = lora::Adapter::load(dir + "/adapter", m);
  auto seqs = train::read_token_sequences(base + "/eval.jsonl", m.config().vocab_size);
  lora::LoraHook hook({{&a, 1.0}});
  const double unmerged = train::evaluate(m, seqs, &hook).loss;
  lora::merge_adapter(m, a, 1.0);
  return {unmerged, train::evaluate(m, seqs, nullptr).loss};
}

TEST(LoraVariants, DoraMergeEqualsUnmerged) {
  auto [unmerged, merged] = unmerged_and_merged("llama_dora");
  const double peft = io::read_json(test::fixture("lora/llama_dora/expected.json"))["eval_loss"].get<double>();
  EXPECT_NEAR(unmerged, peft, 1e-5 * peft);
  EXPECT_NEAR(merged, unmerged, 1e-5 * unmerged);
}

TEST(LoraVariants, EmbeddingAndLmHeadMergeEqualsUnmerged) {
  auto [unmerged, merged] = unmerged_and_merged("llama_embed_lm_head");
  EXPECT_NEAR(merged, unmerged, 1e-5 * unmerged);
}

TEST(LoraVariants, MergingATiedEmbeddingChangesTheLmHeadToo) {
  // As in PEFT: the tied lm_head is the embedding's tensor, so merge_and_unload changes both (the
  // unmerged model scores the lm_head with the frozen table).
  const std::string dir = test::fixture("lora/qwen2_tied_embed");
  model::Model m = model::Model::load(test::model_fixture("qwen2"));
  ASSERT_EQ(m.weights().lm_head.raw(), m.weights().embed.raw());
  const Tensor before = m.weights().lm_head.clone();
  lora::Adapter a = lora::Adapter::load(dir + "/adapter", m);
  lora::merge_adapter(m, a, 1.0);
  EXPECT_GT(max_abs_diff(m.weights().lm_head, before), 1e-3);
  EXPECT_EQ(m.weights().lm_head.raw(), m.weights().embed.raw());
}

TEST(LoraVariants, SavedEmbeddingBaseLayersAreUsedOnLoad) {
  // PEFT saves the frozen embed_tokens / lm_head next to an adapter that adapts them and loads
  // them back into the model: a changed copy must change the model.
  io::testing::ScratchDir d;
  const std::string src = test::fixture("lora/llama_embed_lm_head/adapter");
  std::filesystem::create_directories(d.file("a"));
  std::filesystem::copy_file(src + "/adapter_config.json", d.file("a/adapter_config.json"));
  auto file = io::SafetensorsFile::open(src + "/adapter_model.safetensors");
  std::vector<std::pair<std::string, Tensor>> tensors;
  const std::string embed_key = "base_model.model.model.embed_tokens.base_layer.weight";
  for (const auto& info : file.tensors()) {
    Tensor t = file.get(info.name).to(DType::F32).clone();
    if (info.name == embed_key) t.f32()[5] += 1.0f;
    tensors.emplace_back(info.name, t);
  }
  io::write_safetensors(d.file("a/adapter_model.safetensors"), tensors);
  model::Model m = model::Model::load(test::model_fixture("llama"));
  const float before = m.weights().embed.f32()[5];
  lora::Adapter a = lora::Adapter::load(d.file("a"), m);
  ASSERT_EQ(a.base_layers.size(), 2u);
  a.attach_base_layers(m);
  EXPECT_FLOAT_EQ(m.weights().embed.f32()[5], before + 1.0f);
}

TEST(LoraVariants, SavedAdaptersLoadBackEqual) {
  for (const char* c : {"llama_dora", "llama_embed_lm_head", "qwen2_tied_embed"}) {
    io::testing::ScratchDir d;
    const std::string dir = test::fixture(std::string("lora/") + c);
    const std::string base = test::model_fixture(io::read_json(dir + "/expected.json")["base"].get<std::string>());
    model::Model m = model::Model::load(base);
    lora::Adapter a = lora::Adapter::load(dir + "/adapter", m);
    a.save(d.file("saved"));
    lora::Adapter b = lora::Adapter::load(d.file("saved"), m);
    EXPECT_EQ(b.base_layers.size(), a.base_layers.size()) << c;
    auto pa = a.parameters(), pb = b.parameters();
    ASSERT_EQ(pa.size(), pb.size()) << c;
    for (size_t i = 0; i < pa.size(); ++i) {
      EXPECT_EQ(pa[i].name, pb[i].name);
      EXPECT_EQ(max_abs_diff(*pa[i].value, *pb[i].value), 0.0) << pa[i].name;
    }
    // PEFT's file keys exactly.
    auto want = io::SafetensorsFile::open(dir + "/adapter/adapter_model.safetensors");
    auto got = io::SafetensorsFile::open(d.file("saved/adapter_model.safetensors"));
    EXPECT_EQ(got.tensors().size(), want.tensors().size()) << c;
    for (const auto& info : want.tensors()) EXPECT_TRUE(got.contains(info.name)) << c << ": " << info.name;
  }
}

TEST(LoraVariants, NewDoraAdapterStartsAtTheBaseModel) {
  // B = 0 and m = ||W0||: the DoRA model equals the base model at step 0.
  model::Model m = model::Model::load(test::model_fixture("llama"));
  lora::LoraConfig c;
  c.r = 4;
  c.all_linear = true;
  c.use_dora = true;
  Rng rng(3);
  lora::Adapter a = lora::Adapter::create(m, c, rng);
  EXPECT_EQ(a.pairs.front().kind, lora::VariantKind::Dora);
  model::TokenBatch b{{1, 5, 9, 13, 17}, 1, 5};
  lora::LoraHook hook({{&a, 1.0}});
  EXPECT_LT(max_abs_diff(m.logits(b, &hook), m.logits(b)), 1e-5);
}

TEST(LoraVariants, DoraWithDropoutMatchesFiniteDifferencesAndCheckpointing) {
  // With LoRA dropout PEFT feeds the dropped input to both DoRA terms (the base one included). The
  // norm ||W0 + s·B·A|| is detached, so A's and B's gradients are by design not the loss's
  // derivatives (PEFT's fixtures check them); the magnitudes' are, and so are those of the trained
  // q/k/v biases below the DoRA layers (bias=all), which see DoRA only through its input gradient,
  // dropout backward included: both equal central differences under the same masks. A
  // checkpointed (replayed) backward gives the same gradients.
  model::Model m = model::Model::load(test::model_fixture("qwen2"));
  lora::LoraConfig c;
  c.r = 2;
  c.alpha = 4;
  c.dropout = 0.3;
  c.use_dora = true;
  c.target_modules = {"o_proj", "down_proj"};
  c.bias = lora::BiasMode::All;
  Rng rng(5);
  lora::Adapter a = lora::Adapter::create(m, c, rng);
  a.attach_biases(m);
  for (auto& p : a.pairs) {  // every term live: B != 0, m != ||W0 + s·B·A||
    for (int64_t i = 0; i < p.B.numel(); ++i) p.B.f32()[i] = 0.1f * rng.normal();
    for (int64_t i = 0; i < p.magnitude.numel(); ++i) p.magnitude.f32()[i] *= 1.0f + 0.2f * rng.normal();
  }
  std::vector<int32_t> ids;
  for (int i = 0; i < 16; ++i) ids.push_back((i * 37 + 11) % 300);
  const model::TokenBatch b{ids, 2, 8};
  const auto targets = model::shift_labels(ids, 2, 8);
  lora::LoraHook hook({{&a, 1.0}});
  auto loss = [&](bool checkpointing) {
    Rng drop(9);  // the same masks on every call
    hook.set_training(true, &drop);
    a.allocate_grads();
    auto r = model::forward_backward(m, b, targets, 1.0f / 14, &hook, nullptr, checkpointing);
    return r.nll_sum / 14;
  };
  loss(false);
  std::vector<Tensor> grads;
  for (auto& p : a.parameters()) grads.push_back(p.grad->clone());
  loss(true);
  auto params = a.parameters();
  for (size_t i = 0; i < params.size(); ++i)
    EXPECT_LT(max_abs_diff(*params[i].grad, grads[i]), 1e-6) << params[i].name << " with checkpointing";
  const float eps = 1e-2f;
  size_t checked = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string& name = params[i].name;
    const bool magnitude = name.find("lora_magnitude_vector") != std::string::npos;
    const bool qkv_bias = name.find("_proj.bias") != std::string::npos && name.find("layers.0.") != std::string::npos;
    if (!magnitude && !qkv_bias) continue;
    ++checked;
    for (int64_t k : {int64_t{0}, params[i].value->numel() / 2 + 1}) {
      float& v = params[i].value->f32()[k];
      const float keep = v;
      v = keep + eps;
      const double up = loss(false);
      v = keep - eps;
      const double down = loss(false);
      v = keep;
      const double fd = (up - down) / (2 * eps), got = grads[i].f32()[k];
      EXPECT_NEAR(got, fd, 2e-3 + 2e-2 * std::fabs(fd)) << params[i].name << "[" << k << "]";
    }
  }
  EXPECT_EQ(checked, 4u + 3u);  // 4 magnitudes, layer 0's q/k/v biases
}

}  // namespace
