// The in-process communicator: sums in rank order over threads, and a rank that fails or never
// arrives stops the others with an error naming it (no hang).
#include <gtest/gtest.h>

#include <thread>

#include "lowrank/core/error.h"
#include "lowrank/dist/in_process_communicator.h"

using namespace lowrank;

namespace {

TEST(InProcessCommunicator, SumsEveryTensorOverRanks) {
  constexpr int kRanks = 3;
  dist::InProcessCommunicator comm(kRanks);
  std::vector<std::vector<Tensor>> per_rank(kRanks);
  for (int r = 0; r < kRanks; ++r)
    per_rank[r] = {Tensor::from_vector({1.0f + r, 10.0f * r}, {2}), Tensor::zeros({1}, DType::F64)};
  for (int r = 0; r < kRanks; ++r) per_rank[r][1].data<double>()[0] = 0.5 * (r + 1);
  for (int round = 0; round < 2; ++round) {  // twice: the communicator is reusable
    std::vector<std::thread> threads;
    for (int r = 0; r < kRanks; ++r) threads.emplace_back([&, r] { comm.all_reduce_sum_(r, per_rank[r]); });
    for (auto& t : threads) t.join();
  }
  for (int r = 0; r < kRanks; ++r) {
    // round 1: 1+2+3 = 6 and 0+10+20 = 30; round 2 sums three copies of that.
    EXPECT_FLOAT_EQ(per_rank[r][0].data<float>()[0], 18.0f);
    EXPECT_FLOAT_EQ(per_rank[r][0].data<float>()[1], 90.0f);
    EXPECT_DOUBLE_EQ(per_rank[r][1].data<double>()[0], 9.0);
  }
}

TEST(InProcessCommunicator, AFailedRankStopsTheOthers) {
  dist::InProcessCommunicator comm(2);
  std::vector<Tensor> t0{Tensor::zeros({4}, DType::F32)};
  std::string waiting_error;
  std::thread waiter([&] {
    try {
      comm.all_reduce_sum_(0, t0);
    } catch (const Error& e) {
      waiting_error = e.what();
    }
  });
  comm.abort(1, "out of memory");
  waiter.join();
  EXPECT_NE(waiting_error.find("rank 1 failed: out of memory"), std::string::npos) << waiting_error;
  EXPECT_THROW(comm.all_reduce_sum_(0, t0), Error);  // and every later collective
}

TEST(InProcessCommunicator, ARankThatNeverComesTimesOutNamingIt) {
  dist::InProcessCommunicator comm(3, /*timeout_s=*/0.2);
  std::vector<Tensor> a{Tensor::zeros({1}, DType::F32)}, b{Tensor::zeros({1}, DType::F32)};
  std::string ea, eb;
  std::thread ta([&] {
    try { comm.all_reduce_sum_(0, a); } catch (const Error& e) { ea = e.what(); }
  });
  std::thread tb([&] {
    try { comm.all_reduce_sum_(2, b); } catch (const Error& e) { eb = e.what(); }
  });
  ta.join();
  tb.join();
  EXPECT_NE(ea.find("rank(s) 1 did not reach the all-reduce"), std::string::npos) << ea;
  EXPECT_NE(eb.find("rank(s) 1 did not reach the all-reduce"), std::string::npos) << eb;
}

TEST(InProcessCommunicator, MismatchedTensorsAreAnError) {
  dist::InProcessCommunicator comm(2);
  std::vector<Tensor> a{Tensor::zeros({2}, DType::F32)}, b{Tensor::zeros({3}, DType::F32)};
  std::string ea, eb;
  std::thread ta([&] {
    try { comm.all_reduce_sum_(0, a); } catch (const Error& e) { ea = e.what(); }
  });
  try { comm.all_reduce_sum_(1, b); } catch (const Error& e) { eb = e.what(); }
  ta.join();
  EXPECT_FALSE(ea.empty());
  EXPECT_FALSE(eb.empty());
  EXPECT_NE((ea + eb).find("tensor 0 is"), std::string::npos) << ea << " | " << eb;
}

TEST(Communicator, MixedOrRepeatedDevicesAreRefused) {
  EXPECT_THROW(dist::make_communicator({Device::cpu(), Device::cuda(0)}), Error);
  EXPECT_THROW(dist::make_communicator({Device::cuda(0), Device::cuda(0)}), Error);
  EXPECT_EQ(dist::make_communicator({Device::cpu(), Device::cpu()})->size(), 2);
}

}  // namespace
