#include "lowrank/lora/k_extension.h"

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

void make_extended_weights(Adapter& adapter, const model::Model& model) {
  for (LoraPair& p : adapter.pairs) p.W_ext = Tensor();
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
    int64_t col = members[0]->in;
    for (LoraPair* p : members) {
      const Tensor& w = layer.projection(p->target)->weight;  // [out, in]
      p->W_ext = Tensor::zeros({p->out, p->in + R}, DType::BF16, device);
      ops::copy_columns_(p->W_ext, 0, w, 0, p->in);
      ops::copy_columns_(p->W_ext, col, p->B_work, 0, p->B_work.dim(1));
      p->ext_col = col;
      col += compute_rank(p->r, device);
    }
  }
}

}  // namespace lowrank::lora
