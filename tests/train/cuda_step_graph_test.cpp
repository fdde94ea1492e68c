// Training steps replayed as a CUDA graph (train/step_graph.h) against the same steps run op by
// op: equal losses, gradient norms and trained parameters while the step's inputs (ids, targets,
// the count of targets) change from step to step; new shapes re-record; bad ids and targets are
// still errors; LoRA dropout draws the op-by-op steps' masks; LoRA's weight gradients on the side
// stream (ops/side_work.h) give the steps of one stream. Skipped without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <optional>

#include "lowrank/core/device_memory.h"
#include "lowrank/core/rng.h"
#include "lowrank/backend/cuda/device.h"
#include "lowrank/lora/k_extension.h"
#include "lowrank/lora/lora_hook.h"
#include "lowrank/ops/side_work.h"
#include "lowrank/train/sequences.h"
#include "lowrank/train/step.h"
#include "lowrank/train/step_graph.h"
#include "test_paths.h"

using namespace lowrank;

namespace {

#define REQUIRE_GPU() \
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU"

// 12 examples of `seq` random tokens; example i takes no loss on its first i % 5 tokens, so the
// step's count of targets changes from step to step.
train::Dataset windows(int64_t vocab, int64_t seq) {
  Rng rng(static_cast<uint64_t>(seq));
  std::vector<train::Example> ex;
  for (int i = 0; i < 12; ++i) {
    train::Example e;
    for (int64_t t = 0; t < seq; ++t) e.ids.push_back(static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab))));
    e.labels = e.ids;
    for (int k = 0; k < i % 5; ++k) e.labels[k] = -100;
    ex.push_back(std::move(e));
  }
  return train::Dataset::from_examples(ex);
}

// One training setup on the GPU (bf16 weights): LoRA (or --full) with AdamW, with or without a
// step graph. Two setups made alike start from the same parameters.
struct TrainRun {
  model::Model m;
  std::optional<lora::Adapter> adapter;
  std::optional<lora::LoraHook> hook;
  model::ModelWeights full_grads;
  std::vector<train::ParamRef> params;
  train::AdamW opt{{3e-3, 0.9, 0.999, 1e-8, 0.01}};
  Rng drop{5};
  std::optional<train::StepGraph> graph;
  train::StepContext ctx;

  // random_b: B starts random instead of zero, so that the LoRA branch (and its dropout masks)
  // changes the loss from the first step on.
  // k_extension: LoRA's K-extended weights made where they apply (lora/k_extension.h), as the
  // trainer does; off, the groups run their expands.
  TrainRun(const std::string& dir, bool full, bool with_graph, double dropout = 0.0, bool checkpointing = false,
           bool random_b = false, bool k_extension = false, bool all_linear = true, bool dropout_per_input = false)
      : m(model::Model::load(dir, Device::cuda(0), DType::BF16)) {
    if (full) {
      full_grads = model::zeros_like(m.weights());
      params = train::full_params(m, full_grads);
    } else {
      lora::LoraConfig lc;
      lc.r = 8;
      lc.alpha = 16;
      lc.all_linear = all_linear;  // else PEFT's default q_proj, v_proj
      lc.dropout = dropout;
      lc.dropout_per_input = dropout_per_input;
      Rng init(11);
      adapter.emplace(lora::Adapter::create(m, lc, init));
      if (random_b)
        for (lora::LoraPair& p : adapter->pairs) {
          Tensor b = Tensor::empty(p.B.shape());
          for (int64_t i = 0; i < b.numel(); ++i) b.f32()[i] = init.uniform(-0.1f, 0.1f);
          p.B = b.to(p.B.device());
        }
      adapter->allocate_grads();
      adapter->make_working_copies(m.weights().embed.dtype());
      if (k_extension) lora::make_extended_weights(*adapter, m);
      hook.emplace(std::vector<lora::ActiveAdapter>{{&*adapter, 1.0}});
      hook->set_training(true, &drop);
      params = train::lora_params(*adapter);
    }
    if (with_graph) graph.emplace(Device::cuda(0));
    ctx = train::StepContext{&m, hook ? &*hook : nullptr, full ? &full_grads : nullptr, &params, &opt, 1.0,
                             checkpointing, graph ? &*graph : nullptr};
  }
};

