// Non-finite gradients skip the step (parameters and optimizer state unchanged), and sharded model
// export loads back to the same model.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <memory>
#include <tuple>

#include "io/io_test_helpers.h"
#include "lowrank/lora/lora_hook.h"
#include "lowrank/model/export.h"
#include "lowrank/train/step.h"
#include "test_paths.h"

using namespace lowrank;

namespace {
// A LoRA r = 2 adapter on the llama fixture (B set to b_start where nonzero), its training hook,
// parameters and AdamW (lr 1e-2, clip 1), ready for train::train_step(ctx, ...).
struct LoraTraining {
  model::Model m = model::Model::load(test::model_fixture("llama"));
  lora::Adapter adapter;
  lora::LoraHook hook;
  std::vector<train::ParamRef> params;
  train::AdamW opt{{1e-2, 0.9, 0.999, 1e-8, 0.0}};
  train::StepContext ctx{&m, &hook, nullptr, &params, &opt, 1.0};

  LoraTraining(uint64_t seed, float b_start = 0)
      : adapter(make_adapter(m, seed, b_start)), hook({{&adapter, 1.0}}), params(train::lora_params(adapter)) {
    hook.set_training(true);
  }

  static lora::Adapter make_adapter(model::Model& m, uint64_t seed, float b_start) {
    Rng rng(seed);
    lora::LoraConfig lc;
    lc.r = 2;
    lora::Adapter a = lora::Adapter::create(m, lc, rng);
    if (b_start != 0)
      for (auto& p : a.pairs) p.B.fill_(b_start);
    a.allocate_grads();
    return a;
  }
};
}  // namespace

TEST(TrainStep, NonFiniteGradientsSkipTheStep) {
  LoraTraining t(1);
  auto& [m, adapter, hook, params, opt, ctx] = t;
  auto data = train::Dataset::from_examples({{{1, 2, 3, 4, 5, 6}, {1, 2, 3, 4, 5, 6}}});
  auto mb = train::make_micro_batch(data, {0});
  auto ok = train::train_step(ctx, {mb}, 1e-2);
  ASSERT_FALSE(ok.skipped);
  EXPECT_EQ(opt.steps(), 1);
  adapter.pairs[0].B.f32()[0] = NAN;  // poisons the forward, hence every gradient
  std::vector<Tensor> before;
  for (auto& p : params) before.push_back(p.param.clone());
  auto state_before = opt.state_tensors();
  std::vector<Tensor> moments;
  for (auto& [n, t] : state_before) moments.push_back(t.clone());
  auto bad = train::train_step(ctx, {mb}, 1e-2);
  EXPECT_TRUE(bad.skipped);
  EXPECT_EQ(opt.steps(), 1);
  for (size_t i = 1; i < params.size(); ++i)  // params[0] is A of the poisoned pair; B holds the NaN
    for (int64_t j = 0; j < before[i].numel(); ++j)
      ASSERT_TRUE(std::memcmp(&before[i].f32()[j], &params[i].param.f32()[j], 4) == 0) << params[i].name;
  auto state_after = opt.state_tensors();
  for (size_t i = 0; i < moments.size(); ++i)
    ASSERT_EQ(std::memcmp(moments[i].raw(), state_after[i].second.raw(), moments[i].nbytes()), 0);
}

TEST(ModelExport, ShardedFolderLoadsBackIdentically) {
  io::testing::ScratchDir d;
  model::Model m = model::Model::load(test::model_fixture("gpt2"));
  model::ExportOptions o;
  o.max_shard_bytes = 200000;
  model::write_model_folder(m, test::model_fixture("gpt2"), d.path(), o);
  EXPECT_TRUE(std::filesystem::exists(d.file("model.safetensors.index.json")));
  EXPECT_FALSE(std::filesystem::exists(d.file("model.safetensors")));
  model::Model back = model::Model::load(d.path());
  model::TokenBatch b{{1, 2, 3, 4, 5}, 1, 5};
  Tensor a = m.logits(b), c = back.logits(b);
  for (int64_t i = 0; i < a.numel(); ++i) ASSERT_EQ(a.f32()[i], c.f32()[i]);
}

