#include "lowrank/train/step.h"

#include <cmath>
#include <map>

#include "lowrank/ops/ops.h"
#include "lowrank/ops/profile.h"
#include "lowrank/train/grad_clip.h"
#include "lowrank/train/gradient_sum.h"
#include "lowrank/train/step_graph.h"

namespace lowrank::train {

std::vector<ParamRef> lora_params(lora::Adapter& adapter) {
  std::vector<ParamRef> out;
  for (const auto& p : adapter.parameters())
    out.push_back({p.name, *p.value, *p.grad, true, p.working ? *p.working : Tensor(), p.layer,
                   p.also ? *p.also : Tensor(), p.also_col});
  return out;
}

std::vector<ParamRef> full_params(model::Model& model, model::ModelWeights& grads) {
  std::vector<ParamRef> out;
  auto w = model::named_tensors(model.weights());
  auto g = model::named_tensors(grads);
  LR_CHECK(w.size() == g.size(), "weights and gradients differ");
  std::map<const void*, int> layer_of;  // gradient storage -> its decoder layer
  for (size_t li = 0; li < grads.layers.size(); ++li)
    for (const auto& [name, t] : model::named_tensors(grads.layers[li])) layer_of[t.raw()] = static_cast<int>(li);
  for (size_t i = 0; i < w.size(); ++i) {
    LR_CHECK(w[i].first == g[i].first, w[i].first, " vs ", g[i].first);
    const Tensor& weight = w[i].second;
    const auto layer = layer_of.find(g[i].second.raw());
    const int li = layer == layer_of.end() ? -1 : layer->second;
    if (weight.dtype() == DType::F32) {
      out.push_back({w[i].first, weight, g[i].second, true, {}, li});
    } else {  // bf16 weights (GPU): AdamW updates an f32 master and rounds it into the weight
      out.push_back({w[i].first, ops::cast(weight, DType::F32), g[i].second, true, weight, li});
    }
  }
  return out;
}

void zero_gradients(const std::vector<ParamRef>& params) {
  const profile::Scope scope(profile::Category::Optimizer, /*sticky=*/true);
  std::vector<Tensor> grads;
  for (const auto& p : params) grads.push_back(p.grad);
  ops::zero_all_(grads);
}

const model::LayerGradientsDone* last_layer_done(const StepContext& ctx, size_t k, size_t micro_batches) {
  return ctx.gradient_sum && k + 1 == micro_batches ? ctx.gradient_sum->layer_done() : nullptr;
}

void accumulate_gradients(StepContext& ctx, const std::vector<MicroBatch>& micro_batches, int64_t counted, Tensor& nll) {
  LR_CHECK(!ctx.model->placement().split(), "a model split over devices trains with train_step_pipeline");
  if (ctx.graph && ctx.graph->accumulate(ctx, micro_batches, counted, nll)) return;
  zero_gradients(*ctx.params);
  nll = Tensor::zeros({1}, DType::F64, ctx.model->device());  // stays on the device: one read per step
  if (counted == 0) return;
  for (size_t k = 0; k < micro_batches.size(); ++k) {
    const MicroBatch& mb = micro_batches[k];
    model::forward_backward(*ctx.model, mb.tokens, mb.targets, 1.0f / static_cast<float>(counted), ctx.hook,
                            ctx.full_grads, ctx.checkpointing, &nll, nullptr,
                            last_layer_done(ctx, k, micro_batches.size()));
  }
  if (ctx.gradient_sum) ctx.gradient_sum->finish(nll);
}

StepResult apply_gradients(StepContext& ctx, const Tensor& nll, int64_t counted, double lr) {
  StepResult r;
  r.tokens = counted;
  if (counted == 0) {
    r.skipped = true;
    return r;
  }
  const profile::Scope scope(profile::Category::Optimizer, /*sticky=*/true);
  // One reduction (on the gradients' device) gives the norm; NaN/Inf anywhere makes it non-finite.
  r.grad_norm = ctx.max_grad_norm > 0 ? clip_grad_norm(*ctx.params, ctx.max_grad_norm) : global_grad_norm(*ctx.params);
  r.loss = nll.to(Device::cpu()).data<double>()[0] / counted;
  if (!std::isfinite(r.grad_norm) || !std::isfinite(r.loss)) {
    r.skipped = true;
    return r;
  }
  ctx.optimizer->step(*ctx.params, lr);
  return r;
}

int64_t counted_targets(const std::vector<MicroBatch>& micro_batches) {
  int64_t counted = 0;
  for (const auto& mb : micro_batches) counted += mb.counted;
  return counted;
}

StepResult train_step(StepContext& ctx, const std::vector<MicroBatch>& micro_batches, double lr) {
  const int64_t counted = counted_targets(micro_batches);
  Tensor nll;
  accumulate_gradients(ctx, micro_batches, counted, nll);
  return apply_gradients(ctx, nll, counted, lr);
}

}  // namespace lowrank::train
