#pragma once
// The order of work in a pipeline step over S stages and M micro-batches. Each stage (one device,
// one stream) runs its forwards F(s, k) and backwards B(s, k) in the schedule's order:
//   GPipe:  F0 F1 ... F(M-1)  B0 B1 ... B(M-1)             every micro-batch's activations held at once
//   1F1B:   S - 1 - s forwards, then F and B alternating, then the remaining backwards: at most
//           S - s micro-batches' activations held on stage s (PipeDream-flush); the same bubble.
// The host queues all of it from one thread without waiting, in an issue order that keeps every
// stage's order, puts each op after the ops it needs (F(s-1, k) before F(s, k); F(S-1, k) before
// B(S-1, k); B(s+1, k) before B(s, k)) and the forwards in micro-batch-major order, F(0, 0) ...
// F(S-1, 0) F(0, 1) ..., so that dropout masks are drawn in the one-device order.
#include <cstdint>
#include <string>
#include <vector>

namespace lowrank::train {

enum class PipelineSchedule { GPipe, OneFOneB };
// "gpipe" or "1f1b"; Error otherwise.
PipelineSchedule parse_pipeline_schedule(const std::string& name);

struct PipelineOp {
  int stage = 0;
  int64_t micro_batch = 0;
  bool forward = true;
  bool operator==(const PipelineOp&) const = default;
};

// [stage]: each stage's ops in the order its device runs them.
std::vector<std::vector<PipelineOp>> stage_orders(PipelineSchedule schedule, int stages, int64_t micro_batches);
// Every op once, in an order the host can queue them in (see above).
std::vector<PipelineOp> issue_order(const std::vector<std::vector<PipelineOp>>& stage_orders);

}  // namespace lowrank::train
