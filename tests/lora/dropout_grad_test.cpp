// LoRA gradients with dropout active, against central finite differences of the loss: with the
// dropout stream reset before every pass, the loss is a deterministic function of A and B, so the
// backward (which rebuilds drop(x) from the saved mask) must match the numerical derivative.
#include <gtest/gtest.h>

#include <cmath>

#include "lowrank/lora/lora_hook.h"
#include "lowrank/model/backward.h"
#include "test_paths.h"

using namespace lowrank;

namespace {

// Checks the gradients of LoRA (r = 2, dropout 0.3) on `targets` against finite differences; returns
// how far one forward pass moved the dropout stream.
uint64_t expect_dropout_gradients_match(const std::vector<std::string>& targets, bool per_input) {
  model::Model m = model::Model::load(test::model_fixture("llama"));
  lora::LoraConfig c;
  c.r = 2;
  c.alpha = 4;
  c.dropout = 0.3;
  c.dropout_per_input = per_input;
  c.target_modules = targets;
  Rng init(3);
  lora::Adapter a = lora::Adapter::create(m, c, init);
  Rng fill(4);
  for (auto& p : a.pairs)  // B = 0 at init would leave dA = 0: give the product a value
    for (int64_t i = 0; i < p.B.numel(); ++i) p.B.f32()[i] = 0.5f * fill.normal();
  a.allocate_grads();
  Rng drop(5);
  lora::LoraHook hook({{&a, 1.0}});
  hook.set_training(true, &drop);
  const model::TokenBatch batch{{1, 5, 9, 13, 2, 7, 3, 11, 4, 8, 6, 10}, 2, 6};
  const auto targets_ids = model::shift_labels(batch.ids, 2, 6);
  // Σ NLL with the dropout stream at its start: the same masks every pass.
  auto loss = [&](bool checkpointing = false) {
    drop = Rng(5);
    for (auto& p : a.pairs) {
      p.grad_A.fill_(0.0f);
      p.grad_B.fill_(0.0f);
    }
    return model::forward_backward(m, batch, targets_ids, 1.0f, &hook, nullptr, checkpointing).nll_sum;
  };
  loss(true);  // checkpointed: the replays draw the first forward's masks again
  std::vector<Tensor> replayed;
  for (auto& p : a.pairs) replayed.push_back(p.grad_A.clone());
  loss();
  const uint64_t drawn = drop.offset() - Rng(5).offset();
  std::vector<Tensor> dA, dB;
  for (auto& p : a.pairs) {
    dA.push_back(p.grad_A.clone());
    dB.push_back(p.grad_B.clone());
  }
  for (size_t k = 0; k < a.pairs.size(); ++k) {
    float worst = 0;
    for (int64_t i = 0; i < dA[k].numel(); ++i) worst = std::max(worst, std::fabs(replayed[k].f32()[i] - dA[k].f32()[i]));
    EXPECT_LE(worst, 1e-6f) << a.pairs[k].module << ": dA checkpointed";
  }
  const float eps = 1e-2f;
  int checked = 0;
  for (size_t k = 0; k < a.pairs.size(); ++k) {
    for (auto [t, g] : {std::pair{&a.pairs[k].A, &dA[k]}, std::pair{&a.pairs[k].B, &dB[k]}}) {
      for (int64_t i = 0; i < t->numel(); i += std::max<int64_t>(1, t->numel() / 5)) {
        float& w = t->f32()[i];
        const float w0 = w;
        w = w0 + eps;
        const double up = loss();
        w = w0 - eps;
        const double down = loss();
        w = w0;
        const double numeric = (up - down) / (2.0 * eps), analytic = g->f32()[i];
        EXPECT_NEAR(analytic, numeric, 2e-2 * std::max(1.0, std::fabs(numeric)))
            << a.pairs[k].module << (t == &a.pairs[k].A ? " A[" : " B[") << i << "]";
        ++checked;
      }
    }
  }
  EXPECT_GE(checked, 20);
  return drawn;
}

TEST(LoraDropout, GradientsMatchFiniteDifferences) {
  const model::ModelConfig c = model::ModelConfig::load(test::model_fixture("llama"));
  const uint64_t mask = 12 * static_cast<uint64_t>(c.hidden_size);  // one mask over the 12 tokens' input
  EXPECT_EQ(expect_dropout_gradients_match({"q_proj", "v_proj"}, false), 2 * c.num_layers * mask)
      << "a mask per projection";
}

// dropout_per_input: q, k and v share one mask of their input, so one forward draws a third of the
// per-projection draws, and the backward must use that one mask for all three.
TEST(LoraDropout, OneMaskPerInputMatchesFiniteDifferences) {
  const model::ModelConfig c = model::ModelConfig::load(test::model_fixture("llama"));
  const uint64_t mask = 12 * static_cast<uint64_t>(c.hidden_size);
  EXPECT_EQ(expect_dropout_gradients_match({"q_proj", "k_proj", "v_proj"}, true), c.num_layers * mask)
      << "one mask per layer's attention input";
  EXPECT_EQ(expect_dropout_gradients_match({"q_proj", "k_proj", "v_proj"}, false), 3 * c.num_layers * mask);
}

}  // namespace
