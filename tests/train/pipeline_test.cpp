// Pipeline parallelism on the CPU: a model split into stages ("cpu,cpu,cpu") trained with the GPipe
// schedule gives exactly one device's losses, gradients and updates (the same ops in the same
// order), with dropout, checkpointing, embedding and lm_head LoRA; layers are balanced by bytes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "lowrank/core/device_memory.h"
#include "lowrank/core/error.h"
#include "lowrank/lora/lora_hook.h"
#include "lowrank/model/random_model.h"
#include "lowrank/train/pipeline.h"

using namespace lowrank;

namespace {

model::ModelConfig tiny_config() { return model::llama_config(32, 5, 4, 2, 48, 64, 64, /*tie=*/false); }

// The micro-batches of one step: `count` batches of 2 sequences of 12 tokens, some labels masked.
std::vector<train::MicroBatch> micro_batches(int count, uint64_t seed) {
  Rng rng(seed);
  std::vector<train::MicroBatch> out;
  for (int k = 0; k < count; ++k) {
    train::MicroBatch mb;
    mb.tokens = {{}, 2, 12};
    for (int64_t i = 0; i < mb.tokens.rows(); ++i) mb.tokens.ids.push_back(static_cast<int32_t>(rng.next_u32() % 64));
    std::vector<int32_t> labels = mb.tokens.ids;
    labels[3] = -100;  // a prompt token: not scored
    mb.targets = model::shift_labels(labels, 2, 12);
    for (int32_t t : mb.targets) mb.counted += t != -100;
    out.push_back(std::move(mb));
  }
  return out;
}

// A model, its adapter, the optimizer and one dropout stream: one device's or a split's.
struct TrainingRun {
  model::Model model;
  lora::Adapter adapter;
  std::vector<train::ParamRef> params;
  train::AdamW optimizer{{1e-2, 0.9, 0.999, 1e-8, 0.01}};
  Rng dropout{7};
  lora::LoraHook hook;
  train::StepContext ctx;

  TrainingRun(model::Model m, const lora::LoraConfig& lc, bool checkpointing)
      : model(std::move(m)), adapter(create(model, lc)), hook({{&adapter, 1.0}}) {
    adapter.allocate_grads();
    adapter.make_working_copies(model.weights().embed.dtype());  // bf16 A and B on the GPU, as train does
    params = train::lora_params(adapter);
    hook.set_training(true, &dropout);
    ctx = {&model, &hook, nullptr, &params, &optimizer, /*max_grad_norm=*/1e-3, checkpointing};  // always clips
  }
  static lora::Adapter create(model::Model& m, const lora::LoraConfig& lc) {
    Rng init(3);
    return lora::Adapter::create(m, lc, init);
  }
  train::PipelineContext pipeline(train::PipelineSchedule schedule = train::PipelineSchedule::OneFOneB) {
    return {&ctx,
            [this]() -> std::unique_ptr<model::TrainableHook> {
              auto h = std::make_unique<lora::LoraHook>(std::vector<lora::ActiveAdapter>{{&adapter, 1.0}});
              h->set_training(true, &dropout);
              return h;
            },
            schedule};
  }
};

lora::LoraConfig lora_config(bool embedding_and_head) {
  lora::LoraConfig lc;
  lc.r = 4;
  lc.alpha = 8;
  lc.dropout = 0.1;
  lc.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  if (embedding_and_head) {
    lc.target_modules.push_back("embed_tokens");
    lc.target_modules.push_back("lm_head");
  }
  return lc;
}

void expect_bitwise_equal(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  ASSERT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0) << what;
}

class PipelineEqualsOneDevice
    : public ::testing::TestWithParam<std::tuple<bool, bool, train::PipelineSchedule>> {};

TEST_P(PipelineEqualsOneDevice, LossesGradientsAndUpdates) {
  const auto [checkpointing, embedding_and_head, schedule] = GetParam();
  const model::ModelConfig c = tiny_config();
  const lora::LoraConfig lc = lora_config(embedding_and_head);
  // Three stages of unequal length: layers 0 | 1-3 | 4.
  const model::Placement split{{Device::cpu(), Device::cpu(), Device::cpu()}, {0, 1, 4, 5}};
  TrainingRun one(model::random_model(c, 11, Device::cpu()), lc, checkpointing);
  TrainingRun piped(model::random_model(c, 11, split, DType::F32), lc, checkpointing);
  ASSERT_EQ(piped.model.placement().stages(), 3);
  for (int step = 0; step < 3; ++step) {  // B = 0 at first: later steps check A's gradients too
    const auto mbs = micro_batches(4, 100 + step);
    const train::StepResult a = train::train_step(one.ctx, mbs, 1e-2);
    const train::StepResult b = train::train_step_pipeline(piped.pipeline(schedule), mbs, 1e-2);
    EXPECT_EQ(a.loss, b.loss) << "step " << step;
    EXPECT_EQ(a.tokens, b.tokens);
    EXPECT_NEAR(a.grad_norm, b.grad_norm, 1e-12 * a.grad_norm);
    ASSERT_EQ(one.params.size(), piped.params.size());
    for (size_t i = 0; i < one.params.size(); ++i) {
      expect_bitwise_equal(one.params[i].grad, piped.params[i].grad, "grad of " + one.params[i].name);
      expect_bitwise_equal(one.params[i].param, piped.params[i].param, one.params[i].name);
    }
    EXPECT_EQ(one.dropout.offset(), piped.dropout.offset());  // the same masks were drawn
  }
}