TEST(Checkpointing, GradientsEqualTheStoredActivationsPath) {
  for (const char* fixture : {"llama", "gpt2", "qwen3", "gemma2"})  // gemma2: sandwich norms, o and down replayed
  for (double dropout : {0.2, 0.0}) {  // 0.2: the replay must draw the same masks; 0: q/k/v and gate/up as groups
    model::Model m = model::Model::load(test::model_fixture(fixture));
    lora::LoraConfig lc;
    lc.r = 4;
    lc.all_linear = true;
    lc.dropout = dropout;
    std::vector<lora::Adapter> adapters;
    for (bool ckpt : {false, true}) {
      Rng init(5), drop(6);
      lora::Adapter a = lora::Adapter::create(m, lc, init);
      for (auto& p : a.pairs)
        for (int64_t i = 0; i < p.B.numel(); ++i) p.B.f32()[i] = 0.05f * static_cast<float>((i % 7) - 3);
      a.allocate_grads();
      lora::LoraHook hook({{&a, 1.0}});
      hook.set_training(true, &drop);
      auto data = train::Dataset::from_examples({{{1, 2, 3, 4, 5, 6, 7, 8}, {1, 2, 3, 4, 5, 6, 7, 8}},
                                                 {{9, 8, 7, 6, 5, 4, 3, 2}, {-100, -100, 7, 6, 5, 4, 3, 2}}});
      auto mb = train::make_micro_batch(data, {0, 1});
      if (ckpt) {  // a checkpointed forward keeps no decoder-layer activations in the hook
        hook.set_checkpointed_forward(true);
        m.hidden_states(mb.tokens, &hook);
        hook.set_checkpointed_forward(false);
        EXPECT_EQ(hook.saved_bytes(), 0u) << fixture;
      } else {
        m.hidden_states(mb.tokens, &hook);
        EXPECT_GT(hook.saved_bytes(), 0u) << fixture;
      }
      hook.set_training(true, &drop);  // forget that forward (and restart the dropout draws)
      drop = Rng(6);
      model::forward_backward(m, mb.tokens, mb.targets, 1.0f / mb.counted, &hook, nullptr, ckpt);
      EXPECT_EQ(hook.saved_bytes(), 0u) << fixture << ": the pass's state stayed in its cache, none in the hook";
      adapters.push_back(std::move(a));
    }
    for (size_t i = 0; i < adapters[0].pairs.size(); ++i)
      for (auto [x, y] : {std::pair{adapters[0].pairs[i].grad_A, adapters[1].pairs[i].grad_A},
                          std::pair{adapters[0].pairs[i].grad_B, adapters[1].pairs[i].grad_B}})
        for (int64_t j = 0; j < x.numel(); ++j)
          ASSERT_EQ(x.f32()[j], y.f32()[j]) << fixture << " " << adapters[0].pairs[i].module;
  }
}

// Counts, per target, the projections run in full and those a checkpointing replay skipped.
struct CountingHook : lora::LoraHook {
  using LoraHook::LoraHook;
  std::map<Target, int> full, input_only;
  void on_projection(int layer, Target target, const model::Linear& base, const Tensor& x, Tensor& y) override {
    ++full[target];
    LoraHook::on_projection(layer, target, base, x, y);
  }
  bool on_projection_before(int layer, Target target, const model::Linear& base, const Tensor& x,
                            const Tensor& residual, Tensor& y) override {
    ++full[target];
    return LoraHook::on_projection_before(layer, target, base, x, residual, y);
  }
  bool on_projection_input_only(int layer, Target target, const model::Linear& base, const Tensor& x) override {
    const bool skipped = LoraHook::on_projection_input_only(layer, target, base, x);
    input_only[target] += skipped;
    return skipped;
  }
};

