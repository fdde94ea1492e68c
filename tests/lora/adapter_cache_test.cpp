// The device adapter cache's policy on the CPU (the policy does not depend on the device):
// least recently used eviction beyond the capacity, adapters a batch holds never evicted (the cache
// goes over its capacity instead, and trim() comes back), unloaded adapters dropped, counters.
#include <gtest/gtest.h>

#include <memory>

#include "lowrank/core/error.h"
#include "lowrank/lora/adapter_cache.h"

using namespace lowrank;

namespace {

// A one-layer plain-LoRA adapter of rank r on q.
std::shared_ptr<const lora::Adapter> tiny_adapter(int64_t r, float value) {
  auto a = std::make_shared<lora::Adapter>();
  lora::LoraPair p;
  p.layer = 0;
  p.target = Target::Q;
  p.r = r;
  p.in = 4;
  p.out = 3;
  p.A = Tensor::zeros({r, 4});
  p.B = Tensor::zeros({3, r});
  for (int64_t i = 0; i < p.A.numel(); ++i) p.A.f32()[i] = value;
  a->pairs.push_back(std::move(p));
  return a;
}

}  // namespace

TEST(AdapterCache, EvictsLeastRecentlyUsedBeyondCapacity) {
  lora::AdapterCache cache(2, 1, Device::cpu(), DType::F32);
  auto a = tiny_adapter(2, 1.0f), b = tiny_adapter(3, 2.0f), c = tiny_adapter(1, 3.0f);
  EXPECT_EQ(cache.acquire(a)->find(0, Target::Q)->A.f32()[0], 1.0f);  // load a
  cache.acquire(b);                                                   // load b
  cache.acquire(a);                                                   // hit: a is now the most recent
  cache.acquire(c);                                                   // load c, evicting b
  lora::AdapterCacheStats s = cache.stats();
  EXPECT_EQ(s.loads, 3u);
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.resident, 2u);
  EXPECT_EQ(s.bytes, (2 * 4 + 3 * 2 + 1 * 4 + 3 * 1) * sizeof(float));
  cache.acquire(a);  // still resident
  EXPECT_EQ(cache.stats().hits, 2u);
  cache.acquire(b);  // was evicted: loaded again, evicting c (a is more recent)
  s = cache.stats();
  EXPECT_EQ(s.loads, 4u);
  cache.acquire(a);
  EXPECT_EQ(cache.stats().hits, 3u) << "a survived: c was the least recently used";
}

TEST(AdapterCache, AdaptersInUseAreNeverEvicted) {
  lora::AdapterCache cache(1, 1, Device::cpu(), DType::F32);
  auto a = tiny_adapter(2, 1.0f), b = tiny_adapter(2, 2.0f);
  auto held = cache.acquire(a);   // a batch holds a
  auto held_b = cache.acquire(b); // the same batch needs b: over the capacity, nothing evicted
  EXPECT_EQ(cache.stats().resident, 2u);
  EXPECT_EQ(cache.stats().evictions, 0u);
  EXPECT_EQ(held->find(0, Target::Q)->A.f32()[0], 1.0f);
  cache.trim();  // still held
  EXPECT_EQ(cache.stats().resident, 2u);
  held.reset();
  held_b.reset();
  cache.trim();  // the step ended: back to the capacity, the least recently used (a) gone
  EXPECT_EQ(cache.stats().resident, 1u);
  EXPECT_EQ(cache.stats().evictions, 1u);
  cache.acquire(b);
  EXPECT_EQ(cache.stats().hits, 1u);
}

TEST(AdapterCache, UnloadedAdapterIsDroppedAndNeverMatchesANewOne) {
  lora::AdapterCache cache(4, 1, Device::cpu(), DType::F32);
  auto a = tiny_adapter(2, 1.0f);
  cache.acquire(a);
  a.reset();  // the server unloaded it
  cache.trim();
  EXPECT_EQ(cache.stats().resident, 0u);
  EXPECT_EQ(cache.stats().evictions, 1u);
  auto again = tiny_adapter(2, 5.0f);  // may reuse a's address: must load, not hit
  EXPECT_EQ(cache.acquire(again)->find(0, Target::Q)->A.f32()[0], 5.0f);
  EXPECT_EQ(cache.stats().loads, 2u);
}

TEST(AdapterCache, RefusesAdaptersThatDoNotMix) {
  lora::AdapterCache cache(2, 1, Device::cpu(), DType::F32);
  auto dora = std::make_shared<lora::Adapter>(*tiny_adapter(2, 1.0f));
  dora->pairs[0].kind = lora::VariantKind::Dora;
  EXPECT_THROW(cache.acquire(dora), InternalError) << "the decoder asks lora::is_mixable first";
  auto lm_head = std::make_shared<lora::Adapter>(*tiny_adapter(2, 1.0f));
  lm_head->pairs[0].layer = 1;  // the lm_head of a one-layer model
  EXPECT_THROW(cache.acquire(lm_head), InternalError);
  EXPECT_EQ(cache.stats().resident, 0u);
}
