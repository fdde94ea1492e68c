// `lowrank train --devices`: data parallel over two CPU ranks (threads, in-process all-reduce) gives
// one device's losses and adapter up to summation order, resumes on another number of devices, and
// refuses batches it cannot split.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "cli/cli_test_helpers.h"
#include "io/io_test_helpers.h"
#include "lowrank/core/device_memory.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/train/metrics.h"
#include "lowrank/train/trainer.h"

using namespace lowrank;

namespace {

// No dropout: each rank draws its own masks, so only dropout-free runs can agree.
std::string args(const std::string& out, const std::string& devices, int batch = 2) {
  const std::string model = test::model_fixture("llama");
  return "train --model " + model + " --data " + model + "/eval.jsonl --out " + out + " " + devices +
         " --targets all-linear --rank 4 --dropout 0 --batch-size " + std::to_string(batch) +
         " --grad-accum 2 --lr 5e-3 --warmup 2 --seq-len 16 --quiet";
}

// Per-step losses and grad norms agree to `tol` (relative); the trained tensors (the adapter, or
// with --full the model in `weights`) to `weight_tol` (absolute; `tol` when 0).
void expect_same_run(const std::string& a, const std::string& b, double tol,
                     const std::string& weights = "adapter_model.safetensors", double weight_tol = 0) {
  if (weight_tol == 0) weight_tol = tol;
  auto ma = train::read_metrics(a + "/metrics.jsonl");
  auto mb = train::read_metrics(b + "/metrics.jsonl");
  ASSERT_EQ(ma.size(), mb.size());
  for (size_t i = 0; i < ma.size(); ++i) {
    ASSERT_EQ(ma[i]["step"], mb[i]["step"]);
    const double la = ma[i]["loss"].get<double>(), lb = mb[i]["loss"].get<double>();
    EXPECT_NEAR(la, lb, tol * std::abs(la)) << "step " << ma[i]["step"];
    EXPECT_NEAR(ma[i]["grad_norm"].get<double>(), mb[i]["grad_norm"].get<double>(),
                tol * ma[i]["grad_norm"].get<double>());
  }
  auto fa = io::SafetensorsFile::open(a + "/" + weights);
  auto fb = io::SafetensorsFile::open(b + "/" + weights);
  ASSERT_EQ(fa.tensors().size(), fb.tensors().size());
  for (const auto& info : fa.tensors()) {
    Tensor x = fa.get(info.name), y = fb.get(info.name);
    ASSERT_EQ(x.shape(), y.shape()) << info.name;
    x = x.to(DType::F32);
    y = y.to(DType::F32);
    for (int64_t i = 0; i < x.numel(); ++i)
      ASSERT_NEAR(x.f32()[i], y.f32()[i], weight_tol) << info.name << "[" << i << "]";
  }
}

// The run with `flags` on one CPU device and on two CPU ranks (threads) agree (expect_same_run).
void expect_two_cpu_ranks_equal_one(const std::string& flags, const std::string& weights = "adapter_model.safetensors",
                                    double weight_tol = 1e-5) {
  io::testing::ScratchDir d;
  auto one = test::run_cli(args(d.file("one"), "--device cpu") + flags);
  ASSERT_EQ(one.code, 0) << one.err;
  auto two = test::run_cli(args(d.file("two"), "--devices cpu,cpu") + flags);
  ASSERT_EQ(two.code, 0) << two.err;
  expect_same_run(d.file("one"), d.file("two"), 1e-5, weights, weight_tol);
}

TEST(DataParallelCli, TwoCpuRanksEqualOneDevice) { expect_two_cpu_ranks_equal_one(" --steps 6"); }

// LoRA+: every rank's optimizer has B's group at its own lr.
TEST(DataParallelCli, TwoCpuRanksEqualOneDeviceWithLoraPlus) {
  expect_two_cpu_ranks_equal_one(" --steps 4 --loraplus-lr-ratio 8");
}

// --modules-to-save: the copies' gradients (layer -1 and the lm_head's) summed at the end of the
// backward; the embedding copy's rows that one rank's tokens miss get only the other's.
TEST(DataParallelCli, TwoCpuRanksEqualOneDeviceWithModulesToSave) {
  expect_two_cpu_ranks_equal_one(" --steps 4 --modules-to-save embed_tokens,lm_head", "adapter_model.safetensors", 1e-4);
}

// --full: every weight's gradient summed, a bucket per decoder layer as the backward leaves it.
// AdamW turns a tiny gradient's last-bit differences (summation order) into visible differences
// of its update (up to lr = 5e-3 a step): the weights agree to 2% of one step, the losses to 1e-5.
// A bucket left out of the sum would differ by whole steps (and change the gradient norm).
TEST(DataParallelCli, TwoCpuRanksEqualOneDeviceFull) {
  expect_two_cpu_ranks_equal_one(" --full --steps 3", "model.safetensors", 1e-4);
}

TEST(DataParallelCli, ResumesOnAnotherNumberOfDevices) {
  io::testing::ScratchDir d;
  auto straight = test::run_cli(args(d.file("straight"), "--devices cpu,cpu") + " --steps 4 --save-every 2");
  ASSERT_EQ(straight.code, 0) << straight.err;
  auto killed = test::run_cli(args(d.file("resumed"), "--devices cpu,cpu") + " --steps 4 --save-every 2",
                              "LOWRANK_TEST_KILL_AFTER_STEP=3");
  EXPECT_EQ(killed.code, 128 + 9) << killed.err;
  ASSERT_TRUE(std::filesystem::exists(d.file("resumed/checkpoint-2/manifest.json")));
  auto resumed = test::run_cli(args(d.file("resumed"), "--device cpu") + " --steps 4 --save-every 2 --resume");
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  expect_same_run(d.file("straight"), d.file("resumed"), 1e-5);
}

// A TCP port nobody listens on now (the kernel's pick for an ephemeral bind).
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

std::string launch_env(int rank, int world, int port) {
  return "RANK=" + std::to_string(rank) + " WORLD_SIZE=" + std::to_string(world) + " LOCAL_RANK=" +
         std::to_string(rank) + " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) +
         " LOWRANK_DIST_TIMEOUT_S=60";
}

// Two processes (torchrun's variables), one rank each on `device`, training into `out` (only rank 0
// writes there); fails the test with the logs unless both exit 0.
void run_two_processes(io::testing::ScratchDir& d, const std::string& out, const std::string& device) {
  const int port = free_port();
  // Rank 1 in the background, rank 0 in the foreground.
  const std::string cmd = "(" + launch_env(1, 2, port) + " " + test::cli_path() + " " + args(out, device) +
                          " --steps 4 >" + d.file("rank1.log") + " 2>&1; echo $? >" + d.file("rank1.code") + ") & " +
                          launch_env(0, 2, port) + " " + test::cli_path() + " " + args(out, device) +
                          " --steps 4 >" + d.file("rank0.log") + " 2>&1; code=$?; wait; exit $code";
  const int status = std::system(("bash -c '" + cmd + "'").c_str());
  ASSERT_EQ(WEXITSTATUS(status), 0) << test::slurp(d.file("rank0.log"));
  ASSERT_EQ(test::slurp(d.file("rank1.code")), "0\n") << test::slurp(d.file("rank1.log"));
}

// A run on `one` and the same run as two processes on `each` agree to `tol`.
void expect_two_processes_equal_one(const std::string& one, const std::string& each, double tol) {
  io::testing::ScratchDir d;
  auto single = test::run_cli(args(d.file("one"), "--device " + one) + " --steps 4");
  ASSERT_EQ(single.code, 0) << single.err;
  run_two_processes(d, d.file("two"), "--device " + each);
  expect_same_run(d.file("one"), d.file("two"), tol);
}

// torchrun's conventions: two processes, one rank each, meeting over TCP; the same run as one device.
TEST(DataParallelCli, TwoProcessesEqualOneDevice) { expect_two_processes_equal_one("cpu", "cpu", 1e-5); }

// The same with one GPU per process (LOCAL_RANK picks it; NCCL's id travels over TCP).
TEST(CudaDataParallel, TwoProcessesEqualOneGpu) {
  if (cuda_device_count() < 2) GTEST_SKIP() << "needs two CUDA GPUs";
  expect_two_processes_equal_one("cuda:0", "cuda", 2e-2);
}

TEST(DataParallelCli, AMissingProcessIsAnErrorNotAHang) {
  io::testing::ScratchDir d;
  const std::string env = "RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(free_port()) +
                          " LOWRANK_DIST_TIMEOUT_S=1";
  auto r = test::run_cli(args(d.file("a"), "--device cpu") + " --steps 1", env);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("rank(s) 1 did not connect"), std::string::npos) << r.err;
  auto bad_rank = test::run_cli(args(d.file("b"), "--device cpu") + " --steps 1", "RANK=5 WORLD_SIZE=2");
  EXPECT_EQ(bad_rank.code, 2);
  EXPECT_NE(bad_rank.err.find("needs RANK in 0..1"), std::string::npos) << bad_rank.err;
  auto both = test::run_cli(args(d.file("c"), "--devices cpu,cpu") + " --steps 1", "RANK=0 WORLD_SIZE=2");
  EXPECT_EQ(both.code, 2);
  EXPECT_NE(both.err.find("each process takes one --device"), std::string::npos) << both.err;
}

