#include "lowrank/train/optimizer.h"

#include "lowrank/ops/ops.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "lowrank/core/error.h"
#include "lowrank/lora/rank_padding.h"

namespace lowrank::train {
namespace {

constexpr int64_t kParallelMin = 1 << 15;  // below this, OpenMP start-up costs more than it saves

// torch.lerp's CPU formula: two forms so that weight 0 and 1 both give an endpoint exactly.
inline float lerp(float self, float end, float weight) {
  return std::abs(weight) < 0.5f ? self + weight * (end - self)
                                 : end - (end - self) * (1.0f - weight);
}

// The second home of a parameter's working copy as the AdamW op takes it (empty block: none).
ops::ColumnBlock also_block(const ParamRef& p) {
  if (!p.working_also.defined()) return {};
  return {p.working_also, p.working_also_col, p.param.dim(1)};
}

void check_tensor(const std::string& name, const char* what, const Tensor& t) {
  if (!t.defined()) throw error("AdamW: parameter '", name, "': ", what, " is undefined");
  if (t.dtype() != DType::F32)
    throw error("AdamW: parameter '", name, "': ", what, " must be f32 (master weights), got ", t.str());
}

const std::string kAvg = ".exp_avg";
const std::string kAvgSq = ".exp_avg_sq";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() > suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

AdamW::AdamW(AdamWConfig config) : config_(config) {
  // The same checks (and bounds) as torch.optim.AdamW's constructor.
  auto bad = [](const char* field, double v) { return error("AdamW: invalid ", field, ": ", v); };
  if (!(config_.lr >= 0.0)) throw bad("learning rate", config_.lr);
  if (!(config_.eps >= 0.0)) throw bad("epsilon value", config_.eps);
  if (!(config_.beta1 >= 0.0 && config_.beta1 < 1.0))
    throw bad("beta parameter at index 0", config_.beta1);
  if (!(config_.beta2 >= 0.0 && config_.beta2 < 1.0))
    throw bad("beta parameter at index 1", config_.beta2);
  if (!(config_.weight_decay >= 0.0)) throw bad("weight_decay value", config_.weight_decay);
}

void AdamW::check_params(const std::vector<ParamRef>& params) const {
  std::set<std::string> seen;
  for (const ParamRef& p : params) {
    if (!seen.insert(p.name).second) throw error("AdamW: parameter '", p.name, "' is listed twice");
    check_tensor(p.name, "param", p.param);
    check_tensor(p.name, "grad", p.grad);
    if (!(p.lr_scale > 0.0) || !std::isfinite(p.lr_scale))
      throw error("AdamW: parameter '", p.name, "': invalid learning-rate scale ", p.lr_scale);
    if (p.grad.shape() != p.param.shape())
      throw error("AdamW: parameter '", p.name, "': grad shape ", shape_str(p.grad.shape()),
                  " does not match param shape ", shape_str(p.param.shape()));
    const auto it = state_.find(p.name);
    if (it == state_.end()) {
      // Lazily created only while no step has been taken; later it would get a bias correction
      // for the shared step count, not for its own first step as in torch.
      if (steps_ > 0)
        throw error("AdamW: parameter '", p.name, "' has no optimizer state, but ", steps_,
                    " steps were taken without it (the parameter set must not change)");
      continue;
    }
    if (it->second.exp_avg.shape() != p.param.shape())
      throw error("AdamW: parameter '", p.name, "': optimizer state shape ",
                  shape_str(it->second.exp_avg.shape()), " does not match param shape ",
                  shape_str(p.param.shape()));
  }
  for (const auto& [name, moments] : state_)
    if (!seen.count(name))
      throw error("AdamW: optimizer state has parameter '", name,
                  "' that is missing from this step's parameters");
}

void AdamW::step(std::vector<ParamRef>& params, double lr) {
  if (!(lr >= 0.0) || !std::isfinite(lr)) throw error("AdamW: invalid learning rate: ", lr);
  check_params(params);  // all checks first, so a bad call changes nothing

  for (const ParamRef& p : params) {
    if (!state_.count(p.name)) {
      state_[p.name] = Moments{Tensor::zeros_like(p.param), Tensor::zeros_like(p.param)};
    } else if (state_[p.name].exp_avg.device() != p.param.device()) {  // loaded from a checkpoint
      Moments& m = state_[p.name];
      m.exp_avg = m.exp_avg.to(p.param.device());
      m.exp_avg_sq = m.exp_avg_sq.to(p.param.device());
    }
  }
  ++steps_;

  // One pass per learning rate: LoRA+ gives B its own (ParamRef::lr_scale), as torch's param groups
  // do; every group shares the step count. Groups keep the params' order.
  std::vector<double> scales;
  for (const ParamRef& p : params)
    if (std::find(scales.begin(), scales.end(), p.lr_scale) == scales.end()) scales.push_back(p.lr_scale);
  bool working_left = false;  // a working copy the AdamW pass does not write (CPU, or not bf16)
  for (const double scale : scales) {
    std::vector<ParamRef*> group;
    for (ParamRef& p : params)
      if (p.lr_scale == scale) group.push_back(&p);
    working_left = update(group, lr * scale) || working_left;
  }
  if (working_left) refresh_working_copies(params);
}

bool AdamW::update(const std::vector<ParamRef*>& params, double lr) {
  // Scalars in double, as torch computes them in Python; rounded to f32 where torch passes them
  // to an f32 kernel as a Scalar.
  const double t = static_cast<double>(steps_);
  const double bias_correction1 = 1.0 - std::pow(config_.beta1, t);
  const double bias_correction2 = 1.0 - std::pow(config_.beta2, t);
  const double step_size = lr / bias_correction1;
  const double bias_correction2_sqrt = std::pow(bias_correction2, 0.5);  // Python's `** 0.5`

  const float decay_f = static_cast<float>(1.0 - lr * config_.weight_decay);
  const float lerp_w = static_cast<float>(1.0 - config_.beta1);
  const float beta2_f = static_cast<float>(config_.beta2);
  const float one_minus_beta2_f = static_cast<float>(1.0 - config_.beta2);
  const float bc2_sqrt_f = static_cast<float>(bias_correction2_sqrt);
  const float eps_f = static_cast<float>(config_.eps);
  const float neg_step_f = static_cast<float>(-step_size);

  // Device tensors: one multi-tensor launch for all of them (the same element formula).
  std::vector<Tensor> dev_p, dev_g, dev_m, dev_v, dev_w;
  std::vector<ops::ColumnBlock> dev_also;
  std::vector<uint8_t> dev_decay;
  bool working_left = false;
  for (ParamRef* refp : params) {
    ParamRef& ref = *refp;
    Moments& st = state_.at(ref.name);
    if (!ref.param.device().is_cpu()) {
      dev_p.push_back(ref.param);
      dev_g.push_back(ref.grad);
      dev_m.push_back(st.exp_avg);
      dev_v.push_back(st.exp_avg_sq);
      dev_decay.push_back(ref.decay);
      const bool fused = ref.working.defined() && ref.working.dtype() == DType::BF16;
      dev_w.push_back(fused ? ref.working : Tensor());
      dev_also.push_back(fused ? also_block(ref) : ops::ColumnBlock{});
      working_left = working_left || (ref.working.defined() && !fused);
      continue;
    }
    working_left = working_left || ref.working.defined();
    float* p = ref.param.f32();
    const float* g = ref.grad.f32();
    float* m = st.exp_avg.f32();
    float* v = st.exp_avg_sq.f32();
    const int64_t n = ref.param.numel();
    // torch skips param.mul_ when weight_decay == 0; multiplying by 1.0f would be exact anyway.
    const bool decay = ref.decay && config_.weight_decay != 0.0;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) {
      // torch:  param.mul_(1 - lr * wd)
      //         exp_avg.lerp_(grad, 1 - beta1)
      //         exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
      //         denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
      //         param.addcdiv_(exp_avg, denom, value=-step_size)
      float pi = p[i];
      if (decay) pi *= decay_f;
      const float gi = g[i];
      const float mi = lerp(m[i], gi, lerp_w);
      float vi = v[i] * beta2_f;
      vi = vi + one_minus_beta2_f * gi * gi;
      const float denom = std::sqrt(vi) / bc2_sqrt_f + eps_f;
      p[i] = pi + neg_step_f * (mi / denom);
      m[i] = mi;
      v[i] = vi;
    }
  }
  if (!dev_p.empty()) {
    const ops::AdamWScalars sc{decay_f, config_.weight_decay != 0.0, lerp_w, beta2_f, one_minus_beta2_f,
                               bc2_sqrt_f, eps_f, neg_step_f};
    // One launch per device (a model split over GPUs has its parameters on several).
    std::vector<Device> devices;
    for (const Tensor& p : dev_p)
      if (std::find(devices.begin(), devices.end(), p.device()) == devices.end()) devices.push_back(p.device());
    for (const Device d : devices) {
      if (devices.size() == 1) {
        ops::adamw_update_all_(dev_p, dev_g, dev_m, dev_v, dev_decay, sc, dev_w, dev_also);  // bf16 copies in the same pass
        break;
      }
      std::vector<Tensor> p, g, m, v, w;
      std::vector<ops::ColumnBlock> also;
      std::vector<uint8_t> decay;
      for (size_t i = 0; i < dev_p.size(); ++i) {
        if (!(dev_p[i].device() == d)) continue;
        p.push_back(dev_p[i]);
        g.push_back(dev_g[i]);
        m.push_back(dev_m[i]);
        v.push_back(dev_v[i]);
        w.push_back(dev_w[i]);
        also.push_back(dev_also[i]);
        decay.push_back(dev_decay[i]);
      }
      ops::adamw_update_all_(p, g, m, v, decay, sc, w, also);
    }
  }
  return working_left;
}

void refresh_working_copies(std::vector<ParamRef>& params) {
  for (ParamRef& p : params) {
    if (p.working.defined()) lora::cast_into_block(p.working, p.param);  // LoRA's may be wider (rank_padding.h)
    if (p.working_also.defined()) lora::cast_into_block(p.working_also, p.param, p.working_also_col);
  }
}

std::vector<std::pair<std::string, Tensor>> AdamW::state_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  out.reserve(state_.size() * 2);
  for (const auto& [name, st] : state_) {
    out.emplace_back(name + kAvg, st.exp_avg);
    out.emplace_back(name + kAvgSq, st.exp_avg_sq);
  }
  return out;
}

