#include "lowrank/lora/k_extension.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <set>

#include "lowrank/lora/adapter.h"
#include "lowrank/lora/rank_padding.h"
#include "lowrank/lora/shared_input.h"
#include "lowrank/model/model.h"
#include "lowrank/ops/ops.h"

namespace lowrank::lora {

bool k_extension_applies(int64_t width, Device device) {
  static const char* mode = std::getenv("LOWRANK_K_EXTENSION");
  if (!device.is_cuda() || (mode && std::strcmp(mode, "0") == 0)) return false;
  if (mode && std::strcmp(mode, "1") == 0) return true;
  return width <= 2048;  // measured: a gain up to the 1B shape's 2,048, a loss at 8B's 4,096
}

namespace {

bool dx_extension_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("LOWRANK_DX_EXTENSION");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return on;
}

// The output side, for o and down: W_dx_ext = [W; A_work] where plain LoRA without dropout (its
// mask falls on s·g A) and without a trained bias (whose gradient reads dy itself) adapts them, and
// the model's RMS norms (not sandwiched: they write the residual stream's gradient) can write dy.
void make_output_side(Adapter& adapter, const model::Model& model) {
  const model::ModelConfig& c = model.config();
  if (!dx_extension_enabled() || adapter.config.dropout > 0 || c.sandwich_norms || c.norm == model::NormKind::Layer)
    return;
  for (LoraPair& p : adapter.pairs) {
    if ((p.target != Target::O && p.target != Target::Down) || p.kind != VariantKind::Linear || p.layer < 0) continue;
    const bool trained_bias = std::any_of(adapter.biases.begin(), adapter.biases.end(), [&](const BiasParam& b) {
      return b.layer == p.layer && b.target == p.target;
    });
    const model::Linear* l = model.weights().layers.at(p.layer).projection(p.target);
    if (trained_bias || !l || l->quantized() || l->weight.dtype() != DType::BF16 || !p.A_work.defined() ||
        p.A_work.dtype() != DType::BF16 || !(p.A_work.device() == l->weight.device()) ||
        !k_extension_applies(p.out, l->weight.device()))
      continue;
    const int64_t R = p.A_work.dim(0);  // the rank the GEMMs run at (rank_padding.h)
    p.W_dx_ext = Tensor::empty({p.out + R, p.in}, DType::BF16, l->weight.device());
    Tensor w_rows = p.W_dx_ext.slice_rows(0, p.out);
    ops::copy_columns_(w_rows, 0, l->weight, 0, p.in);
    p.A_ext_rows = p.W_dx_ext.slice_rows(p.out, p.out + R);
    ops::copy_columns_(p.A_ext_rows, 0, p.A_work, 0, p.in);
  }
}

}  // namespace

void make_extended_weights(Adapter& adapter, const model::Model& model) {
  for (LoraPair& p : adapter.pairs) p.W_ext = p.W_ext_stacked = p.bias_stacked = p.W_dx_ext = p.A_ext_rows = Tensor();
  make_output_side(adapter, model);
  std::set<std::pair<int, int>> seen;
  for (const LoraPair& first : adapter.pairs) {
    const int group = shared_input_of(first.target);
    if (group < 0 || !seen.insert({first.layer, group}).second) continue;
    const std::vector<LoraPair*> members = shared_input_members(adapter, first.layer, group);
    if (members.empty()) continue;
    const model::LayerWeights& layer = model.weights().layers.at(first.layer);
    const Device device = layer.projection(members[0]->target)->weight.device();
    bool applies = true;
    int64_t R = 0;  // the group's columns of h (ranks padded as the group stacks them)
    for (const LoraPair* p : members) {
      const model::Linear* l = layer.projection(p->target);
      applies = applies && l && !l->quantized() && l->weight.dtype() == DType::BF16 && l->weight.device() == device &&
                p->B_work.defined() && p->B_work.dtype() == DType::BF16 && p->B_work.device() == device &&
                p->in == members[0]->in && p->scale == members[0]->scale && k_extension_applies(p->in, device);
      R += compute_rank(p->r, device);
    }
    if (!applies) continue;
    // q, k, v: their W_ext as row blocks of one tensor, a frozen one among them (k of a q, v adapter)
    // with its weight and no LoRA block, and their biases side by side: one product forward and one
    // input-grad GEMM over their packed gradient (LoraHook::stacked_projection).
    const std::vector<Target> order{Target::Q, Target::K, Target::V};
    const bool qkv = group == 0 && std::all_of(order.begin(), order.end(), [&](Target t) {
      const model::Linear* l = layer.projection(t);
      return l && !l->quantized() && l->weight.dtype() == DType::BF16 && l->weight.device() == device &&
             l->weight.dim(1) == members[0]->in;
    });
    Tensor stacked, bias;
    std::vector<int64_t> first_row;  // of q, k, v in the stack
    if (qkv) {
      int64_t rows = 0;
      for (Target t : order) {
        first_row.push_back(rows);
        rows += layer.projection(t)->weight.dim(0);
      }
      stacked = Tensor::zeros({rows, members[0]->in + R}, DType::BF16, device);
      for (size_t i = 0; i < order.size(); ++i) {
        const model::Linear& l = *layer.projection(order[i]);
        Tensor block = stacked.slice_rows(first_row[i], first_row[i] + l.weight.dim(0));
        ops::copy_columns_(block, 0, l.weight, 0, l.weight.dim(1));
        if (!l.bias.defined()) continue;
        if (!bias.defined()) bias = Tensor::zeros({1, rows}, l.bias.dtype(), device);
        ops::copy_columns_(bias, first_row[i], l.bias.reshape({1, l.bias.numel()}), 0, l.bias.numel());
      }
      if (bias.defined()) bias = bias.reshape({rows});
    }
    int64_t col = members[0]->in;
    for (LoraPair* p : members) {
      const Tensor& w = layer.projection(p->target)->weight;  // [out, in]
      if (qkv) {
        const auto at = std::find(order.begin(), order.end(), p->target) - order.begin();
        p->stack_row = first_row[at];
        p->W_ext = stacked.slice_rows(p->stack_row, p->stack_row + p->out);  // its W copied above
      } else {
        p->W_ext = Tensor::zeros({p->out, p->in + R}, DType::BF16, device);
        ops::copy_columns_(p->W_ext, 0, w, 0, p->in);
      }
      p->W_ext_stacked = stacked;
      p->bias_stacked = bias;
      ops::copy_columns_(p->W_ext, col, p->B_work, 0, p->B_work.dim(1));
      p->ext_col = col;
      col += compute_rank(p->r, device);
    }
  }
}

}  // namespace lowrank::lora
