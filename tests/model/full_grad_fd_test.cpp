// Full fine-tuning gradients of what the newer families add (Gemma's (1 + w) and post-block norms,
// q/k norms, √d embedding scale, final logit soft-capping; Phi-3's fused qkv_proj and gate_up_proj)
// against central finite differences of the loss. (Their LoRA gradients are compared with PEFT in
// grad_parity_test.cpp; there is no PyTorch full-gradient fixture for them.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "lowrank/model/backward.h"
#include "lowrank/train/sequences.h"
#include "test_paths.h"

using namespace lowrank;

namespace {

bool family_specific(const std::string& name) {
  for (const char* part : {"post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm",
                           "q_norm", "k_norm", "embed_tokens", "qkv_proj", "gate_up_proj", "model.norm"})
    if (name.find(part) != std::string::npos) return true;
  return false;
}

class FullGradFiniteDifference : public ::testing::TestWithParam<std::string> {};

TEST_P(FullGradFiniteDifference, FamilyWeightsMatchFiniteDifferences) {
  const std::string dir = test::model_fixture(GetParam());
  model::Model m = model::Model::load(dir);
  const auto ids = train::read_token_sequences(dir + "/eval.jsonl", m.config().vocab_size)[1];
  const int64_t T = static_cast<int64_t>(ids.size());
  const auto targets = model::shift_labels(ids, 1, T);
  model::ModelWeights g = model::zeros_like(m.weights());
  model::forward_backward(m, {ids, 1, T}, targets, 1.0f, nullptr, &g);  // d(Σ NLL)
  auto loss = [&] {
    int64_t n = 0;
    return model::labelled_nll(m, ids, targets, &n);
  };
  const auto weights = model::named_tensors(m.weights());
  const auto grads = model::named_tensors(g);
  ASSERT_EQ(weights.size(), grads.size());
  int checked = 0;
  for (size_t t = 0; t < weights.size(); ++t) {
    const auto& [name, w] = weights[t];
    ASSERT_EQ(name, grads[t].first);
    if (!family_specific(name)) continue;
    const Tensor& dw = grads[t].second;
    // The three largest gradients of the tensor: well above the finite differences' f32 noise.
    std::vector<int64_t> order(dw.numel());
    for (int64_t i = 0; i < dw.numel(); ++i) order[i] = i;
    std::partial_sort(order.begin(), order.begin() + 3, order.end(),
                      [&](int64_t a, int64_t b) { return std::fabs(dw.f32()[a]) > std::fabs(dw.f32()[b]); });
    const double max_grad = std::fabs(dw.f32()[order[0]]);
    ASSERT_GT(max_grad, 0) << name;
    for (int k = 0; k < 3; ++k) {
      float* p = const_cast<Tensor&>(w).f32() + order[k];
      const float orig = *p, h = 1e-2f;
      *p = orig + h;
      const double up = loss();
      *p = orig - h;
      const double down = loss();
      *p = orig;
      const double fd = (up - down) / (2.0 * h);
      EXPECT_NEAR(dw.f32()[order[k]], fd, 2e-2 * max_grad) << GetParam() << " " << name << " element " << order[k];
      ++checked;
    }
  }
  EXPECT_GE(checked, 9) << "the family-specific weights must have been found";
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FullGradFiniteDifference, ::testing::Values("gemma2", "gemma3", "phi3"));

}  // namespace
