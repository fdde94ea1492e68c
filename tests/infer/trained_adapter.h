#pragma once
// A trained-looking adapter for the decoding tests: PEFT's initialisation (seeded), then B drawn
// in [-0.2, 0.2] instead of zeros, so that every adapted layer adds something; alpha = 2r.
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lowrank/core/rng.h"
#include "lowrank/lora/adapter.h"

namespace lowrank::test {

inline std::shared_ptr<lora::Adapter> trained_adapter(model::Model& m, int64_t r, std::vector<std::string> targets,
                                                      uint64_t seed, bool dora = false) {
  lora::LoraConfig c;
  c.r = r;
  c.alpha = 2.0 * static_cast<double>(r);
  c.target_modules = std::move(targets);
  c.use_dora = dora;
  Rng rng(seed);
  auto a = std::make_shared<lora::Adapter>(lora::Adapter::create(m, c, rng));
  for (lora::LoraPair& p : a->pairs)
    for (int64_t i = 0; i < p.B.numel(); ++i) p.B.f32()[i] = rng.uniform(-0.2f, 0.2f);
  return a;
}

}  // namespace lowrank::test
