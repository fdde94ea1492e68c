// CUDA device handling and the caching allocator.
#ifdef LOWRANK_WITH_CUDA
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "cuda/cuda_test_util.h"
#include "lowrank/core/device_memory.h"
#include "lowrank/core/shapes_vary.h"
#include "lowrank/ops/ops.h"

using namespace lowrank;
using namespace lowrank::test;

TEST(CudaDevice, NoGpuGivesAClearError) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a GPU is visible";
  try {
    Tensor::empty({4}, DType::F32, Device::cuda(0));
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no CUDA GPU is visible"), std::string::npos) << e.what();
  }
}

TEST(CudaDevice, MissingDeviceIndexIsAnError) {
  LR_REQUIRE_GPU();
  const int n = cuda_device_count();
  try {
    Tensor::empty({4}, DType::F32, Device::cuda(n));
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda:" + std::to_string(n)), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("visible"), std::string::npos) << e.what();
  }
  EXPECT_NE(std::string(cuda::device_description(gpu())).find("cuda:0"), std::string::npos);
}

TEST(CudaDevice, CopiesRoundTripAndZero) {
  LR_REQUIRE_GPU();
  Tensor a = random_cpu({37, 11}, 1);
  Tensor d = a.to(gpu());
  Tensor d2 = d.clone();  // device -> device through the host
  Tensor e = Tensor::empty(a.shape(), DType::F32, gpu());
  device_copy(e.raw(), gpu(), d.raw(), gpu(), a.nbytes());  // device -> device
  for (const Tensor* t : {&d, &d2, &e}) {
    Tensor back = t->to(Device::cpu());
    EXPECT_EQ(std::memcmp(back.raw(), a.raw(), a.nbytes()), 0);
  }
  // A view at a row offset copies just its rows.
  Tensor rows = d.slice_rows(5, 9).to(Device::cpu());
  EXPECT_EQ(std::memcmp(rows.raw(), a.slice_rows(5, 9).raw(), rows.nbytes()), 0);
  e.zero_();
  Tensor z = e.to(Device::cpu());
  for (int64_t i = 0; i < z.numel(); ++i) ASSERT_EQ(z.f32()[i], 0.0f);
}

// GPU to GPU without a host wait: the copy must still come after the source's queued work (here
// 40 in-place scalings of a 16M-element tensor) and before the destination's next op.
TEST(CudaDevice, AsyncPeerCopyWaitsForTheSourcesWork) {
  if (cuda_device_count() < 2) GTEST_SKIP() << "needs two CUDA GPUs";
  const Device g0 = Device::cuda(0), g1 = Device::cuda(1);
  Tensor src = Tensor::zeros({1 << 24}, DType::F32, g0);
  ops::fill_(src, 1.0f);
  for (int i = 0; i < 40; ++i) ops::scale_(src, 2.0f);  // 2^40: exact in f32
  Tensor dst = Tensor::empty(src.shape(), DType::F32, g1);
  device_copy_async(dst.raw(), g1, src.raw(), g0, src.nbytes());
  ops::scale_(dst, 0.5f);  // queued on cuda:1 behind the copy
  device_synchronize(g1);  // (the source must stay untouched until here)
  const Tensor host = dst.to(Device::cpu());
  for (int64_t i = 0; i < host.numel(); i += 4099) ASSERT_EQ(host.f32()[i], std::ldexp(1.0f, 39)) << i;
}

TEST(CudaAllocator, SteadyStateLoopDoesNotCallCudaMalloc) {
  LR_REQUIRE_GPU();
  auto step = [] {
    Tensor x = Tensor::empty({64, 1000}, DType::BF16, gpu());
    Tensor y = Tensor::empty({3, 333}, DType::F32, gpu());
    Tensor z = ops::cast(x, DType::F32);
    ops::scale_(z, 2.0f);
  };
  step();
  cuda::synchronize(gpu());
  const cuda::AllocatorStats before = cuda::allocator_stats(gpu());
  for (int i = 0; i < 20; ++i) step();
  cuda::synchronize(gpu());
  const cuda::AllocatorStats after = cuda::allocator_stats(gpu());
  EXPECT_EQ(after.device_mallocs, before.device_mallocs);
  EXPECT_GE(after.reuses, before.reuses + 60);
  EXPECT_EQ(after.in_use, before.in_use);
}

