#include "lowrank/dist/in_process_communicator.h"

#include <chrono>
#include <cstdlib>

#include "lowrank/core/error.h"

namespace lowrank::dist {

double collective_timeout_seconds() {
  static const double s = [] {
    const char* e = std::getenv("LOWRANK_DIST_TIMEOUT_S");
    const double v = e ? std::atof(e) : 0.0;
    return v > 0 ? v : 600.0;
  }();
  return s;
}

InProcessCommunicator::InProcessCommunicator(int size, double timeout_s)
    : size_(size), timeout_s_(timeout_s), slots_(size, nullptr) {
  LR_CHECK(size >= 1, "communicator of ", size, " ranks");
}

void InProcessCommunicator::throw_if_aborted(int rank) const {
  if (aborted_) throw error("rank ", rank, ": all-reduce stopped: ", abort_reason_);
}

template <typename T>
static void sum_into_all(std::vector<Tensor*>& copies) {
  const int64_t n = copies[0]->numel();
  T* first = copies[0]->data<T>();
  for (size_t r = 1; r < copies.size(); ++r) {
    const T* src = copies[r]->data<T>();
    for (int64_t i = 0; i < n; ++i) first[i] += src[i];
  }
  for (size_t r = 1; r < copies.size(); ++r) std::copy(first, first + n, copies[r]->data<T>());
}

void InProcessCommunicator::reduce_arrived() {
  const size_t count = slots_[0]->size();
  for (int r = 1; r < size_; ++r)
    if (slots_[r]->size() != count)
      throw error("all-reduce: rank 0 sent ", count, " tensors, rank ", r, " sent ", slots_[r]->size());
  for (size_t i = 0; i < count; ++i) {
    std::vector<Tensor*> copies;
    for (int r = 0; r < size_; ++r) {
      Tensor& t = (*slots_[r])[i];
      if (!t.device().is_cpu()) throw error("all-reduce: the in-process communicator takes CPU tensors, got ", t.str());
      if (r > 0 && (t.shape() != copies[0]->shape() || t.dtype() != copies[0]->dtype()))
        throw error("all-reduce: tensor ", i, " is ", copies[0]->str(), " on rank 0 and ", t.str(), " on rank ", r);
      copies.push_back(&t);
    }
    if (copies[0]->dtype() == DType::F32) sum_into_all<float>(copies);
    else if (copies[0]->dtype() == DType::F64) sum_into_all<double>(copies);
    else throw error("all-reduce: f32 or f64 tensors only, got ", copies[0]->str());
  }
}

void InProcessCommunicator::all_reduce_sum_(int rank, std::vector<Tensor>& tensors) {
  LR_CHECK(rank >= 0 && rank < size_, "rank ", rank, " of ", size_);
  std::unique_lock<std::mutex> lock(mutex_);
  throw_if_aborted(rank);
  LR_CHECK(!slots_[rank], "rank ", rank, " entered an all-reduce twice");
  slots_[rank] = &tensors;
  const uint64_t generation = generation_;
  if (++arrived_ == size_) {
    try {
      reduce_arrived();
    } catch (const std::exception& e) {
      aborted_ = true;
      abort_reason_ = e.what();
      cv_.notify_all();
      throw;
    }
    std::fill(slots_.begin(), slots_.end(), nullptr);
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
    return;
  }
  const auto timeout = std::chrono::duration<double>(timeout_s_);
  if (!cv_.wait_for(lock, timeout, [&] { return generation_ != generation || aborted_; })) {
    std::string missing;
    for (int r = 0; r < size_; ++r)
      if (!slots_[r]) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
    aborted_ = true;
    abort_reason_ = detail::concat("rank(s) ", missing, " did not reach the all-reduce within ", timeout_s_, " s");
    cv_.notify_all();
  }
  throw_if_aborted(rank);
}

void InProcessCommunicator::abort(int rank, const std::string& why) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (aborted_) return;
  aborted_ = true;
  abort_reason_ = "rank " + std::to_string(rank) + " failed: " + why;
  cv_.notify_all();
}

}  // namespace lowrank::dist
