// HostStaging's copies beside the device's stream keep the order they promise, with GEMMs queued
// ahead so that a copy which did not wait would overtake them: an upload lands only once the
// device has reached its event (a read queued before the event sees the old values) and before
// what the stream runs next (a read queued after it sees the new ones); a download reads what the
// stream had written when its event was reached, and device_waits() keeps a later write out of it.
#include <gtest/gtest.h>

#include <vector>

#include "lowrank/core/device_event.h"
#include "lowrank/core/device_memory.h"
#include "lowrank/core/host_staging.h"
#include "lowrank/ops/ops.h"

using namespace lowrank;

namespace {

// About a millisecond of GEMMs queued on d's stream.
void queue_long_work(Device d) {
  const Tensor a = Tensor::zeros({4096, 4096}, DType::BF16, d);
  Tensor y;
  for (int i = 0; i < 8; ++i) ops::matmul_nt(a, a, y);
}

std::vector<int32_t> host_ints(const Tensor& t) {
  const Tensor h = t.to(Device::cpu());
  return {h.data<int32_t>(), h.data<int32_t>() + h.numel()};
}

}  // namespace

TEST(CudaHostStaging, CopiesBesideTheStreamKeepTheirOrder) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU";
  const Device d = Device::cuda(0);
  const int64_t n = 1 << 16;
  const size_t bytes = n * sizeof(int32_t);
  Tensor x = Tensor::from_ints(std::vector<int32_t>(n, 1), d);
  DeviceEvent event(d);

  HostStaging up(d, bytes);
  for (int64_t i = 0; i < n; ++i) static_cast<int32_t*>(up.data())[i] = 2;
  queue_long_work(d);
  const Tensor before = x.clone();  // queued before the event: must see the 1s
  event.record();
  up.upload_beside(x.raw(), bytes, event);
  const Tensor after = x.clone();   // queued after the upload: must see the 2s
  EXPECT_EQ(host_ints(before), std::vector<int32_t>(n, 1));
  EXPECT_EQ(host_ints(after), std::vector<int32_t>(n, 2));

  HostStaging down(d, bytes);
  const Tensor threes = Tensor::from_ints(std::vector<int32_t>(n, 3), d);
  const Tensor fours = Tensor::from_ints(std::vector<int32_t>(n, 4), d);
  queue_long_work(d);
  device_copy(x.raw(), d, threes.raw(), d, bytes);  // written after the GEMMs
  event.record();
  down.download_beside(x.raw(), bytes, event);
  down.device_waits();
  device_copy(x.raw(), d, fours.raw(), d, bytes);  // not before the download has read x
  down.wait();
  const auto* got = static_cast<const int32_t*>(down.data());
  EXPECT_EQ(std::vector<int32_t>(got, got + n), std::vector<int32_t>(n, 3));
  EXPECT_EQ(host_ints(x), std::vector<int32_t>(n, 4));
}
