// Dispatch of the cross-entropy ops.
#include "dispatch.h"
#include "lowrank/ops/ops.h"

namespace lowrank::ops {

double cross_entropy_sum(const Tensor& logits, const std::vector<int32_t>& targets, int64_t* count) {
  const Device d = detail::op_device("cross_entropy_sum", {&logits});
  LR_DISPATCH(d, cross_entropy_sum(logits, targets, count));
}

double cross_entropy_backward(const Tensor& logits, const std::vector<int32_t>& targets, float scale,
                              Tensor& dlogits) {
  const Device d = detail::op_device("cross_entropy_backward", {&logits, &dlogits});
  LR_DISPATCH(d, cross_entropy_backward(logits, targets, scale, dlogits));
}

void cross_entropy_chunk(const Tensor& logits, const Tensor& targets, float scale, Tensor& dlogits,
                         Tensor& loss_sum, const Tensor& device_scale) {
  const Device d =
      detail::op_device("cross_entropy_chunk", {&logits, &targets, &dlogits, &loss_sum, &device_scale});
  LR_CHECK(!device_scale.defined() || (device_scale.dtype() == DType::F32 && device_scale.numel() == 1),
           "cross_entropy_chunk: device_scale must be F32 [1], got ", device_scale.str());
  LR_DISPATCH(d, cross_entropy_chunk(logits, targets, scale, dlogits, loss_sum, device_scale));
}

}  // namespace lowrank::ops