// The steps' micro-batches: two of two windows each (gradient accumulation), a new pair every step.
std::vector<train::MicroBatch> step_batches(const train::Dataset& data, int64_t step) {
  const auto n = static_cast<int64_t>(data.size());
  auto at = [&](int64_t k) { return (step * 4 + k) % n; };
  return {train::make_micro_batch(data, {at(0), at(1)}), train::make_micro_batch(data, {at(2), at(3)})};
}

std::vector<float> host_values(const Tensor& t) {
  const Tensor h = t.to(Device::cpu()).to(DType::F32);
  return {h.f32(), h.f32() + h.numel()};
}

// Runs the same steps through a graphed and an op-by-op setup and compares them step by step.
void expect_graph_equals_ops(const std::string& fixture, bool full, bool checkpointing, int steps,
                             double dropout = 0.0) {
  const std::string dir = test::model_fixture(fixture);
  // With dropout, B starts random: masks other than the op-by-op step's would change the loss.
  const bool random_b = dropout > 0;
  TrainRun graphed(dir, full, true, dropout, checkpointing, random_b), ops(dir, full, false, dropout, checkpointing, random_b);
  const train::Dataset data = windows(graphed.m.config().vocab_size, 16);
  ASSERT_GE(data.size(), 8u) << fixture;
  for (int64_t step = 0; step < steps; ++step) {
    const auto mbs = step_batches(data, step);
    const train::StepResult a = train::train_step(graphed.ctx, mbs, 1e-3);
    const train::StepResult b = train::train_step(ops.ctx, mbs, 1e-3);
    ASSERT_FALSE(a.skipped || b.skipped) << fixture << " step " << step;
    EXPECT_EQ(a.tokens, b.tokens);
    EXPECT_NEAR(a.loss, b.loss, 1e-5 * b.loss) << fixture << " step " << step;
    EXPECT_NEAR(a.grad_norm, b.grad_norm, 1e-3 * b.grad_norm) << fixture << " step " << step;
  }
  EXPECT_EQ(graphed.graph->replays(), steps - 1) << "the first step runs op by op, every later one replays";
  EXPECT_EQ(graphed.drop.offset(), ops.drop.offset()) << "replays advance the dropout Rng as op-by-op steps do";
  for (size_t i = 0; i < graphed.params.size(); ++i) {
    const auto a = host_values(graphed.params[i].param), b = host_values(ops.params[i].param);
    double num = 0, den = 0;
    for (size_t k = 0; k < a.size(); ++k) {
      num += (a[k] - b[k]) * (a[k] - b[k]);
      den += b[k] * b[k];
    }
    EXPECT_LE(std::sqrt(num / std::max(den, 1e-30)), 1e-3) << fixture << " " << graphed.params[i].name;
  }
}

class CudaStepGraph : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaStepGraph, LoraReplaysEqualOpByOp) {
  REQUIRE_GPU();
  expect_graph_equals_ops(GetParam(), /*full=*/false, /*checkpointing=*/false, 6);
}

TEST_P(CudaStepGraph, LoraWithCheckpointingReplaysEqualOpByOp) {
  REQUIRE_GPU();
  expect_graph_equals_ops(GetParam(), false, true, 4);
}

TEST_P(CudaStepGraph, FullFineTuningReplaysEqualOpByOp) {
  REQUIRE_GPU();
  expect_graph_equals_ops(GetParam(), /*full=*/true, false, 4);
}

// llama: the plain family; gpt2: learned positions, biases, fused c_attn; gemma2: soft-capping,
// sliding window.
INSTANTIATE_TEST_SUITE_P(Fixtures, CudaStepGraph, ::testing::Values("llama", "gpt2", "gemma2"));

