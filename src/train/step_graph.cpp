#include "lowrank/train/step_graph.h"

#include <cstdlib>
#include <cstring>

#include "lowrank/core/device_memory.h"
#include "lowrank/core/error.h"
#include "lowrank/core/log.h"
#include "lowrank/core/rng.h"
#include "lowrank/ops/profile.h"
#include "lowrank/train/gradient_sum.h"
#include "lowrank/train/step.h"

namespace lowrank::train {

StepGraph::StepGraph(Device device) : device_(device) {}

bool StepGraph::enabled(Device device) {
  const char* env = std::getenv("LOWRANK_STEP_GRAPH");
  if (env && std::strcmp(env, "0") == 0) return false;
  return DeviceGraph::supported(device);
}

void StepGraph::reset() {
  graph_.reset();
  pool_.reset();  // its blocks go back to the device's cache
  batches_.clear();
  targets_.clear();
  tokens_ = positions_ = grad_scale_ = nll_ = draw_delta_ = Tensor();
  warmed_ = failed_ = false;
  rng_ = nullptr;
  recorded_at_ = draws_ = 0;
}

// The host's checks of the eager path (the embedding's ids, the loss's targets), then one upload
// of every micro-batch's ids and targets and one of the gradient scale.
void StepGraph::fill_inputs(const std::vector<MicroBatch>& micro_batches, int64_t counted, int64_t vocab,
                            int64_t classes) {
  std::vector<int32_t> host;
  host.reserve(static_cast<size_t>(tokens_.numel()));
  for (const MicroBatch& mb : micro_batches)
    for (int32_t id : mb.tokens.ids) {
      if (id < 0 || id >= vocab) throw error("token id ", id, " is outside the vocabulary [0, ", vocab, ")");
      host.push_back(id);
    }
  for (const MicroBatch& mb : micro_batches)
    for (size_t i = 0; i < mb.targets.size(); ++i) {
      const int32_t t = mb.targets[i];
      if (t != -100 && (t < 0 || t >= classes))
        throw error("target id ", t, " (row ", i, ") is outside the vocabulary of ", classes);
      host.push_back(t);
    }
  LR_CHECK(static_cast<int64_t>(host.size()) == tokens_.numel(), "step graph inputs: ", host.size(), " for ",
           tokens_.str());
  device_copy(tokens_.raw(), device_, host.data(), Device::cpu(), host.size() * sizeof(int32_t));
  const float scale = 1.0f / static_cast<float>(counted);  // as accumulate_gradients scales
  device_copy(grad_scale_.raw(), device_, &scale, Device::cpu(), sizeof(float));
  if (rng_) {  // this replay draws where an op-by-op step would: at the Rng's position now
    const auto delta = static_cast<int64_t>(rng_->offset() - recorded_at_);
    device_copy(draw_delta_.raw(), device_, &delta, Device::cpu(), sizeof(delta));
    *rng_ = Rng(rng_->seed(), rng_->offset() + draws_);
  }
}

bool StepGraph::record(StepContext& ctx, const std::vector<MicroBatch>& micro_batches) {
  int64_t rows = 0;
  for (const MicroBatch& mb : micro_batches) rows += mb.tokens.rows();
  tokens_ = Tensor::empty({2 * rows}, DType::I32, device_);  // ids, then targets
  grad_scale_ = Tensor::empty({1}, DType::F32, device_);
  nll_ = Tensor::empty({1}, DType::F64, device_);
  std::vector<int32_t> pos;
  for (const MicroBatch& mb : micro_batches)
    for (int64_t i = 0; i < mb.tokens.rows(); ++i) pos.push_back(static_cast<int32_t>(i % mb.tokens.seq));
  positions_ = Tensor::from_ints(pos, device_);
  int64_t row = 0;
  for (const MicroBatch& mb : micro_batches) {
    const int64_t n = mb.tokens.rows();
    model::TokenBatch b{mb.tokens.ids, mb.tokens.batch, mb.tokens.seq};  // host ids: sizes only
    b.device_ids = tokens_.slice_rows(row, row + n);
    b.device_pos = positions_.slice_rows(row, row + n);
    batches_.push_back(std::move(b));
    targets_.push_back({tokens_.slice_rows(rows + row, rows + row + n), grad_scale_});
    row += n;
  }
  rng_ = ctx.hook ? ctx.hook->draw_rng() : nullptr;
  if (rng_) {  // dropout: the recorded draws are shifted by draw_delta_ at each replay
    draw_delta_ = Tensor::empty({1}, DType::I64, device_);
    recorded_at_ = rng_->offset();
    ctx.hook->set_draw_delta(draw_delta_);
  }
  pool_ = make_device_graph_pool(device_);
  auto graph = std::make_unique<DeviceGraph>(device_, pool_);
  try {
    graph->record([&] {
      device_memset_zero(nll_.raw(), device_, sizeof(double));
      for (size_t k = 0; k < batches_.size(); ++k)
        model::forward_backward(*ctx.model, batches_[k], micro_batches[k].targets, 1.0f, ctx.hook, ctx.full_grads,
                                ctx.checkpointing, &nll_, &targets_[k], last_layer_done(ctx, k, batches_.size()));
      if (ctx.gradient_sum) ctx.gradient_sum->finish(nll_);  // the sums over the ranks too (NCCL records)
    });
  } catch (const Error& e) {
    if (rng_) {  // nothing ran: the op-by-op step draws from where the recording started
      ctx.hook->set_draw_delta(Tensor());
      *rng_ = Rng(rng_->seed(), recorded_at_);
    }
    log_warn("training steps run without a CUDA graph: ", e.what());
    const Shapes shapes = shapes_;
    reset();
    shapes_ = shapes;
    warmed_ = failed_ = true;
    return false;
  }
  if (rng_) {  // the recording queued nothing: the replay that follows makes the draws
    ctx.hook->set_draw_delta(Tensor());
    draws_ = rng_->offset() - recorded_at_;
    *rng_ = Rng(rng_->seed(), recorded_at_);
  }
  graph_ = std::move(graph);
  return true;
}

bool StepGraph::accumulate(StepContext& ctx, const std::vector<MicroBatch>& micro_batches, int64_t counted,
                           Tensor& nll) {
  const model::Model& m = *ctx.model;
  Rng* rng = ctx.hook && ctx.hook->draws_randomness() ? ctx.hook->draw_rng() : nullptr;
  // A profiled step runs op by op (its categories are timed per op); the others replay the graph.
  if (counted == 0 || profile::collecting() || m.placement().split() || !(m.device() == device_) ||
      (ctx.hook && ctx.hook->draws_randomness() && !rng))
    return false;
  Shapes shapes;
  for (const MicroBatch& mb : micro_batches) shapes.emplace_back(mb.tokens.batch, mb.tokens.seq);
  if (shapes != shapes_ || (graph_ && rng != rng_)) {
    reset();
    shapes_ = shapes;
  }
  if (failed_) return false;
  if (!warmed_) {  // the first step of these shapes: op by op (autotuning, attention plans)
    warmed_ = true;
    return false;
  }
  if (!graph_ && !record(ctx, micro_batches)) return false;
  fill_inputs(micro_batches, counted, m.weights().embed.dim(0), m.weights().lm_head.dim(0));
  zero_gradients(*ctx.params);  // outside the graph: the op uploads its table of tensors
  graph_->replay();
  ++replays_;
  nll = nll_;
  return true;
}

}  // namespace lowrank::train
