#pragma once
// DecodeStep on the CPU: the sequences of a round run one after the other, each through the
// model's KV-cached forward exactly as infer::Generator runs it, so a reply at temperature 0 is
// the token sequence `lowrank generate --greedy` produces.
#include "lowrank/serve/decode_step.h"

namespace lowrank::serve {

class CpuDecodeStep : public DecodeStep {
 public:
  explicit CpuDecodeStep(const model::Model& model);
  std::unique_ptr<SequenceState> open(int64_t capacity) override;
  void run(std::span<StepEntry> batch) override;

 private:
  const model::Model& model_;
};

}  // namespace lowrank::serve
