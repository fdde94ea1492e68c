#include "lowrank/train/pipeline.h"

#include <algorithm>

#include "lowrank/core/device_memory.h"
#include "lowrank/core/error.h"
#include "lowrank/model/norm.h"
#include "lowrank/ops/ops.h"
#include "lowrank/ops/profile.h"
#include "lowrank/train/grad_clip.h"

namespace lowrank::train {
namespace {

// x on device `to`, queued behind the work that produced it without blocking the host. The source
// stays in `in_flight` until the step has synchronized (the copy reads it on the other stream).
Tensor send(const Tensor& x, Device to, std::vector<Tensor>& in_flight) {
  if (x.device() == to) return x;
  Tensor out = Tensor::empty(x.shape(), x.dtype(), to);
  device_copy_async(out.raw(), to, x.raw(), x.device(), x.nbytes());
  in_flight.push_back(x);
  return out;
}

// One micro-batch between its forward and its backward.
struct MicroBatchInFlight {
  std::unique_ptr<model::TrainableHook> hook;  // its LoRA activations and dropout offsets (from its first forward)
  model::ForwardCache cache;                   // its layers' activations (or inputs, with checkpointing)
  std::vector<int32_t> pos;                    // [B*T] positions
  std::vector<Tensor> pos_dev;                 // [stage]: pos on each stage's device, for RoPE
  Tensor boundary;  // [B*T, d]: the activation leaving a stage (forward), the gradient entering one (backward)
};

void zero_grads(const std::vector<ParamRef>& params) {
  const profile::Scope scope(profile::Category::Optimizer, /*sticky=*/true);
  for (const auto& grads : grads_by_device(params)) ops::zero_all_(grads);  // one launch per device
}

}  // namespace

void accumulate_gradients_pipelined(const PipelineContext& ctx, const std::vector<MicroBatch>& micro_batches,
                                    int64_t counted, Tensor& nll) {
  const StepContext& step = *ctx.step;
  LR_CHECK(!step.full_grads, "the pipeline trains LoRA only");
  const model::Model& m = *step.model;
  const model::ModelConfig& c = m.config();
  const model::ModelWeights& w = m.weights();
  const model::Placement& place = m.placement();
  const int stages = place.stages();
  zero_grads(*step.params);
  nll = Tensor::zeros({1}, DType::F64, place.devices.back());
  if (counted == 0) return;
  const float grad_scale = 1.0f / static_cast<float>(counted);
  std::vector<Tensor> in_flight;  // sent tensors, kept until every device is done
  std::vector<MicroBatchInFlight> mbs(micro_batches.size());

  // Positions on every stage's device first: these host-to-device copies are then queued before
  // any compute, so they cannot make the host wait for a busy stream.
  for (size_t k = 0; k < micro_batches.size(); ++k) {
    const model::TokenBatch& batch = micro_batches[k].tokens;
    MicroBatchInFlight& f = mbs[k];
    f.pos.resize(batch.rows());
    for (int64_t i = 0; i < batch.rows(); ++i) f.pos[i] = static_cast<int32_t>(i % batch.seq);
    for (const Device d : place.devices) f.pos_dev.push_back(Tensor::from_ints(f.pos, d));
  }
  // One stage's forward of micro-batch k; the last stage adds the loss right away (only the
  // gradient of the last layer's output then waits for the backward).
  auto forward = [&](int s, size_t k) {
    const model::TokenBatch& batch = micro_batches[k].tokens;
    MicroBatchInFlight& f = mbs[k];
    if (s == 0) {
      f.hook = ctx.make_hook();
      f.cache.checkpointing = step.checkpointing;
      f.cache.layers.assign(c.num_layers, {});
    }
    Tensor x = s == 0 ? m.embed(batch, f.pos, f.hook.get()) : send(f.boundary, place.devices[s], in_flight);
    const model::LayerInput in{batch.batch, batch.seq, 0, &f.pos_dev[s], f.hook.get(), nullptr, true};
    if (step.checkpointing) f.hook->set_checkpointed_forward(true);  // the layers are replayed in backward
    for (int64_t li = place.first_layer[s]; li < place.first_layer[s + 1]; ++li) {
      model::LayerActivations a;
      Tensor next = m.layer_forward(li, x, in, a);
      f.cache.layers[li] = step.checkpointing ? model::checkpoint_kept(std::move(a), c) : std::move(a);
      x = next;
    }
    if (step.checkpointing) f.hook->set_checkpointed_forward(false);  // not the lm_head's: no replay
    f.boundary = x;
    if (s + 1 < stages) return;
    Tensor mean, rstd;
    const Tensor hidden = m.normalize(w.final_norm, x, &mean, &rstd);
    model::LossResult unused;  // the NLL goes to `nll`, the counts are known
    const Tensor dhidden =
        model::loss_backward(m, hidden, micro_batches[k].targets, grad_scale, f.hook.get(), nullptr, &nll, unused);
    f.boundary = model::normalize_backward(c.norm, w.final_norm, nullptr, dhidden, x, mean, rstd);
  };
  // One stage's backward of micro-batch k, down to the lowest trained layer; the first stage ends
  // with the embedding's part and frees the micro-batch.
  const int lowest = ctx.make_hook()->lowest_trainable_layer();
  auto backward = [&](int s, size_t k) {
    const model::TokenBatch& batch = micro_batches[k].tokens;
    MicroBatchInFlight& f = mbs[k];
    const int64_t first = place.first_layer[s], end = place.first_layer[s + 1];
    if (end - 1 >= std::max(lowest, 0)) {  // else nothing is trained here or below
      Tensor dx = send(f.boundary, place.devices[s], in_flight);
      for (int64_t li = end - 1; li >= std::max<int64_t>(first, lowest); --li)
        dx = model::layer_backward(m, li, f.cache.layers[li], dx, batch.batch, batch.seq, f.pos_dev[s],
                                   f.hook.get(), nullptr, li > lowest, step.checkpointing);
      f.boundary = dx;
    }
    if (s > 0) return;
    if (lowest < 0) model::embedding_backward(m, batch, f.pos, f.boundary, f.hook.get(), nullptr);
    f = MicroBatchInFlight{};  // its activations are no longer needed
  };
  // Each stage's part in the schedule's order; every stage accumulates its gradients in
  // micro-batch order, as one device does.
  const auto orders = stage_orders(ctx.schedule, stages, static_cast<int64_t>(micro_batches.size()));
  for (const PipelineOp& op : issue_order(orders)) {
    if (op.forward) forward(op.stage, static_cast<size_t>(op.micro_batch));
    else backward(op.stage, static_cast<size_t>(op.micro_batch));
  }
  // Every copy has read its source once every device is idle.
  for (const Device d : place.devices) device_synchronize(d);
}

StepResult train_step_pipeline(const PipelineContext& ctx, const std::vector<MicroBatch>& micro_batches, double lr) {
  const int64_t counted = counted_targets(micro_batches);
  Tensor nll;
  accumulate_gradients_pipelined(ctx, micro_batches, counted, nll);
  return apply_gradients(*ctx.step, nll, counted, lr);
}

}  // namespace lowrank::train
