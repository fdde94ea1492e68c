#include "backend/cpu/cross_entropy_rows.h"

#include "backend/cpu/exp_approx.h"
#include "backend/cpu/target_clones.h"

namespace lowrank::cpu {
namespace {

constexpr int64_t kLanes = 16;  // independent partial results: one AVX-512 register of floats

}  // namespace

LOWRANK_CPU_CLONES float row_max(const float* row, int64_t V) {
  float m[kLanes];
  for (int64_t j = 0; j < kLanes; ++j) m[j] = row[0];
  int64_t i = 0;
  for (; i + kLanes <= V; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) m[j] = row[i + j] > m[j] ? row[i + j] : m[j];
  float mx = m[0];
  for (int64_t j = 1; j < kLanes; ++j) mx = m[j] > mx ? m[j] : mx;
  for (; i < V; ++i) mx = row[i] > mx ? row[i] : mx;
  return mx;
}

LOWRANK_CPU_CLONES double row_exp_sum(const float* row, int64_t V, float mx) {
  double s[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= V; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) s[j] += exp_approx(row[i + j] - mx);
  double sum = 0;
  for (int64_t j = 0; j < kLanes; ++j) sum += s[j];
  for (; i < V; ++i) sum += exp_approx(row[i] - mx);
  return sum;
}

LOWRANK_CPU_CLONES void row_scaled_exp(const float* row, float* out, int64_t V, float mx, float c, bool accumulate) {
  if (accumulate)
    for (int64_t i = 0; i < V; ++i) out[i] += c * exp_approx(row[i] - mx);
  else
    for (int64_t i = 0; i < V; ++i) out[i] = c * exp_approx(row[i] - mx);
}

}  // namespace lowrank::cpu
