// Dispatch of the training ops: LoRA dropout, AdamW, grad-norm sums and clipping.
#include "dispatch.h"
#include "lowrank/ops/ops.h"

namespace lowrank::ops {

Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset, Tensor* mask, const Tensor& device_offset) {
  const Device d = detail::op_device("dropout", {&x, &device_offset});
  LR_CHECK(!device_offset.defined() || (device_offset.dtype() == DType::I64 && device_offset.numel() == 1),
           "dropout: device_offset must be I64 [1], got ", device_offset.str());
  LR_DISPATCH(d, dropout(x, p, seed, offset, mask, device_offset));
}

void dropout_backward_add_(Tensor& dx, const Tensor& gx, const Tensor& mask, double p) {
  const Device d = detail::op_device("dropout_backward_add_", {&dx, &gx, &mask});
  LR_DISPATCH(d, dropout_backward_add_(dx, gx, mask, p));
}

void dropout_shrink(const ColumnBlock& x, const DropoutDraws& d, const Tensor& A, const ColumnBlock& h, float alpha) {
  const Device dev = detail::op_device("dropout_shrink", {&x.t, &A, &h.t, &d.device_offset});
  for (const ColumnBlock* b : {&x, &h}) check_column_block("dropout_shrink", *b);
  LR_CHECK(A.defined() && A.rank() == 2 && x.width == A.dim(1) && h.width == A.dim(0) && x.t.dim(0) == h.t.dim(0),
           "dropout_shrink: x ", x.t.str(), "[:, ", x.col, "+", x.width, "] with A ", A.str(), " into ", h.t.str(),
           "[:, ", h.col, "+", h.width, "]");
  LR_DISPATCH(dev, dropout_shrink(x, d, A, h, alpha));
}

void dropout_shrink_backward(const ColumnBlock& x, const DropoutDraws& d, const ColumnBlock& g, const Tensor& A,
                             Tensor& dA, float alpha, const ColumnBlock* dx, bool accumulate) {
  const Device dev =
      detail::op_device("dropout_shrink_backward", {&x.t, &g.t, &A, &dA, dx ? &dx->t : nullptr, &d.device_offset});
  LR_CHECK(dA.defined() || dx, "dropout_shrink_backward: neither dA nor dx asked for");
  for (const ColumnBlock* b : {&x, &g, dx})
    if (b) check_column_block("dropout_shrink_backward", *b);
  LR_CHECK(A.defined() && A.rank() == 2 && x.width == A.dim(1) && g.width == A.dim(0) && g.t.dim(0) == x.t.dim(0) &&
               (!dx || (dx->width == x.width && dx->t.dim(0) == x.t.dim(0))),
           "dropout_shrink_backward: x ", x.t.str(), "[:, ", x.col, "+", x.width, "], g ", g.t.str(), "[:, ", g.col,
           "+", g.width, "] with A ", A.str());
  LR_DISPATCH(dev, dropout_shrink_backward(x, d, g, A, dA, alpha, dx, accumulate));
}

void dropout_shrink(const Tensor& x, const DropoutDraws& d, const Tensor& A, Tensor& h) {
  LR_CHECK(x.defined() && x.rank() == 2 && A.defined() && A.rank() == 2, "dropout_shrink: x ", x.str(), ", A ",
           A.str());
  if (!h.defined() || h.rank() != 2 || h.dim(0) != x.dim(0) || h.dim(1) != A.dim(0))
    h = Tensor::empty({x.dim(0), A.dim(0)}, x.dtype(), x.device());
  dropout_shrink(ColumnBlock::all(x), d, A, ColumnBlock::all(h), 1.0f);
}

