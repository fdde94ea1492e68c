// An adapter's copy for mixed-adapter batches: every A and B cast to the batch's dtype, in one
// slab (one allocation and one copy to the device), each on a 256-byte boundary, the values the
// adapter's, and a copy of its own (changing the adapter afterwards changes nothing).
#include <gtest/gtest.h>

#include <cstdint>

#include "lowrank/core/error.h"
#include "lowrank/lora/mixable_adapter.h"

using namespace lowrank;

namespace {

lora::LoraPair pair(int layer, Target target, int64_t r, int64_t in, int64_t out, float first) {
  lora::LoraPair p;
  p.layer = layer;
  p.target = target;
  p.r = r;
  p.in = in;
  p.out = out;
  p.scale = 2.0;
  p.A = Tensor::empty({r, in});
  p.B = Tensor::empty({out, r});
  for (int64_t i = 0; i < p.A.numel(); ++i) p.A.f32()[i] = first + 0.5f * static_cast<float>(i);
  for (int64_t i = 0; i < p.B.numel(); ++i) p.B.f32()[i] = -first - 0.25f * static_cast<float>(i);
  return p;
}

}  // namespace

TEST(MixableAdapter, OneSlabOfAlignedTensorsWithTheAdaptersValues) {
  lora::Adapter a;
  a.pairs.push_back(pair(0, Target::Q, 2, 5, 3, 1.0f));   // 10 and 6 values: padded to 128 each
  a.pairs.push_back(pair(1, Target::Down, 3, 7, 130, 4.0f));
  a.pairs.push_back(pair(1, Target::V, 1, 5, 2, 9.0f));
  for (DType dtype : {DType::F32, DType::BF16}) {
    const lora::MixableAdapter m(a, 2, Device::cpu(), dtype);
    ASSERT_EQ(m.layers().size(), 3u);
    const char* base = static_cast<const char*>(m.find(0, Target::Q)->A.raw());
    const char* end = base;
    for (const lora::LoraPair& p : a.pairs) {
      const lora::MixableLayer* l = m.find(p.layer, p.target);
      ASSERT_NE(l, nullptr);
      EXPECT_EQ(l->scale, 2.0);
      for (const auto& [copy, source] : {std::pair{&l->A, &p.A}, std::pair{&l->B, &p.B}}) {
        EXPECT_EQ(copy->shape(), source->shape());
        EXPECT_EQ(copy->dtype(), dtype);
        const char* at = static_cast<const char*>(copy->raw());
        EXPECT_EQ((at - base) % 256, 0) << "each tensor starts on a 256-byte boundary of the slab";
        EXPECT_GE(at, end) << "tensors do not overlap";
        end = at + copy->nbytes();
        for (int64_t i = 0; i < source->numel(); ++i)
          EXPECT_EQ(copy->item(i), Tensor::from_vector({source->f32()[i]}, {1}).to(dtype).item(0));
      }
    }
    EXPECT_LT(static_cast<size_t>(end - base), m.bytes() + 6 * 256)
        << "one slab: six tensors, each followed by less than 256 bytes of padding";
    EXPECT_EQ(m.find(0, Target::K), nullptr);
    EXPECT_EQ(m.bytes(), (10 + 6 + 21 + 390 + 5 + 2) * dtype_size(dtype));
  }
  const lora::MixableAdapter m(a, 2, Device::cpu(), DType::F32);
  a.pairs[0].A.f32()[0] = 100.0f;  // the adapter changes after the copy: the copy does not
  EXPECT_EQ(m.find(0, Target::Q)->A.item(0), 1.0f);
}

TEST(MixableAdapter, RefusesTensorsItCannotCast) {
  lora::Adapter a;
  a.pairs.push_back(pair(0, Target::Q, 2, 5, 3, 1.0f));
  a.pairs[0].A = Tensor::zeros({2, 5}, DType::F8_E4M3);  // an fp8 adapter would have to be dequantized first
  EXPECT_THROW(lora::MixableAdapter(a, 1, Device::cpu(), DType::BF16), InternalError);
}
