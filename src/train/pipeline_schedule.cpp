#include "lowrank/train/pipeline_schedule.h"

#include <algorithm>

#include "lowrank/core/error.h"

namespace lowrank::train {

PipelineSchedule parse_pipeline_schedule(const std::string& name) {
  if (name == "gpipe") return PipelineSchedule::GPipe;
  if (name == "1f1b") return PipelineSchedule::OneFOneB;
  throw error("pipeline schedule \"", name, "\": expected gpipe or 1f1b");
}

std::vector<std::vector<PipelineOp>> stage_orders(PipelineSchedule schedule, int stages, int64_t micro_batches) {
  std::vector<std::vector<PipelineOp>> out(stages);
  for (int s = 0; s < stages; ++s) {
    auto& ops = out[s];
    const int64_t warmup = schedule == PipelineSchedule::GPipe
                               ? micro_batches
                               : std::min<int64_t>(stages - 1 - s, micro_batches);
    int64_t next_f = 0, next_b = 0;
    for (; next_f < warmup; ++next_f) ops.push_back({s, next_f, true});
    while (next_f < micro_batches) {  // steady state: one forward, one backward
      ops.push_back({s, next_f++, true});
      ops.push_back({s, next_b++, false});
    }
    for (; next_b < micro_batches; ++next_b) ops.push_back({s, next_b, false});
  }
  return out;
}

std::vector<PipelineOp> issue_order(const std::vector<std::vector<PipelineOp>>& orders) {
  const int stages = static_cast<int>(orders.size());
  int64_t micro_batches = 0;
  for (const auto& o : orders) micro_batches = std::max<int64_t>(micro_batches, static_cast<int64_t>(o.size()) / 2);
  // issued_f[s]: forwards of stage s queued so far (micro-batches 0 .. issued_f[s] - 1); the same for backwards.
  std::vector<int64_t> issued_f(stages, 0), issued_b(stages, 0);
  std::vector<size_t> next(stages, 0);
  int64_t forward_turn = 0;  // index of the next forward in micro-batch-major order: k * stages + s
  std::vector<PipelineOp> out;
  auto ready = [&](const PipelineOp& op) {
    const int s = op.stage;
    const int64_t k = op.micro_batch;
    if (op.forward) return forward_turn == k * stages + s;  // implies F(s-1, k) before it
    if (s == stages - 1) return issued_f[s] > k;
    return issued_b[s + 1] > k;
  };
  size_t total = 0;
  for (const auto& o : orders) total += o.size();
  while (out.size() < total) {
    bool progressed = false;
    for (int s = 0; s < stages; ++s) {
      while (next[s] < orders[s].size() && ready(orders[s][next[s]])) {
        const PipelineOp op = orders[s][next[s]++];
        if (op.forward) {
          ++issued_f[s];
          ++forward_turn;
        } else {
          ++issued_b[s];
        }
        out.push_back(op);
        progressed = true;
      }
    }
    LR_CHECK(progressed, "pipeline schedule over ", stages, " stages and ", micro_batches,
             " micro-batches deadlocks");
  }
  return out;
}

}  // namespace lowrank::train
