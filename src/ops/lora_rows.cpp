// Dispatch of segmented LoRA (lora_rows_): the table's shapes are checked here, once for every
// backend, so that a kernel only reads what fits.
#include "dispatch.h"
#include "lowrank/ops/ops.h"

namespace lowrank::ops {

void lora_rows_(Tensor& y, const Tensor& x, const LoraRows& t) {
  const Device d = detail::op_device("lora_rows_", {&y, &x, &t.rows});
  LR_CHECK(x.rank() == 2 && y.rank() == 2 && x.dim(0) == y.dim(0), "lora_rows_: x ", x.str(), " and y ", y.str(),
           " need the same rows");
  LR_CHECK(x.dtype() == y.dtype(), "lora_rows_: x ", x.str(), " and y ", y.str(), " differ in dtype");
  LR_CHECK(t.rows.dtype() == DType::I32 && t.rows.numel() == x.dim(0), "lora_rows_: rows ", t.rows.str(), " for ",
           x.dim(0), " rows of x");
  LR_CHECK(t.a.size() == t.b.size() && t.a.size() == t.scale.size(), "lora_rows_: ", t.a.size(), " A, ", t.b.size(),
           " B and ", t.scale.size(), " scales");
  for (size_t j = 0; j < t.a.size(); ++j) {
    const Tensor &a = t.a[j], &b = t.b[j];
    if (!a.defined() && !b.defined()) continue;  // adapter j does not adapt this projection
    LR_CHECK(a.defined() && b.defined() && a.rank() == 2 && b.rank() == 2 && a.dim(1) == x.dim(1) &&
                 b.dim(0) == y.dim(1) && b.dim(1) == a.dim(0),
             "lora_rows_: adapter ", j, ": A ", a.defined() ? a.str() : "undefined", " and B ",
             b.defined() ? b.str() : "undefined", " do not fit x ", x.str(), " and y ", y.str());
    LR_CHECK(a.dim(0) >= 1 && a.dim(0) <= kLoraRowsMaxRank, "lora_rows_: adapter ", j, " has rank ", a.dim(0),
             " (1 to ", kLoraRowsMaxRank, " supported)");
    LR_CHECK(a.dtype() == x.dtype() && b.dtype() == x.dtype(), "lora_rows_: adapter ", j, ": A ", a.str(), " and B ",
             b.str(), " must have x's dtype ", dtype_name(x.dtype()));
    LR_CHECK(a.device() == d && b.device() == d, "lora_rows_: adapter ", j, " is on ", a.device().str(),
             ", the batch on ", d.str());
  }
  LR_DISPATCH(d, lora_rows_(y, x, t));
}

}  // namespace lowrank::ops