void AdamW::load_state(const std::map<std::string, Tensor>& tensors, int64_t steps) {
  if (steps < 0) throw error("AdamW: invalid optimizer step count in checkpoint: ", steps);
  std::map<std::string, Moments> state;
  for (const auto& [key, tensor] : tensors) {
    const bool sq = ends_with(key, kAvgSq);
    if (!sq && !ends_with(key, kAvg))
      throw error("AdamW: optimizer state tensor '", key,
                  "' is not named '<param>.exp_avg' or '<param>.exp_avg_sq'");
    const std::string name = key.substr(0, key.size() - (sq ? kAvgSq : kAvg).size());
    if (!tensor.defined() || !tensor.device().is_cpu() || !is_float(tensor.dtype()))
      throw error("AdamW: optimizer state tensor '", key, "' must be a float tensor on the cpu");
    // Own, writable f32 copy: the input may be a read-only mmap view of a safetensors file.
    Tensor copy = tensor.dtype() == DType::F32 ? tensor.clone() : tensor.to(DType::F32);
    (sq ? state[name].exp_avg_sq : state[name].exp_avg) = std::move(copy);
  }
  for (const auto& [name, st] : state) {
    if (!st.exp_avg.defined() || !st.exp_avg_sq.defined())
      throw error("AdamW: optimizer state for parameter '", name, "' has ",
                  st.exp_avg.defined() ? "exp_avg but no exp_avg_sq" : "exp_avg_sq but no exp_avg");
    if (st.exp_avg.shape() != st.exp_avg_sq.shape())
      throw error("AdamW: optimizer state for parameter '", name, "': exp_avg shape ",
                  shape_str(st.exp_avg.shape()), " does not match exp_avg_sq shape ",
                  shape_str(st.exp_avg_sq.shape()));
  }
  state_ = std::move(state);
  steps_ = steps;
}

}  // namespace lowrank::train
