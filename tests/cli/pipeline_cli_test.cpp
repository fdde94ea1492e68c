// `lowrank train --devices ... --split layers`: the model split by layers over the devices
// (pipeline parallel, 1F1B over the --grad-accum micro-batches). On the CPU ("cpu,cpu") it is the
// one-device run exactly, with dropout, checkpointing, evaluation, checkpoints and --resume (on a
// split or on one device); bad combinations are refused. On two GPUs: the same run as one GPU.
#include <gtest/gtest.h>

#include <algorithm>

#include <cmath>
#include <filesystem>

#include "cli/cli_test_helpers.h"
#include "io/io_test_helpers.h"
#include "lowrank/core/device_memory.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/train/metrics.h"

using namespace lowrank;

namespace {

std::string args(const std::string& out, const std::string& devices, const std::string& extra = "") {
  const std::string model = test::model_fixture("llama");
  return "train --model " + model + " --data " + model + "/eval.jsonl --eval-data " + model + "/eval.jsonl --out " +
         out + " " + devices + " --targets all-linear --rank 4 --dropout 0.1 --batch-size 2 --grad-accum 3 " +
         "--lr 5e-3 --warmup 2 --seq-len 16 --quiet " + extra;
}

// Per-step losses and grad norms, eval losses and the adapters' tensors agree to `tol` (relative
// for losses and norms, absolute for the tensors).
void expect_same_run(const std::string& a, const std::string& b, double tol) {
  auto ma = train::read_metrics(a + "/metrics.jsonl");
  auto mb = train::read_metrics(b + "/metrics.jsonl");
  ASSERT_EQ(ma.size(), mb.size());
  for (size_t i = 0; i < ma.size(); ++i) {
    ASSERT_EQ(ma[i]["step"], mb[i]["step"]);
    for (const char* key : {"loss", "grad_norm", "eval_loss"}) {
      ASSERT_EQ(ma[i].contains(key), mb[i].contains(key)) << key;
      if (!ma[i].contains(key)) continue;
      const double x = ma[i][key].get<double>(), y = mb[i][key].get<double>();
      EXPECT_NEAR(x, y, tol * std::abs(x)) << key << " at step " << ma[i]["step"];
    }
  }
  auto fa = io::SafetensorsFile::open(a + "/adapter_model.safetensors");
  auto fb = io::SafetensorsFile::open(b + "/adapter_model.safetensors");
  ASSERT_EQ(fa.tensors().size(), fb.tensors().size());
  for (const auto& info : fa.tensors()) {
    Tensor x = fa.get(info.name).to(DType::F32), y = fb.get(info.name).to(DType::F32);
    ASSERT_EQ(x.shape(), y.shape()) << info.name;
    for (int64_t i = 0; i < x.numel(); ++i) ASSERT_NEAR(x.f32()[i], y.f32()[i], tol) << info.name << "[" << i << "]";
  }
}

TEST(PipelineCli, SplitOverTwoCpuStagesEqualsOneDevice) {
  io::testing::ScratchDir d;
  for (const std::string ckpt : {"", "--checkpointing"}) {
    const std::string one = d.file("one" + ckpt), two = d.file("two" + ckpt);
    auto r1 = test::run_cli(args(one, "--device cpu", ckpt) + " --steps 4");
    ASSERT_EQ(r1.code, 0) << r1.err;
    auto r2 = test::run_cli(args(two, "--devices cpu,cpu --split layers", ckpt) + " --steps 4");
    ASSERT_EQ(r2.code, 0) << r2.err;
    EXPECT_NE(r2.err.find("split by layers: cpu layers 0-0, cpu layers 1-1"), std::string::npos) << r2.err;
    expect_same_run(one, two, 1e-7);
  }
}

TEST(PipelineCli, ResumesSplitOrOnOneDevice) {
  io::testing::ScratchDir d;
  const std::string split = "--devices cpu,cpu --split layers";
  auto straight = test::run_cli(args(d.file("straight"), split) + " --steps 4 --save-every 2");
  ASSERT_EQ(straight.code, 0) << straight.err;
  for (const std::string& again : {split, std::string("--device cpu")}) {
    const std::string out = d.file(again == split ? "split" : "single");
    auto killed = test::run_cli(args(out, split) + " --steps 4 --save-every 2", "LOWRANK_TEST_KILL_AFTER_STEP=3");
    EXPECT_EQ(killed.code, 128 + 9) << killed.err;
    ASSERT_TRUE(std::filesystem::exists(out + "/checkpoint-2/manifest.json"));
    auto resumed = test::run_cli(args(out, again) + " --steps 4 --save-every 2 --resume");
    ASSERT_EQ(resumed.code, 0) << resumed.err;
    expect_same_run(d.file("straight"), out, 1e-6);
  }
}

TEST(PipelineCli, BadSplitsAreRefused) {
  io::testing::ScratchDir d;
  struct Case {
    std::string flags, message;
  } cases[] = {
      {"--devices cpu,cpu --split heads", "the only split is \"layers\""},
      {"--devices cpu --split layers", "needs --devices with two or more devices"},
      {"--device cpu --split layers", "needs --devices with two or more devices"},
      {"--devices cpu,cpu --split layers --full", "--full is not supported"},
      {"--devices cpu,cpu,cpu --split layers", "cannot split a model of 2 layers over 3 devices"},
      {"--devices cpu,cuda:0 --split layers", "error:"},
  };
  for (const auto& c : cases) {
    auto r = test::run_cli(args(d.file("x"), c.flags) + " --steps 1");
    EXPECT_EQ(r.code, 2) << c.flags << ": " << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.flags << ": " << r.err;
  }
}

// The real thing on a box with two GPUs: layer 0 on cuda:0, layer 1 on cuda:1, activations and
// gradients over NVLink; the same kernels in the same order as on one GPU.
TEST(CudaPipeline, SplitOverTwoGpusEqualsOneGpu) {
  if (cuda_device_count() < 2) GTEST_SKIP() << "needs two CUDA GPUs";
  io::testing::ScratchDir d;
  for (const std::string ckpt : {"", "--checkpointing"}) {
    const std::string one = d.file("one" + ckpt), two = d.file("two" + ckpt);
    auto r1 = test::run_cli(args(one, "--device cuda:0", ckpt) + " --steps 6");
    ASSERT_EQ(r1.code, 0) << r1.err;
    auto r2 = test::run_cli(args(two, "--devices cuda:0,cuda:1 --split layers", ckpt) + " --steps 6");
    ASSERT_EQ(r2.code, 0) << r2.err;
    expect_same_run(one, two, 1e-3);
    // The last training row (an eval row may follow it) reports the peak of each GPU.
    auto m = train::read_metrics(two + "/metrics.jsonl");
    auto last = std::find_if(m.rbegin(), m.rend(), [](const auto& row) { return row.contains("loss"); });
    ASSERT_NE(last, m.rend());
    ASSERT_TRUE(last->contains("gpu_peak_reserved_gib_per_device")) << last->dump();
    EXPECT_EQ((*last)["gpu_peak_reserved_gib_per_device"].size(), 2u);
  }
}

}  // namespace