TEST(CudaStepGraphShapes, NewShapesReRecordAndStillEqualOpByOp) {
  REQUIRE_GPU();
  const std::string dir = test::model_fixture("llama");
  TrainRun graphed(dir, false, true), ops(dir, false, false);
  const int64_t vocab = graphed.m.config().vocab_size;
  const train::Dataset short_rows = windows(vocab, 12), long_rows = windows(vocab, 20);
  // 3 steps of 12 tokens (op by op, record, replay), 3 of 20 (again), 2 of 12 (op by op, record).
  const int64_t plan[] = {12, 12, 12, 20, 20, 20, 12, 12};
  int64_t step = 0;
  for (int64_t seq : plan) {
    const auto mbs = step_batches(seq == 12 ? short_rows : long_rows, step++);
    const double a = train::train_step(graphed.ctx, mbs, 1e-3).loss;
    const double b = train::train_step(ops.ctx, mbs, 1e-3).loss;
    EXPECT_NEAR(a, b, 1e-5 * b) << "step " << step << " (" << seq << " tokens)";
  }
  EXPECT_EQ(graphed.graph->replays(), 5);  // each run of shapes: op by op, then replays (2 + 2 + 1)
}

TEST(CudaStepGraphInputs, BadIdsAndTargetsOnAReplayAreErrors) {
  REQUIRE_GPU();
  const std::string dir = test::model_fixture("llama");
  TrainRun s(dir, false, true);
  const int64_t vocab = s.m.config().vocab_size;
  const train::Dataset data = windows(vocab, 16);
  for (int64_t step = 0; step < 3; ++step) train::train_step(s.ctx, step_batches(data, step), 1e-3);
  ASSERT_TRUE(s.graph->recorded());
  auto bad_target = step_batches(data, 3);
  bad_target[1].targets[5] = static_cast<int32_t>(vocab);
  EXPECT_THROW(
      {
        try {
          train::train_step(s.ctx, bad_target, 1e-3);
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("outside the vocabulary"), std::string::npos) << e.what();
          throw;
        }
      },
      Error);
  auto bad_id = step_batches(data, 3);
  bad_id[0].tokens.ids[3] = -7;
  EXPECT_THROW(train::train_step(s.ctx, bad_id, 1e-3), Error);
  // The graph is still good afterwards.
  const auto replays = s.graph->replays();
  EXPECT_FALSE(train::train_step(s.ctx, step_batches(data, 4), 1e-3).skipped);
  EXPECT_EQ(s.graph->replays(), replays + 1);
}

// Dropout: every replay draws the masks that the same step run op by op draws (new ones each step).
TEST(CudaStepGraphDropout, LoraDropoutReplaysEqualOpByOp) {
  REQUIRE_GPU();
  expect_graph_equals_ops("llama", false, false, 5, /*dropout=*/0.1);
}

TEST(CudaStepGraphDropout, LoraDropoutWithCheckpointingReplaysEqualOpByOp) {
  REQUIRE_GPU();
  expect_graph_equals_ops("gemma2", false, true, 4, /*dropout=*/0.1);
}

// Masks that stayed those of the recording would make every replay's loss the recorded step's when
// the same batch comes back; with draws shifted per replay they differ.
TEST(CudaStepGraphDropout, ReplaysDrawNewMasks) {
  REQUIRE_GPU();
  const std::string dir = test::model_fixture("llama");
  TrainRun s(dir, false, true, /*dropout=*/0.5, /*checkpointing=*/false, /*random_b=*/true);
  const train::Dataset data = windows(s.m.config().vocab_size, 16);
  const auto mbs = step_batches(data, 0);
  std::vector<double> losses;
  for (int step = 0; step < 4; ++step) losses.push_back(train::train_step(s.ctx, mbs, 0.0).loss);  // lr 0: same weights
  EXPECT_EQ(s.graph->replays(), 3);
  EXPECT_NE(losses[2], losses[3]);
  EXPECT_NE(losses[1], losses[2]);
  EXPECT_NE(losses[0], losses[1]);  // the recorded step draws other masks than the first (op-by-op) one
}