void dropout_shrink_backward(const Tensor& x, const DropoutDraws& d, const Tensor& g, const Tensor& A, Tensor& dA,
                             float alpha, Tensor* dx, bool accumulate) {
  LR_CHECK(x.defined() && x.rank() == 2 && g.defined() && g.rank() == 2, "dropout_shrink_backward: x ", x.str(),
           ", g ", g.str());
  if (dx && !accumulate && (!dx->defined() || dx->shape() != x.shape() || dx->dtype() != x.dtype()))
    *dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  LR_CHECK(!dx || (dx->defined() && dx->shape() == x.shape()), "dropout_shrink_backward: dx ",
           dx && dx->defined() ? dx->str() : "undefined", " for x ", x.str());
  const ColumnBlock dx_all = dx ? ColumnBlock::all(*dx) : ColumnBlock{};
  dropout_shrink_backward(ColumnBlock::all(x), d, ColumnBlock::all(g), A, dA, alpha, dx ? &dx_all : nullptr,
                          accumulate);
}

void adamw_update_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWScalars& s) {
  const Device d = detail::op_device("adamw_update_", {&param, &grad, &exp_avg, &exp_avg_sq});
  LR_DISPATCH(d, adamw_update_(param, grad, exp_avg, exp_avg_sq, s));
}

void sum_squares_(const Tensor& x, Tensor& acc) {
  const Device d = detail::op_device("sum_squares_", {&x, &acc});
  LR_DISPATCH(d, sum_squares_(x, acc));
}

void clip_by_total_(Tensor& x, const Tensor& total_sumsq, double max_norm) {
  const Device d = detail::op_device("clip_by_total_", {&x, &total_sumsq});
  LR_DISPATCH(d, clip_by_total_(x, total_sumsq, max_norm));
}

namespace {

// The one device of a tensor list (cpu for an empty list); Error when they differ.
Device list_device(const char* op, std::initializer_list<const std::vector<Tensor>*> lists) {
  Device d = Device::cpu();
  bool first = true;
  for (const auto* l : lists)
    for (const Tensor& t : *l) {
      const Device td = detail::op_device(op, {&t});
      if (first) d = td;
      else if (!(td == d))
        throw error(op, ": tensors on different devices (", d.str(), " and ", td.str(), ")");
      first = false;
    }
  return d;
}

}  // namespace

void zero_all_(const std::vector<Tensor>& xs) {
  const Device d = list_device("zero_all_", {&xs});
  LR_DISPATCH(d, zero_all_(xs));
}

void sum_squares_all_(const std::vector<Tensor>& xs, Tensor& acc) {
  const Device d = list_device("sum_squares_all_", {&xs});
  LR_DISPATCH(d, sum_squares_all_(xs, acc));
}

void clip_by_total_all_(const std::vector<Tensor>& xs, const Tensor& total_sumsq, double max_norm) {
  const Device d = list_device("clip_by_total_all_", {&xs});
  LR_DISPATCH(d, clip_by_total_all_(xs, total_sumsq, max_norm));
}

void adamw_update_all_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                       const std::vector<Tensor>& exp_avg, const std::vector<Tensor>& exp_avg_sq,
                       const std::vector<uint8_t>& decay, const AdamWScalars& s, const std::vector<Tensor>& working,
                       const std::vector<ColumnBlock>& also) {
  const Device d = list_device("adamw_update_all_", {&params, &grads, &exp_avg, &exp_avg_sq});
  LR_CHECK(grads.size() == params.size() && exp_avg.size() == params.size() && exp_avg_sq.size() == params.size() &&
               decay.size() == params.size() && (working.empty() || working.size() == params.size()) &&
               (also.empty() || also.size() == params.size()),
           "adamw_update_all_: lists of different lengths");
  for (size_t i = 0; i < also.size(); ++i) {
    const ColumnBlock& b = also[i];
    const Tensor& p = params[i];
    if (!b.t.defined()) continue;
    LR_CHECK(b.t.dtype() == DType::BF16 && b.t.rank() == 2 && p.rank() == 2 && b.t.device() == p.device() &&
                 b.t.dim(0) >= p.dim(0) && b.width == p.dim(1) && b.col >= 0 && b.col + b.width <= b.t.dim(1),
             "adamw_update_all_: second working copy, columns [", b.col, ", ", b.col + b.width, ") of ", b.t.str(),
             ", for ", p.str());
  }
  LR_DISPATCH(d, adamw_update_all_(params, grads, exp_avg, exp_avg_sq, decay, s, working, also));
}

}  // namespace lowrank::ops