INSTANTIATE_TEST_SUITE_P(Pipeline, PipelineEqualsOneDevice,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool(),
                                            ::testing::Values(train::PipelineSchedule::OneFOneB,
                                                              train::PipelineSchedule::GPipe)),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) ? "Checkpointing" : "Saved") +
                                  (std::get<1>(info.param) ? "EmbeddingAndHead" : "Blocks") +
                                  (std::get<2>(info.param) == train::PipelineSchedule::GPipe ? "GPipe" : "1F1B");
                         });

// Every op once; each stage's order kept; an op after those it needs; forwards micro-batch-major
// (the one-device order of dropout draws); 1F1B holds at most S - s micro-batches on stage s.
TEST(PipelineSchedule, OrdersAreValid) {
  for (const auto schedule : {train::PipelineSchedule::GPipe, train::PipelineSchedule::OneFOneB})
    for (int S : {1, 2, 3, 4})
      for (int64_t M : {1, 2, 3, 5, 8}) {
        const auto orders = train::stage_orders(schedule, S, M);
        const auto issue = train::issue_order(orders);
        ASSERT_EQ(issue.size(), static_cast<size_t>(2 * S * M));
        std::vector<size_t> at(S, 0);
        std::vector<int64_t> f_done(S, 0), b_done(S, 0);
        int64_t forwards = 0;
        for (const auto& op : issue) {
          const int s = op.stage;
          ASSERT_EQ(orders[s][at[s]++], op);  // the stage's own order
          if (op.forward) {
            ASSERT_EQ(op.micro_batch * S + s, forwards++);  // micro-batch-major
            ++f_done[s];
          } else {
            ASSERT_LT(op.micro_batch, s == S - 1 ? f_done[s] : b_done[s + 1]);
            ASSERT_EQ(op.micro_batch, b_done[s]++);  // backwards in micro-batch order
          }
        }
        for (int s = 0; s < S; ++s) {
          int64_t held = 0, most = 0;
          for (const auto& op : orders[s]) most = std::max(most, held += op.forward ? 1 : -1);
          EXPECT_EQ(most, schedule == train::PipelineSchedule::GPipe ? M : std::min<int64_t>(S - s, M))
              << "stage " << s << " of " << S << ", " << M << " micro-batches";
        }
      }
  EXPECT_THROW(train::parse_pipeline_schedule("zigzag"), Error);
  EXPECT_EQ(train::parse_pipeline_schedule("1f1b"), train::PipelineSchedule::OneFOneB);
}

// Only the lm_head trained: the backward stops before the stages' layers.
TEST(Pipeline, OnlyTheHeadTrained) {
  const model::ModelConfig c = tiny_config();
  lora::LoraConfig lc = lora_config(false);
  lc.target_modules = {"lm_head"};
  const model::Placement split{{Device::cpu(), Device::cpu()}, {0, 3, 5}};
  TrainingRun one(model::random_model(c, 5, Device::cpu()), lc, false);
  TrainingRun piped(model::random_model(c, 5, split, DType::F32), lc, false);
  const auto mbs = micro_batches(2, 9);
  for (int step = 0; step < 2; ++step) {
    EXPECT_EQ(train::train_step(one.ctx, mbs, 1e-2).loss, train::train_step_pipeline(piped.pipeline(), mbs, 1e-2).loss);
    for (size_t i = 0; i < one.params.size(); ++i)
      expect_bitwise_equal(one.params[i].param, piped.params[i].param, one.params[i].name);
  }
}

// Evaluation and generation go through Model::hidden_states, which follows the split.
TEST(Pipeline, SplitModelForwardEqualsOneDevice) {
  const model::ModelConfig c = tiny_config();
  const model::Model one = model::random_model(c, 5, Device::cpu());
  const model::Model split = model::random_model(c, 5, model::Placement{{Device::cpu(), Device::cpu()}, {0, 2, 5}}, DType::F32);
  const model::TokenBatch b{{1, 5, 9, 13, 2, 7}, 2, 3};
  expect_bitwise_equal(one.logits(b), split.logits(b), "logits");
}

