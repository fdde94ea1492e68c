// Dispatch of segmented LoRA (lora_rows_, lora_runs_): the table's shapes are checked here, once
// for every backend, so that a kernel only reads what fits.
#include "dispatch.h"
#include "lowrank/ops/ops.h"

namespace lowrank::ops {
namespace {

// x [n, in] and y [n, out] share rows and dtype; every adapter of t fits them and lives on d.
void check_table(const char* op, const Tensor& y, const Tensor& x, const LoraRows& t, Device d) {
  LR_CHECK(x.rank() == 2 && y.rank() == 2 && x.dim(0) == y.dim(0), op, ": x ", x.str(), " and y ", y.str(),
           " need the same rows");
  LR_CHECK(x.dtype() == y.dtype(), op, ": x ", x.str(), " and y ", y.str(), " differ in dtype");
  LR_CHECK(t.a.size() == t.b.size() && t.a.size() == t.scale.size(), op, ": ", t.a.size(), " A, ", t.b.size(),
           " B and ", t.scale.size(), " scales");
  for (size_t j = 0; j < t.a.size(); ++j) {
    const Tensor &a = t.a[j], &b = t.b[j];
    if (!a.defined() && !b.defined()) continue;  // adapter j does not adapt this projection
    LR_CHECK(a.defined() && b.defined() && a.rank() == 2 && b.rank() == 2 && a.dim(1) == x.dim(1) &&
                 b.dim(0) == y.dim(1) && b.dim(1) == a.dim(0),
             op, ": adapter ", j, ": A ", a.defined() ? a.str() : "undefined", " and B ",
             b.defined() ? b.str() : "undefined", " do not fit x ", x.str(), " and y ", y.str());
    LR_CHECK(a.dim(0) >= 1 && a.dim(0) <= kLoraRowsMaxRank, op, ": adapter ", j, " has rank ", a.dim(0), " (1 to ",
             kLoraRowsMaxRank, " supported)");
    LR_CHECK(a.dtype() == x.dtype() && b.dtype() == x.dtype(), op, ": adapter ", j, ": A ", a.str(), " and B ",
             b.str(), " must have x's dtype ", dtype_name(x.dtype()));
    LR_CHECK(a.device() == d && b.device() == d, op, ": adapter ", j, " is on ", a.device().str(), ", the batch on ",
             d.str());
  }
}

}  // namespace

void lora_rows_(Tensor& y, const Tensor& x, const LoraRows& t) {
  const Device d = detail::op_device("lora_rows_", {&y, &x, &t.rows});
  check_table("lora_rows_", y, x, t, d);
  LR_CHECK(t.rows.dtype() == DType::I32 && t.rows.numel() == x.dim(0), "lora_rows_: rows ", t.rows.str(), " for ",
           x.dim(0), " rows of x");
  LR_DISPATCH(d, lora_rows_(y, x, t));
}

void lora_runs_(Tensor& y, const Tensor& x, const LoraRows& t, const std::vector<LoraRun>& runs) {
  const Device d = detail::op_device("lora_runs_", {&y, &x});
  check_table("lora_runs_", y, x, t, d);
  int64_t end = 0;  // of the run before: runs in order, inside x, none empty
  for (const LoraRun& run : runs) {
    LR_CHECK(run.begin >= end && run.end > run.begin && run.end <= x.dim(0), "lora_runs_: run [", run.begin, ", ",
             run.end, ") after row ", end, " of ", x.dim(0));
    LR_CHECK(run.adapter >= 0 && static_cast<size_t>(run.adapter) < t.a.size(), "lora_runs_: run [", run.begin, ", ",
             run.end, ") names adapter ", run.adapter, " of ", t.a.size());
    end = run.end;
  }
  LR_DISPATCH(d, lora_runs_(y, x, t, runs));
}

}  // namespace lowrank::ops