// Two runs of the same steps (index 1 against index 0): losses, gradient norms (relative to run 0's)
// and trained parameters (relative RMS difference) within the given tolerances.
void expect_runs_equal(const std::string& fixture, const std::vector<train::StepResult> (&results)[2],
                       const std::vector<std::vector<float>> (&params)[2], double loss_tol, double norm_tol,
                       double param_tol) {
  for (size_t step = 0; step < results[0].size(); ++step) {
    const train::StepResult &a = results[1][step], &b = results[0][step];
    ASSERT_FALSE(a.skipped || b.skipped) << fixture << " step " << step;
    EXPECT_TRUE(std::isfinite(a.loss) && std::isfinite(a.grad_norm)) << fixture << " step " << step;
    EXPECT_NEAR(a.loss, b.loss, loss_tol * b.loss) << fixture << " step " << step;
    EXPECT_NEAR(a.grad_norm, b.grad_norm, norm_tol * b.grad_norm) << fixture << " step " << step;
  }
  ASSERT_EQ(params[0].size(), params[1].size());
  for (size_t i = 0; i < params[0].size(); ++i) {
    double num = 0, den = 0;
    for (size_t k = 0; k < params[0][i].size(); ++k) {
      const double d = params[1][i][k] - params[0][i][k];
      num += d * d;
      den += static_cast<double>(params[0][i][k]) * params[0][i][k];
    }
    EXPECT_LE(std::sqrt(num / std::max(den, 1e-30)), param_tol) << fixture << " parameter " << i;
  }
}

// Allocation poisoning of the CUDA backend (absent from builds without it, where these tests skip).
void set_poisoned(bool on) {
#ifdef LOWRANK_WITH_CUDA
  cuda::set_poison_allocations(on);
#else
  (void)on;
#endif
}

// The same steps with LoRA's weight gradients on the side stream and all on one stream: equal
// losses, gradient norms and trained parameters. Allocations are poisoned (NaN), so a block the
// side work still read after the main stream reused it would show.
void expect_side_work_equals_one_stream(const std::string& fixture, bool with_graph, bool checkpointing,
                                        double dropout) {
  const std::string dir = test::model_fixture(fixture);
  set_poisoned(true);
  struct Restore {
    ~Restore() {
      ops::set_side_work_enabled(true);
      set_poisoned(false);
    }
  } restore;
  std::vector<train::StepResult> results[2];
  std::vector<std::vector<float>> params[2];
  for (int side = 1; side >= 0; --side) {
    ops::set_side_work_enabled(side == 1);
    ASSERT_EQ(ops::side_work_enabled(Device::cuda(0)), side == 1);
    TrainRun run(dir, false, with_graph, dropout, checkpointing, /*random_b=*/true);
    const train::Dataset data = windows(run.m.config().vocab_size, 16);
    for (int64_t step = 0; step < 4; ++step) results[side].push_back(train::train_step(run.ctx, step_batches(data, step), 1e-3));
    for (const train::ParamRef& p : run.params) params[side].push_back(host_values(p.param));
  }
  expect_runs_equal(fixture, results, params, 1e-6, 1e-5, 1e-5);
}

TEST(CudaSideWork, LoraStepsEqualOneStream) {
  REQUIRE_GPU();
  expect_side_work_equals_one_stream("llama", /*with_graph=*/false, /*checkpointing=*/false, /*dropout=*/0.0);
}

TEST(CudaSideWork, GraphReplaysWithCheckpointingEqualOneStream) {
  REQUIRE_GPU();
  expect_side_work_equals_one_stream("gemma2", true, true, 0.0);
}

TEST(CudaSideWork, FusedDropoutGraphReplaysEqualOneStream) {
  REQUIRE_GPU();
  expect_side_work_equals_one_stream("llama", true, false, 0.1);
}

TEST(CudaSideWork, FusedQkvModelEqualsOneStream) {
  REQUIRE_GPU();
  expect_side_work_equals_one_stream("gpt2", true, false, 0.0);
}