// The replay recomputes what the backward reads, not the o and down projections' outputs (the
// residual stream after them is kept): their frozen GEMMs run once, in the first forward. DoRA
// needs the frozen output, and sandwich norms their projections' outputs: those run again.
TEST(Checkpointing, ReplaySkipsTheProjectionsThatOnlyFeedTheResidualStream) {
  for (auto [fixture, dora, skips] : {std::tuple{"llama", false, true}, {"llama", true, false}, {"gemma2", false, false}}) {
    model::Model m = model::Model::load(test::model_fixture(fixture));
    const int layers = static_cast<int>(m.config().num_layers);
    lora::LoraConfig lc;
    lc.r = 2;
    lc.all_linear = true;
    lc.use_dora = dora;
    Rng init(5), drop(6);
    lora::Adapter a = lora::Adapter::create(m, lc, init);
    a.allocate_grads();
    CountingHook hook({{&a, 1.0}});
    hook.set_training(true, &drop);
    model::TokenBatch b{{1, 2, 3, 4, 5, 6}, 1, 6};
    model::forward_backward(m, b, {2, 3, 4, 5, 6, -100}, 1.0f / 5, &hook, nullptr, /*checkpointing=*/true);
    for (Target t : {Target::O, Target::Down}) {
      EXPECT_EQ(hook.full[t], skips ? layers : 2 * layers) << fixture << " dora " << dora << " " << target_short_name(t);
      EXPECT_EQ(hook.input_only[t], skips ? layers : 0) << fixture << " dora " << dora;
    }
    EXPECT_EQ(hook.full[Target::Q], 2 * layers) << fixture << ": attention needs q again";
  }
}

// What the LoRA hook saves for backward lives in the forward pass's cache while one is bound, so
// that one hook can serve several passes in flight.
TEST(Checkpointing, SavedActivationsLiveInTheBoundForwardCache) {
  model::Model m = model::Model::load(test::model_fixture("llama"));
  lora::LoraConfig lc;
  lc.r = 4;
  lc.all_linear = true;
  Rng init(5), drop(6);
  lora::Adapter a = lora::Adapter::create(m, lc, init);
  a.allocate_grads();
  lora::LoraHook hook({{&a, 1.0}});
  hook.set_training(true, &drop);
  model::TokenBatch b{{1, 2, 3, 4, 5, 6}, 1, 6};
  model::ForwardCache first, second;
  hook.bind(&first);
  m.hidden_states(b, &hook, &first);
  const size_t bytes = hook.saved_bytes();
  EXPECT_GT(bytes, 0u);
  hook.bind(&second);
  EXPECT_EQ(hook.saved_bytes(), 0u);  // a new pass starts empty; the first one's state stays in `first`
  m.hidden_states(b, &hook, &second);
  EXPECT_EQ(hook.saved_bytes(), bytes);
  hook.bind(nullptr);
  EXPECT_EQ(hook.saved_bytes(), 0u);
  ASSERT_TRUE(first.hook_state && second.hook_state);
  EXPECT_NE(first.hook_state.get(), second.hook_state.get());
  hook.bind(&first);
  EXPECT_EQ(hook.saved_bytes(), bytes);
  hook.bind(nullptr);
}

// The same hook with LoRA's terms added after the frozen product (HookOrder::After, as DoRA runs)
// instead of written before it: the model's two orders give the same loss and gradients up to f32
// rounding, with and without dropout (whose backward then writes the first projection's dx as
// dropout(gx) or adds through the mask).
struct AfterOrderHook : lora::LoraHook {
  using LoraHook::LoraHook;
  model::HookOrder projection_order(int layer, Target target) const override {
    const model::HookOrder o = LoraHook::projection_order(layer, target);
    return o == model::HookOrder::Before ? model::HookOrder::After : o;
  }
};