// On two GPUs: a bf16 model split over cuda:0 and cuda:1 trains as on cuda:0 alone. The same
// kernels run in the same order on each micro-batch, so the results agree to rounding (the grad
// norm's partial sums are added per device; kernels with atomics may sum in another order).
TEST(CudaPipeline, StepEqualsOneGpu) {
  if (cuda_device_count() < 2) GTEST_SKIP() << "needs two CUDA GPUs";
  const model::ModelConfig c = model::llama_config(256, 6, 4, 2, 512, 512, 128, /*tie=*/true);
  for (const bool checkpointing : {false, true}) {
    lora::LoraConfig lc = lora_config(true);
    lc.dropout = 0.1;
    const model::Placement split = model::balance_layers(c, {Device::cuda(0), Device::cuda(1)}, DType::BF16);
    TrainingRun one(model::random_model(c, 11, Device::cuda(0), DType::BF16), lc, checkpointing);
    TrainingRun piped(model::random_model(c, 11, split, DType::BF16), lc, checkpointing);
    EXPECT_EQ(piped.adapter.pairs.back().A.device(), Device::cuda(1));  // lm_head's pair, next to it
    for (int step = 0; step < 3; ++step) {
      const auto mbs = micro_batches(4, 100 + step);
      const train::StepResult a = train::train_step(one.ctx, mbs, 1e-2);
      const train::StepResult b = train::train_step_pipeline(piped.pipeline(), mbs, 1e-2);
      EXPECT_NEAR(a.loss, b.loss, 1e-4 * a.loss) << "step " << step;
      EXPECT_NEAR(a.grad_norm, b.grad_norm, 1e-3 * a.grad_norm) << "step " << step;
      for (size_t i = 0; i < one.params.size(); ++i) {
        const Tensor x = one.params[i].param.to(Device::cpu()), y = piped.params[i].param.to(Device::cpu());
        const Tensor gx = one.params[i].grad.to(Device::cpu()), gy = piped.params[i].grad.to(Device::cpu());
        double scale = 0;
        for (int64_t j = 0; j < gx.numel(); ++j) scale = std::max(scale, std::abs(static_cast<double>(gx.f32()[j])));
        for (int64_t j = 0; j < x.numel(); ++j) {
          ASSERT_NEAR(x.f32()[j], y.f32()[j], 1e-4) << one.params[i].name << "[" << j << "] step " << step;
          ASSERT_NEAR(gx.f32()[j], gy.f32()[j], 1e-2 * scale + 1e-9) << "grad " << one.params[i].name << "[" << j << "]";
        }
      }
    }
  }
}

TEST(Placement, BalancesLayersByBytes) {
  // Llama-3-70B: the embedding and the (untied) lm_head weigh the same: 40 | 40.
  const auto c70 = model::llama_config(8192, 80, 64, 8, 28672, 128256, 8192, false);
  const auto p = model::balance_layers(c70, {Device::cuda(0), Device::cuda(1)}, DType::BF16);
  EXPECT_EQ(p.first_layer, (std::vector<int64_t>{0, 40, 80}));
  EXPECT_EQ(p.stage_of_layer(-1), 0);
  EXPECT_EQ(p.stage_of_layer(39), 0);
  EXPECT_EQ(p.stage_of_layer(40), 1);
  EXPECT_EQ(p.stage_of_layer(80), 1);  // the head
  EXPECT_EQ(p.device_of_layer(79), Device::cuda(1));
  // A vocabulary as heavy as several layers: the embedding's and lm_head's stages get fewer layers.
  auto heavy = model::llama_config(64, 8, 4, 2, 64, 20000, 64, false);
  const model::PartBytes bytes = model::part_bytes(heavy, DType::F32);
  ASSERT_GT(bytes.embed, 2 * bytes.layer);
  const auto q = model::balance_layers(heavy, {Device::cpu(), Device::cpu(), Device::cpu()}, DType::F32);
  EXPECT_EQ(q.first_layer.front(), 0);
  EXPECT_EQ(q.first_layer.back(), 8);
  const int64_t first = q.first_layer[1], middle = q.first_layer[2] - q.first_layer[1], last = 8 - q.first_layer[2];
  EXPECT_LT(first, middle);
  EXPECT_LT(last, middle);
  for (int s = 0; s < 3; ++s) EXPECT_GE(q.first_layer[s + 1] - q.first_layer[s], 1);
}

TEST(Placement, FewerLayersThanDevicesIsAnError) {
  const auto c = model::llama_config(32, 2, 4, 2, 48, 64, 64);
  try {
    model::balance_layers(c, {Device::cpu(), Device::cpu(), Device::cpu()}, DType::F32);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot split a model of 2 layers over 3 devices"), std::string::npos)
        << e.what();
  }
}

}  // namespace
