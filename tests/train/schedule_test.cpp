#include "lowrank/train/schedule.h"

#include <gtest/gtest.h>

#include "io/io_test_helpers.h"
#include "lowrank/core/error.h"
#include "lowrank/io/files.h"

using namespace lowrank;
using namespace lowrank::train;
using lowrank::io::testing::expect_error;

namespace {
ScheduleConfig config(Schedule s, double lr, int64_t warmup, int64_t total) {
  ScheduleConfig c;
  c.schedule = s;
  c.base_lr = lr;
  c.warmup_steps = warmup;
  c.total_steps = total;
  return c;
}
}  // namespace

TEST(Schedule, CosineMatchesTransformersExactly) {
  // transformers.get_cosine_schedule_with_warmup(opt(lr=5e-3), 2, 10): lr of steps 0..9.
  const double want[] = {0.0,
                         0.0025,
                         0.005,
                         0.004809698831278217,
                         0.004267766952966369,
                         0.003456708580912725,
                         0.0025,
                         0.0015432914190872758,
                         0.0007322330470336313,
                         0.00019030116872178316};
  const auto c = config(Schedule::Cosine, 5e-3, 2, 10);
  for (int64_t s = 0; s < 10; ++s) EXPECT_EQ(lr_at(c, s), want[s]) << "step " << s;
  EXPECT_EQ(lr_at(c, 10), 0.0);
}

TEST(Schedule, CosineWithMinLrMatchesTransformersExactly) {
  // get_cosine_with_min_lr_schedule_with_warmup(opt(lr=5e-3), 2, 10, min_lr_rate=0.1), steps 0..10,
  // as Python computes its lr_lambda times the base lr.
  const double want[] = {0.0, 0.0025, 0.005, 0.004828728948150395, 0.004340990257669732, 0.003611037722821452,
                         0.0027500000000000003, 0.001888962277178548, 0.0011590097423302683,
                         0.0006712710518496049, 0.0005};
  auto c = config(Schedule::CosineWithMinLr, 5e-3, 2, 10);
  c.min_lr_rate = 0.1;
  for (int64_t s = 0; s <= 10; ++s) EXPECT_EQ(lr_at(c, s), want[s]) << "step " << s;
  c.min_lr_rate = 0;  // no floor: plain cosine, bit for bit
  for (int64_t s = 0; s <= 10; ++s) EXPECT_EQ(lr_at(c, s), lr_at(config(Schedule::Cosine, 5e-3, 2, 10), s));
  c.min_lr_rate = 1.5;
  EXPECT_THROW(lr_at(c, 3), Error);
}

TEST(Schedule, WarmupRatioRoundsUpAsTransformers) {
  EXPECT_EQ(warmup_steps_for(0, 0.03, 10), 1);  // ceil(0.3)
  EXPECT_EQ(warmup_steps_for(0, 0.03, 300), 9);
  EXPECT_EQ(warmup_steps_for(0, 0.1, 100), 10);
  EXPECT_EQ(warmup_steps_for(0, 0.0, 100), 0);
  EXPECT_EQ(warmup_steps_for(5, 0.0, 100), 5);  // steps given: the ratio is not used
}

TEST(Schedule, CosineMatchesTheTrainingFixtureLog) {
  // The lr that torch + transformers used for each of the 10 steps of the reference run.
  const auto j = io::read_json(std::string(LOWRANK_SOURCE_DIR) +
                               "/tests/fixtures/lora/llama_train10/expected.json");
  const auto& hp = j.at("hparams");
  ASSERT_EQ(hp.at("schedule"), "cosine");
  const auto c =
      config(parse_schedule(hp.at("schedule").get<std::string>()), hp.at("lr").get<double>(),
             hp.at("warmup").get<int64_t>(), hp.at("steps").get<int64_t>());
  for (const auto& entry : j.at("log")) {
    const int64_t step = entry.at("step").get<int64_t>() - 1;  // the log counts from 1
    EXPECT_EQ(lr_at(c, step), entry.at("lr").get<double>()) << "step " << step;
  }
}

TEST(Schedule, LinearWithWarmup) {
  const auto c = config(Schedule::Linear, 5e-3, 2, 10);
  EXPECT_EQ(lr_at(c, 0), 0.0);
  EXPECT_EQ(lr_at(c, 1), 0.0025);
  EXPECT_EQ(lr_at(c, 2), 0.005);
  EXPECT_EQ(lr_at(c, 3), 5e-3 * (7.0 / 8.0));
  EXPECT_EQ(lr_at(c, 6), 0.0025);
  EXPECT_EQ(lr_at(c, 9), 5e-3 * (1.0 / 8.0));
  EXPECT_EQ(lr_at(c, 10), 0.0);
  EXPECT_EQ(lr_at(c, 12), 0.0);  // clamped at 0 past the end
  // No warmup: starts at the base lr.
  EXPECT_EQ(lr_at(config(Schedule::Linear, 1e-3, 0, 4), 0), 1e-3);
  EXPECT_EQ(lr_at(config(Schedule::Linear, 1e-3, 0, 4), 2), 5e-4);
}

TEST(Schedule, ConstantWithWarmup) {
  const auto c = config(Schedule::Constant, 2e-4, 4, 0);
  EXPECT_EQ(lr_at(c, 0), 0.0);
  EXPECT_EQ(lr_at(c, 1), 2e-4 * 0.25);
  EXPECT_EQ(lr_at(c, 2), 2e-4 * 0.5);
  EXPECT_EQ(lr_at(c, 4), 2e-4);
  EXPECT_EQ(lr_at(c, 1000000), 2e-4);
  EXPECT_EQ(lr_at(config(Schedule::Constant, 2e-4, 0, 0), 0), 2e-4);
}

TEST(Schedule, CosineWithoutWarmupStartsAtBase) {
  const auto c = config(Schedule::Cosine, 1.0, 0, 4);
  EXPECT_EQ(lr_at(c, 0), 1.0);
  EXPECT_NEAR(lr_at(c, 2), 0.5, 1e-15);
  EXPECT_EQ(lr_at(c, 4), 0.0);
}

TEST(Schedule, ParseAndErrors) {
  EXPECT_EQ(parse_schedule("constant"), Schedule::Constant);
  EXPECT_EQ(parse_schedule("linear"), Schedule::Linear);
  EXPECT_EQ(parse_schedule("cosine"), Schedule::Cosine);
  EXPECT_EQ(parse_schedule("cosine_with_min_lr"), Schedule::CosineWithMinLr);
  for (Schedule s : {Schedule::Constant, Schedule::Linear, Schedule::Cosine, Schedule::CosineWithMinLr})
    EXPECT_EQ(parse_schedule(schedule_name(s)), s);
  expect_error([] { parse_schedule("Cosine"); }, "--schedule",
               {"'Cosine'", "constant, linear, cosine or cosine_with_min_lr"});
  expect_error([] { parse_schedule(""); }, "--schedule", {"''"});
  expect_error([] { lr_at(config(Schedule::Linear, 1e-3, -1, 10), 0); }, "--warmup", {"-1"});
  expect_error([] { lr_at(config(Schedule::Linear, 1e-3, 0, 10), -1); }, "lr schedule", {"-1"});
  expect_error([] { lr_at(config(Schedule::Linear, -1e-3, 0, 10), 0); }, "learning rate", {});
}