TEST(LoraHookOrder, BeforeTheFrozenProductEqualsAfterIt) {
  model::Model m = model::Model::load(test::model_fixture("llama"));
  for (double dropout : {0.0, 0.2}) {
    lora::LoraConfig lc;
    lc.r = 4;
    lc.all_linear = true;
    lc.dropout = dropout;
    std::vector<lora::Adapter> adapters;
    std::vector<double> losses;
    for (int order = 0; order < 2; ++order) {
      Rng init(5), fill(9), drop(6);
      lora::Adapter a = lora::Adapter::create(m, lc, init);
      for (auto& p : a.pairs)  // B = 0 at init: give the LoRA terms a value
        for (int64_t i = 0; i < p.B.numel(); ++i) p.B.f32()[i] = 0.3f * fill.normal();
      a.allocate_grads();
      std::unique_ptr<lora::LoraHook> hook = order == 0 ? std::make_unique<lora::LoraHook>(std::vector<lora::ActiveAdapter>{{&a, 1.0}})
                                                        : std::make_unique<AfterOrderHook>(std::vector<lora::ActiveAdapter>{{&a, 1.0}});
      hook->set_training(true, &drop);
      const model::TokenBatch b{{1, 5, 9, 13, 2, 7, 3, 11, 4, 8, 6, 10}, 2, 6};
      losses.push_back(model::forward_backward(m, b, model::shift_labels(b.ids, 2, 6), 0.1f, hook.get()).nll_sum);
      adapters.push_back(std::move(a));
    }
    EXPECT_NEAR(losses[0], losses[1], 1e-5 * std::fabs(losses[1])) << "dropout " << dropout;
    for (size_t i = 0; i < adapters[0].pairs.size(); ++i) {
      const lora::LoraPair &x = adapters[0].pairs[i], &y = adapters[1].pairs[i];
      for (auto [g, h] : {std::pair{&x.grad_A, &y.grad_A}, std::pair{&x.grad_B, &y.grad_B}}) {
        double diff = 0, norm = 0;
        for (int64_t k = 0; k < g->numel(); ++k) {
          diff = std::max<double>(diff, std::fabs(g->f32()[k] - h->f32()[k]));
          norm = std::max<double>(norm, std::fabs(h->f32()[k]));
        }
        EXPECT_GT(norm, 0.0) << x.module;
        EXPECT_LE(diff, 1e-4 * norm) << x.module << ", dropout " << dropout;
      }
    }
  }
}

// --pad-to-multiple-of: the micro-batch's length is the longest rounded up (at most the cap,
// unless the longest is longer), the padding has pad id 0 and no targets, and a training step on
// it gives the loss and the parameters of the unpadded step (causal rows never see the padding).
TEST(TrainStep, PaddingToAMultipleChangesNothingButTheShape) {
  auto data = train::Dataset::from_examples({{{1, 2, 3, 4, 5, 6, 7}, {1, 2, 3, 4, 5, 6, 7}},
                                             {{9, 8, 7}, {-100, 8, 7}}});
  const auto plain = train::make_micro_batch(data, {0, 1});
  EXPECT_EQ(plain.tokens.seq, 7);
  EXPECT_EQ(train::make_micro_batch(data, {0, 1}, 4).tokens.seq, 8);
  EXPECT_EQ(train::make_micro_batch(data, {0, 1}, 64, 12).tokens.seq, 12);  // capped
  EXPECT_EQ(train::make_micro_batch(data, {0, 1}, 4, 5).tokens.seq, 7);    // the longest wins over the cap
  const auto padded = train::make_micro_batch(data, {0, 1}, 16);
  ASSERT_EQ(padded.tokens.seq, 16);
  EXPECT_EQ(padded.counted, plain.counted);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t < 16; ++t) {
      const int32_t id = padded.tokens.ids[b * 16 + t], target = padded.targets[b * 16 + t];
      if (t < 7) {
        EXPECT_EQ(id, plain.tokens.ids[b * 7 + t]);
        EXPECT_EQ(target, plain.targets[b * 7 + t]);
      } else {
        EXPECT_EQ(id, 0);
        EXPECT_EQ(target, -100);
      }
    }

  auto run = [&](const train::MicroBatch& mb) {
    LoraTraining t(3, 0.01f);  // a nonzero B, so that A's gradients are nonzero too
    const double loss = train::train_step(t.ctx, {mb}, 1e-2).loss;
    std::vector<Tensor> after;
    for (auto& p : t.params) after.push_back(p.param.clone());
    return std::make_pair(loss, after);
  };
  const auto [loss_plain, params_plain] = run(plain);
  const auto [loss_padded, params_padded] = run(padded);
  EXPECT_NEAR(loss_padded, loss_plain, 1e-6 * std::abs(loss_plain));
  for (size_t i = 0; i < params_plain.size(); ++i)
    for (int64_t j = 0; j < params_plain[i].numel(); ++j)
      ASSERT_NEAR(params_padded[i].f32()[j], params_plain[i].f32()[j], 1e-6) << i << " " << j;
}