// The same steps with LoRA's K-extension (each group's expand inside its members' frozen GEMMs;
// o's and down's s·g A inside their input-grad GEMMs) and without: the same losses, gradient norms
// and trained parameters up to bf16 rounding (one GEMM's rounding of y instead of two), and AdamW
// keeps each B's block of W_ext equal to B_work and each A's rows of W_dx_ext equal to A_work.
// `members`: pairs with a W_ext; `dx_pairs`: pairs with a W_dx_ext.
void expect_k_extension_equals_expands(const std::string& fixture, bool with_graph, bool checkpointing, int members,
                                       int dx_pairs, bool all_linear = true, double dropout = 0.0,
                                       bool dropout_per_input = false) {
  const std::string dir = test::model_fixture(fixture);
  std::vector<train::StepResult> results[2];
  std::vector<std::vector<float>> params[2];
  uint64_t draws[2] = {};
  for (int ext = 1; ext >= 0; --ext) {
    TrainRun run(dir, false, with_graph, dropout, checkpointing, /*random_b=*/true, /*k_extension=*/ext == 1,
                 all_linear, dropout_per_input);
    int extended = 0, dx_extended = 0;
    for (const lora::LoraPair& p : run.adapter->pairs) {
      extended += p.W_ext.defined();
      dx_extended += p.W_dx_ext.defined();
    }
    ASSERT_EQ(extended, ext ? members : 0) << fixture << ": pairs with a K-extended weight";
    ASSERT_EQ(dx_extended, ext ? dx_pairs : 0) << fixture << ": pairs with an output-side K-extended weight";
    int stacked = 0;  // pairs whose W_ext lies in their attention group's stacked q, k, v weight
    const train::Dataset data = windows(run.m.config().vocab_size, 16);
    for (int64_t step = 0; step < 4; ++step) results[ext].push_back(train::train_step(run.ctx, step_batches(data, step), 1e-3));
    for (const train::ParamRef& p : run.params) params[ext].push_back(host_values(p.param));
    draws[ext] = run.drop.offset();
    for (const lora::LoraPair& p : run.adapter->pairs) {
      if (p.W_dx_ext.defined()) {  // [W; A_work]
        const Tensor w = p.W_dx_ext.to(Device::cpu()).to(DType::F32), a = p.A_work.to(Device::cpu()).to(DType::F32);
        const Tensor frozen = run.m.weights().layers[p.layer].projection(p.target)->weight.to(Device::cpu()).to(DType::F32);
        ASSERT_EQ(w.numel(), frozen.numel() + a.numel()) << p.module;
        for (int64_t k = 0; k < frozen.numel(); ++k) ASSERT_EQ(w.f32()[k], frozen.f32()[k]) << p.module;
        for (int64_t k = 0; k < a.numel(); ++k) ASSERT_EQ(w.f32()[frozen.numel() + k], a.f32()[k]) << p.module;
      }
      if (p.W_ext_stacked.defined()) {  // q, k, v (a frozen k included): its rows of the stack are its W_ext
        const model::ModelConfig& c = run.m.config();
        ASSERT_EQ(p.W_ext_stacked.dim(0), c.q_dim() + 2 * c.kv_dim()) << p.module;
        ASSERT_EQ(p.W_ext.raw(), static_cast<const char*>(p.W_ext_stacked.raw()) +
                                     p.stack_row * p.W_ext_stacked.dim(1) * 2) << p.module;
        ++stacked;
      }
      if (!p.W_ext.defined()) continue;
      const Tensor w = p.W_ext.to(Device::cpu()).to(DType::F32), b = p.B_work.to(Device::cpu()).to(DType::F32);
      const Tensor frozen = run.m.weights().layers[p.layer].projection(p.target)->weight.to(Device::cpu()).to(DType::F32);
      const int64_t cols = w.dim(1), rc = b.dim(1);
      for (int64_t i = 0; i < p.out; ++i) {
        for (int64_t j = 0; j < p.in; ++j) ASSERT_EQ(w.f32()[i * cols + j], frozen.f32()[i * p.in + j]) << p.module;
        for (int64_t j = 0; j < rc; ++j) ASSERT_EQ(w.f32()[i * cols + p.ext_col + j], b.f32()[i * rc + j]) << p.module;
      }
    }
    EXPECT_EQ(stacked > 0, ext == 1) << fixture << ": q, k, v stacked where the K-extension applies";
  }
  EXPECT_EQ(draws[1], draws[0]) << "the groups draw as many dropout draws as the projections one by one";
  expect_runs_equal(fixture, results, params, 2e-3, 2e-2, 1e-2);
}

TEST(CudaKExtension, LoraStepsEqualTheExpands) {
  REQUIRE_GPU();
  // llama: q, k, v and gate, up in every layer
  const model::ModelConfig c = model::ModelConfig::load(test::model_fixture("llama"));
  expect_k_extension_equals_expands("llama", /*with_graph=*/false, /*checkpointing=*/false,
                                    static_cast<int>(c.num_layers) * 5, static_cast<int>(c.num_layers) * 2);
}

