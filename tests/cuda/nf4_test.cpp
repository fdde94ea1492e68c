// The CUDA NF4 dequantize kernel against the CPU loop (src/backend/cpu/nf4.cpp): bit for bit, in
// bf16 (the CPU's f32 result rounded once) and in f32, for the vectorised path (numel % 8 == 0) and
// the generic one (odd sizes, a partial last block).
#include "cuda_test_util.h"
#include "lowrank/model/nf4.h"

#ifdef LOWRANK_WITH_CUDA
using namespace lowrank;

namespace {

void expect_bit_equal(const Tensor& got, const Tensor& want, const std::string& what) {
  const Tensor g = got.to(Device::cpu());
  ASSERT_EQ(g.shape(), want.shape()) << what;
  ASSERT_EQ(g.dtype(), want.dtype()) << what;
  const size_t elem = dtype_size(want.dtype());
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < want.numel(); ++i)
    if (std::memcmp(static_cast<const char*>(g.raw()) + i * elem, static_cast<const char*>(want.raw()) + i * elem, elem)) {
      if (first < 0) first = i;
      ++bad;
    }
  EXPECT_EQ(bad, 0) << what << ": first difference at element " << first;
}

}  // namespace

TEST(CudaNf4, DequantizeEqualsCpuBitForBit) {
  LR_REQUIRE_GPU();
  const std::vector<Shape> shapes = {{64, 128}, {200, 96}, {3, 67}, {1, 5}, {130, 130}, {1024, 352}};
  uint64_t seed = 1;
  for (const Shape& s : shapes) {
    Tensor w = test::random_cpu(s, seed++, 0.05f);
    if (w.numel() > 1000) w.f32()[777] = 2.0f;  // an outlier block
    const model::Nf4Weight cpu = model::nf4_quantize(w, DType::F32, Device::cpu());
    const Tensor ref = model::nf4_dequantize(cpu);  // f32
    for (DType dt : {DType::BF16, DType::F32}) {
      model::Nf4Weight gpu = cpu.to(test::gpu());
      gpu.dtype = dt;
      const Tensor got = model::nf4_dequantize(gpu);
      EXPECT_TRUE(got.device().is_cuda());
      expect_bit_equal(got, ref.to(dt), shape_str(s) + " " + std::string(dtype_name(dt)));
    }
  }
}

TEST(CudaNf4, QuantizedOnTheHostForACudaModel) {
  LR_REQUIRE_GPU();
  const Tensor w = test::random_cpu({256, 64}, 9, 1.0f);
  const model::Nf4Weight g = model::nf4_quantize(test::to_gpu(w, DType::BF16), DType::BF16, test::gpu());
  EXPECT_TRUE(g.codes.device().is_cuda());
  const model::Nf4Weight c = model::nf4_quantize(w.to(DType::BF16).to(DType::F32), DType::F32, Device::cpu());
  expect_bit_equal(g.codes, c.codes, "codes");
  expect_bit_equal(model::nf4_dequantize(g), model::nf4_dequantize(c).to(DType::BF16), "bf16 weight");
}
#endif
