#include "lowrank/lora/mixable_adapter.h"

#include <chrono>
#include <cstring>
#include <vector>

#include "lowrank/core/error.h"
#include "lowrank/core/log.h"
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
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  auto ms_since = [](clock::time_point t) { return std::chrono::duration<double, std::milli>(clock::now() - t).count(); };
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
  const double alloc_ms = ms_since(t0);

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
  const auto t1 = clock::now();
  const double staging_ms = ms_since(t0) - alloc_ms;
  // A host f32 adapter becomes a bf16 one here, on the host: half the bytes to copy. Sources on a
  // device (rare: a server's adapters live in host memory) come to the host first.
  std::vector<Tensor> host_sources(sources.size());
  for (size_t i = 0; i < sources.size(); ++i) {
    host_sources[i] = sources[i]->device().is_cpu() ? *sources[i] : ops::cast(*sources[i], dtype).to(Device::cpu());
    const DType t = host_sources[i].dtype();  // what convert_floats reads (it must not throw below)
    LR_CHECK(t == DType::F32 || t == DType::BF16 || t == DType::F16 || t == DType::F64, "adapter tensor ",
             host_sources[i].str(), " is not f32, bf16, f16 or f64");
  }
  // The tensors in parallel: most are too small for convert_floats' own threads (an all-linear
  // adapter of Qwen2.5-0.5B's shape cast 3.3-4.6 ms on 16 cores that way, 7 ms on one).
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t i = 0; i < static_cast<int64_t>(sources.size()); ++i) {
    const Tensor& t = host_sources[i];
    char* dst = host + starts[i] * elem;
    convert_floats(t.raw(), t.dtype(), dst, dtype, t.numel());
    const int64_t end = i + 1 < static_cast<int64_t>(sources.size()) ? starts[i + 1] : total;
    std::memset(dst + t.numel() * elem, 0, (end - starts[i] - t.numel()) * elem);  // the padding
  }
  const double cast_ms = ms_since(t1);
  if (up) up->upload(slab.raw(), slab.nbytes());
  log_debug("adapter copy: ", sources.size(), " tensors, ", slab.nbytes(), " bytes to ", device.str(), " in ",
            ms_since(t0), " ms (device allocation ", alloc_ms, ", staging ", staging_ms, ", cast ", cast_ms, ")");

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
