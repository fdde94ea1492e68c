// The step profiler on the CPU: ops charged to the category of their name, sticky scopes claiming
// the ops inside them, and (LOWRANK_PROFILE=ops) the per-op table's names and call counts.
#include <gtest/gtest.h>

#include <regex>
#include <string>

#include "lowrank/ops/ops.h"
#include "lowrank/ops/profile.h"

using namespace lowrank;

namespace {

// One profiled "step": three frozen-weight GEMMs, one RMSNorm, two GEMMs inside a LoRA scope.
std::string profile_a_step(bool per_op) {
  profile::reset();
  profile::set_enabled(true, per_op);
  const Tensor x = Tensor::full({64, 32}, 0.5f), w = Tensor::full({48, 32}, 0.25f), g = Tensor::full({32}, 1.0f);
  Tensor y = Tensor::empty({64, 48});
  profile::begin_step(Device::cpu());
  for (int i = 0; i < 3; ++i) ops::matmul_nt(x, w, y);
  (void)ops::rmsnorm(x, g, 1e-6f);
  {
    const profile::Scope lora(profile::Category::Lora, /*sticky=*/true);
    ops::matmul_nt(x, w, y);
    ops::matmul_nt(x, w, y);
  }
  profile::end_step();
  std::string report = profile::report();
  profile::set_enabled(false);
  profile::reset();
  return report;
}

// The `ops` column of `category`'s row in the category table (-1: no row).
long ops_of(const std::string& report, const std::string& category) {
  std::smatch m;
  const std::regex row("\\n  " + category + " +[0-9.]+ +[0-9.]+% +[0-9.]+ +([0-9]+)\\n");
  return std::regex_search(report, m, row) ? std::stol(m[1]) : -1;
}

// The `calls` column of the per-op row (category, op) (-1: no row).
long calls_of(const std::string& report, const std::string& category, const std::string& op) {
  std::smatch m;
  const std::regex row("\\n  " + category + " +" + op + " +[0-9.]+ +([0-9]+) +[0-9.]+\\n");
  return std::regex_search(report, m, row) ? std::stol(m[1]) : -1;
}

}  // namespace

TEST(StepProfiler, ChargesOpsToTheirCategoryAndStickyScopes) {
  const std::string r = profile_a_step(/*per_op=*/false);
  EXPECT_EQ(ops_of(r, "GEMM forward \\(frozen W\\)"), 3) << r;
  EXPECT_EQ(ops_of(r, "norms"), 1) << r;
  EXPECT_EQ(ops_of(r, "LoRA"), 2) << r;
  EXPECT_EQ(r.find("us/call"), std::string::npos) << "no per-op table unless asked for\n" << r;
}

TEST(StepProfiler, PerOpTableNamesEachOpWithItsCalls) {
  const std::string r = profile_a_step(/*per_op=*/true);
  EXPECT_EQ(ops_of(r, "GEMM forward \\(frozen W\\)"), 3) << r;  // the category table is unchanged
  EXPECT_EQ(calls_of(r, "GEMM forward \\(frozen W\\)", "matmul_nt"), 3) << r;
  EXPECT_EQ(calls_of(r, "LoRA", "matmul_nt"), 2) << r;
  EXPECT_EQ(calls_of(r, "norms", "rmsnorm"), 1) << r;
}
