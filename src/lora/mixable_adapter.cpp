#include "lowrank/lora/mixable_adapter.h"

#include <cstring>
#include <vector>

#include "lowrank/core/error.h"
#include "lowrank/ops/ops.h"

namespace lowrank::lora {

bool is_mixable(const Adapter& adapter, int num_layers) {
  if (!adapter.biases.empty()) return false;
  for (const LoraPair& p : adapter.pairs)
    if (p.kind != VariantKind::Linear || p.layer < 0 || p.layer >= num_layers) return false;
  return true;
}

MixableAdapter::MixableAdapter(const Adapter& adapter, int num_layers, Device device, DType dtype,
                               std::unique_ptr<HostStaging>* staging) {
  LR_CHECK(is_mixable(adapter, num_layers), "adapter with DoRA, embedding or lm_head LoRA, or trained biases "
                                            "cannot join a mixed-adapter batch");
  // The slab's layout: A then B of each pair, each starting on a 256-byte boundary.
  const size_t elem = dtype_size(dtype), align = 256 / elem;
  std::vector<const Tensor*> sources;
  std::vector<int64_t> starts;
  int64_t total = 0;
  for (const LoraPair& p : adapter.pairs)
    for (const Tensor* t : {&p.A, &p.B}) {
      sources.push_back(t);
      starts.push_back(total);
      total += (t->numel() + static_cast<int64_t>(align) - 1) / static_cast<int64_t>(align) * static_cast<int64_t>(align);
      bytes_ += t->numel() * elem;
    }
  Tensor slab = Tensor::empty({std::max<int64_t>(total, 1)}, dtype, device);

  // The host bytes: the slab itself on the CPU, else page-locked staging uploaded in one copy.
  std::unique_ptr<HostStaging> own;
  if (!staging) staging = &own;
  HostStaging* up = nullptr;
  char* host = static_cast<char*>(slab.raw());
  if (!device.is_cpu()) {
    if (!*staging || (*staging)->capacity() < slab.nbytes()) *staging = std::make_unique<HostStaging>(device, slab.nbytes());
    up = staging->get();
    up->wait();  // its previous upload has run
    host = static_cast<char*>(up->data());
  }
  for (size_t i = 0; i < sources.size(); ++i) {
    char* dst = host + starts[i] * elem;
    const Tensor& t = *sources[i];
    // A host f32 adapter becomes a bf16 one here, on the host: half the bytes to copy.
    if (t.device().is_cpu()) convert_floats(t.raw(), t.dtype(), dst, dtype, t.numel());
    else std::memcpy(dst, ops::cast(t, dtype).to(Device::cpu()).raw(), t.numel() * elem);
    const int64_t end = i + 1 < sources.size() ? starts[i + 1] : total;
    std::memset(dst + t.numel() * elem, 0, (end - starts[i] - t.numel()) * elem);  // the padding
  }
  if (up) up->upload(slab.raw(), slab.nbytes());

  for (size_t i = 0; i < adapter.pairs.size(); ++i) {
    const LoraPair& p = adapter.pairs[i];
    auto view = [&](int64_t start, const Tensor& like) {
      return slab.slice_rows(start, start + like.numel()).reshape(like.shape());
    };
    layers_.emplace(std::pair{p.layer, static_cast<int>(p.target)},
                    MixableLayer{view(starts[2 * i], p.A), view(starts[2 * i + 1], p.B), p.scale});
  }
}

const MixableLayer* MixableAdapter::find(int layer, Target target) const {
  auto it = layers_.find({layer, static_cast<int>(target)});
  return it == layers_.end() ? nullptr : &it->second;
}

}  // namespace lowrank::lora