// Inside a ShapesVary scope (a server's prefill), a size whose class has no cached block takes one
// of up to twice its size instead of calling cudaMalloc; outside, it calls cudaMalloc.
TEST(CudaAllocator, InsideShapesVaryCachedBlocksUpToTwiceTheSizeAreReused) {
  LR_REQUIRE_GPU();
  cuda::synchronize(gpu());
  cuda::empty_cache(gpu());
  const size_t in_use = cuda::allocator_stats(gpu()).in_use;
  const int64_t mib = 1 << 20;
  auto mallocs_for = [&](int64_t bytes) {
    const uint64_t before = cuda::allocator_stats(gpu()).device_mallocs;
    Tensor t = Tensor::empty({bytes}, DType::U8, gpu());
    return cuda::allocator_stats(gpu()).device_mallocs - before;
  };
  { Tensor big = Tensor::empty({10 * mib}, DType::U8, gpu()); }  // cached: one block of 10 MiB
  EXPECT_EQ(mallocs_for(6 * mib), 1u);  // outside: 6 MiB has a class of its own
  {
    const ShapesVary varying;
    EXPECT_EQ(mallocs_for(7 * mib), 0u);  // the 10 MiB block
    EXPECT_EQ(mallocs_for(5 * mib + 1), 0u);
    EXPECT_EQ(mallocs_for(4 * mib), 0u);  // the 6 MiB block
    EXPECT_EQ(mallocs_for(2 * mib), 1u);  // under half of every cached block
  }
  EXPECT_EQ(mallocs_for(7 * mib), 1u);  // outside again
  cuda::synchronize(gpu());
  EXPECT_EQ(cuda::allocator_stats(gpu()).in_use, in_use);
}

TEST(CudaAllocator, SizeClasses) {
  EXPECT_EQ(cuda::allocation_size_class(0), 512u);
  EXPECT_EQ(cuda::allocation_size_class(513), 1024u);
  EXPECT_EQ(cuda::allocation_size_class(1u << 20), 1u << 20);
  EXPECT_EQ(cuda::allocation_size_class((1u << 20) + 1), (1u << 20) + (1u << 17));
  for (size_t b : {size_t(1000), size_t(3) << 20, size_t(77777777), size_t(5) << 30}) {
    const size_t c = cuda::allocation_size_class(b);
    EXPECT_GE(c, b);
    EXPECT_LE(c, b + b / 8 + 512) << b;
  }
}

TEST(CudaAllocator, OutOfMemoryNamesTheBytesAndSuggestsAFix) {
  LR_REQUIRE_GPU();
  const int64_t huge = int64_t(1) << 48;  // 256 TiB of bytes
  try {
    Tensor::empty({huge}, DType::U8, gpu());
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(std::to_string(huge) + " bytes"), std::string::npos) << msg;
    EXPECT_NE(msg.find("--checkpointing"), std::string::npos) << msg;
    EXPECT_NE(msg.find("out of memory"), std::string::npos) << msg;
  }
  // The device still works afterwards.
  Tensor t = Tensor::zeros({8}, DType::F32, gpu());
  EXPECT_EQ(t.to(Device::cpu()).f32()[7], 0.0f);
  cuda::empty_cache(gpu());
  EXPECT_EQ(cuda::allocator_stats(gpu()).cached, 0u);
}

TEST(CudaOps, MixedDevicesAreAnError) {
  LR_REQUIRE_GPU();
  Tensor a = Tensor::zeros({2, 2});
  Tensor b = Tensor::zeros({2, 2}, DType::F32, gpu());
  EXPECT_THROW(ops::add_(a, b), Error);
}
#endif
