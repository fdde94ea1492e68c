#include "lowrank/lora/mixable_adapter.h"

#include <chrono>
#include <cstring>
#include <vector>

#include "lowrank/core/error.h"
#include "lowrank/core/log.h"
#include "lowrank/ops/ops.h"

namespace lowrank::lora {

bool is_mixable(const Adapter& adapter, int num_layers) {
  if (!adapter.biases.empty() || !adapter.saved_modules.empty()) return false;
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
  // The slab's layout: A then B of each pair, each starting on a 256-byte boundary. The sources
  // on the host (rare device-held ones come back first: a server's adapters live in host memory),
  // in a type convert_floats reads (it must not throw inside the parallel loop below).
  const size_t elem = dtype_size(dtype);
  const int64_t align = static_cast<int64_t>(256 / elem);
  std::vector<Tensor> sources;
  std::vector<int64_t> starts;
  int64_t total = 0;
  for (const LoraPair& p : adapter.pairs)
    for (const Tensor* t : {&p.A, &p.B}) {
      Tensor h = t->device().is_cpu() ? *t : ops::cast(*t, dtype).to(Device::cpu());
      LR_CHECK(h.dtype() == DType::F32 || h.dtype() == DType::BF16 || h.dtype() == DType::F16 || h.dtype() == DType::F64,
               "adapter tensor ", h.str(), " is not f32, bf16, f16 or f64");
      starts.push_back(total);
      total += (h.numel() + align - 1) / align * align;
      bytes_ += h.numel() * elem;
      sources.push_back(std::move(h));
    }
  const auto ta = clock::now();
  Tensor slab = Tensor::empty({std::max<int64_t>(total, 1)}, dtype, device);
  const double alloc_ms = ms_since(ta);
  const auto ts = clock::now();

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
  const double staging_ms = ms_since(ts);
  const auto t1 = clock::now();
  // A host f32 adapter becomes a bf16 one here, on the host: half the bytes to copy. The tensors
  // in parallel: most are too small for convert_floats' own threads (an all-linear adapter of
  // Qwen2.5-0.5B's shape cast 3.3-4.6 ms on 16 cores that way, 7 ms on one).
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t i = 0; i < static_cast<int64_t>(sources.size()); ++i) {
    const Tensor& t = sources[i];
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