TEST(CudaKExtension, GraphReplaysWithCheckpointingEqualTheExpands) {
  REQUIRE_GPU();
  const model::ModelConfig c = model::ModelConfig::load(test::model_fixture("gemma2"));
  // gemma2's sandwich norms: no output side
  expect_k_extension_equals_expands("gemma2", true, true, static_cast<int>(c.num_layers) * 5, 0);
}

TEST(CudaKExtension, LlamaGraphReplaysWithCheckpointingEqualTheExpands) {
  REQUIRE_GPU();
  // o and down's output side inside the recorded graph and the checkpointing replays
  const model::ModelConfig c = model::ModelConfig::load(test::model_fixture("llama"));
  expect_k_extension_equals_expands("llama", true, true, static_cast<int>(c.num_layers) * 5,
                                    static_cast<int>(c.num_layers) * 2);
}

TEST(CudaKExtension, QAndVWithAFrozenKBesideThemEqualTheExpands) {
  REQUIRE_GPU();
  // q, v extended; k's frozen GEMM reads the wide input's first columns, and the backward of
  // q, k, v is the per-member one (k is no member)
  const model::ModelConfig c = model::ModelConfig::load(test::model_fixture("llama"));
  expect_k_extension_equals_expands("llama", true, false, static_cast<int>(c.num_layers) * 2, 0, /*all_linear=*/false);
}

TEST(CudaKExtension, ProjectionBiasesEqualTheExpands) {
  REQUIRE_GPU();
  const model::ModelConfig c = model::ModelConfig::load(test::model_fixture("qwen2"));  // q, k, v with biases
  expect_k_extension_equals_expands("qwen2", true, false, static_cast<int>(c.num_layers) * 5,
                                    static_cast<int>(c.num_layers) * 2);
}

// With LoRA dropout each member draws its own mask (a fused dropout shrink into its block of the
// wide input): the masks of the projections one by one, so the same steps up to bf16 rounding; at
// p = 0.3 other masks would change the loss and the parameters far beyond it.
TEST(CudaKExtension, DropoutStepsEqualTheExpands) {
  REQUIRE_GPU();
  const model::ModelConfig c = model::ModelConfig::load(test::model_fixture("llama"));
  // with dropout: no output side (its mask falls on s·g A)
  expect_k_extension_equals_expands("llama", false, false, static_cast<int>(c.num_layers) * 5, 0, true, 0.3);
}

// One mask per input (dropout_per_input): the group's one dropout shrink over the stacked A and its
// one backward (r = 8: q, k, v's R = 24 takes the unfused backward, gate, up's 16 the fused one)
// against the projections one by one, each drawing the mask its input's first projection drew.
TEST(CudaKExtension, OneDropoutMaskPerInputStepsEqualTheExpands) {
  REQUIRE_GPU();
  const model::ModelConfig c = model::ModelConfig::load(test::model_fixture("llama"));
  expect_k_extension_equals_expands("llama", false, false, static_cast<int>(c.num_layers) * 5, 0, true, 0.3, true);
}

TEST(CudaKExtension, OneDropoutMaskPerInputGraphReplaysWithCheckpointingEqualTheExpands) {
  REQUIRE_GPU();
  const model::ModelConfig c = model::ModelConfig::load(test::model_fixture("gemma2"));
  expect_k_extension_equals_expands("gemma2", true, true, static_cast<int>(c.num_layers) * 5, 0, true, 0.3, true);
}

TEST(CudaKExtension, DropoutGraphReplaysWithCheckpointingEqualTheExpands) {
  REQUIRE_GPU();
  const model::ModelConfig c = model::ModelConfig::load(test::model_fixture("gemma2"));
  expect_k_extension_equals_expands("gemma2", true, true, static_cast<int>(c.num_layers) * 5, 0, true, 0.3);
}

TEST(CudaKExtension, DropoutOnQAndVWithAFrozenKBesideThemEqualsTheExpands) {
  REQUIRE_GPU();
  const model::ModelConfig c = model::ModelConfig::load(test::model_fixture("llama"));
  expect_k_extension_equals_expands("llama", true, false, static_cast<int>(c.num_layers) * 2, 0, false, 0.3);
}

}  // namespace