TEST(DataParallelCli, BadDeviceListsAreRefused) {
  io::testing::ScratchDir d;
  auto odd = test::run_cli(args(d.file("a"), "--devices cpu,cpu", 3) + " --steps 1");
  EXPECT_EQ(odd.code, 2);
  EXPECT_NE(odd.err.find("must be a multiple of the number of ranks (2)"), std::string::npos) << odd.err;
  auto both = test::run_cli(args(d.file("b"), "--device cpu --devices cpu,cpu") + " --steps 1");
  EXPECT_EQ(both.code, 2) << both.err;
  auto mixed = test::run_cli(args(d.file("c"), "--devices cpu,cuda:0") + " --steps 1");
  EXPECT_EQ(mixed.code, 2);
  EXPECT_NE(mixed.err.find("error:"), std::string::npos) << mixed.err;
}

}  // namespace

namespace {

// The real thing on a box with two GPUs (NCCL): the same run on cuda:0 and on cuda:0 + cuda:1.
// bf16 activations: the two runs sum in different orders, so they agree to bf16's tolerance.
TEST(CudaDataParallel, TwoGpusEqualOneGpu) {
  if (cuda_device_count() < 2) GTEST_SKIP() << "needs two CUDA GPUs";
  io::testing::ScratchDir d;
  const std::string model = test::model_fixture("llama");
  train::TrainOptions o;
  o.model_dir = model;
  o.data_path = model + "/eval.jsonl";
  o.lora.r = 4;
  o.lora.alpha = 8;
  o.lora.dropout = 0;
  o.lora.target_modules.clear();
  o.lora.all_linear = true;
  o.batch_size = 2;
  o.grad_accum = 2;
  o.seq_len = 16;
  o.lr = 5e-3;
  o.steps = 6;
  o.quiet = true;
  o.out_dir = d.file("one");
  o.device = "cuda:0";
  train::run_training(o);
  o.out_dir = d.file("two");
  o.devices = {"cuda:0", "cuda:1"};
  train::run_training(o);
  expect_same_run(d.file("one"), d.file("two"), 2e-2);
  // --full: every weight summed over the GPUs, a bucket per layer during the backward.
  o.full = true;
  o.steps = 4;
  o.out_dir = d.file("one-full");
  o.devices.clear();
  train::run_training(o);
  o.out_dir = d.file("two-full");
  o.devices = {"cuda:0", "cuda:1"};
  train::run_training(o);
  expect_same_run(d.file("one-full"), d.file("two-full"), 2e-2, "model.safetensors");
}

}  // namespace
