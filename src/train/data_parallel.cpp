#include "lowrank/train/data_parallel.h"

#include <atomic>
#include <exception>
#include <thread>

#include "lowrank/core/error.h"

namespace lowrank::train {

std::vector<std::vector<int64_t>> shard_indices(const std::vector<int64_t>& batch, int ranks) {
  const int64_t n = static_cast<int64_t>(batch.size());
  if (ranks <= 0 || n % ranks != 0)
    throw error("--batch-size ", n, " must be a multiple of the number of devices (", ranks, ")");
  const int64_t each = n / ranks;
  std::vector<std::vector<int64_t>> out(ranks);
  for (int r = 0; r < ranks; ++r) out[r].assign(batch.begin() + r * each, batch.begin() + (r + 1) * each);
  return out;
}

StepResult train_step_parallel(std::vector<StepContext*>& ranks, dist::Communicator& comm,
                               const std::vector<std::vector<MicroBatch>>& shards, int64_t counted, double lr) {
  const int n = static_cast<int>(ranks.size());
  LR_CHECK(n == comm.size() && static_cast<int>(shards.size()) == n, n, " ranks, ", comm.size(),
           "-rank communicator, ", shards.size(), " shards");
  std::vector<StepResult> results(n);
  std::vector<std::exception_ptr> errors(n);
  std::atomic<int> first_failed{-1};  // the root cause; the others then fail because it aborted
  auto run_rank = [&](int r) {
    try {
      StepContext& ctx = *ranks[r];
      LR_CHECK(ctx.gradient_sum, "rank ", r, " has no gradient sum");
      Tensor nll;
      accumulate_gradients(ctx, shards[r], counted, nll);  // the sums start during the backward
      if (counted > 0) comm.wait(r);
      results[r] = apply_gradients(ctx, nll, counted, lr);
    } catch (const std::exception& e) {
      errors[r] = std::current_exception();
      int none = -1;
      first_failed.compare_exchange_strong(none, r);
      comm.abort(r, e.what());
    }
  };
  std::vector<std::thread> threads;
  for (int r = 1; r < n; ++r) threads.emplace_back(run_rank, r);
  run_rank(0);
  for (auto& t : threads) t.join();
  if (first_failed >= 0) std::rethrow_exception(errors[first_failed]);
  return results[0];
}

}  // namespace lowrank::train
