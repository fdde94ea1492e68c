// nice_ticks and plot_series (the parts of the chart that are numbers, not drawing).
#include "lowrank/train/plot.h"

#include <gtest/gtest.h>

#include "lowrank/core/error.h"

using namespace lowrank::train;

TEST(Plot, NiceTicks) {
  EXPECT_EQ(nice_ticks(0, 10, 5), (std::vector<double>{0, 2, 4, 6, 8, 10}));
  auto t = nice_ticks(1.93, 3.71, 6);
  ASSERT_GE(t.size(), 3u);
  EXPECT_NEAR(t.front(), 2.0, 1e-12);
  EXPECT_NEAR(t[1] - t[0], 0.5, 1e-12);
  EXPECT_LE(t.back(), 3.71);
  t = nice_ticks(0, 2.1e-4, 5);
  EXPECT_NEAR(t[1], 5e-5, 1e-18);
  EXPECT_EQ(nice_ticks(3, 3, 5), (std::vector<double>{3}));
}

TEST(Plot, SeriesKeepLastValueSortedAndSkipNonNumbers) {
  std::vector<nlohmann::json> recs = {
      {{"step", 3}, {"loss", 1.0}, {"lr", 0.1}},
      {{"step", 1}, {"loss", 3.0}},
      {{"step", 3}, {"loss", 0.5}},
      {{"step", 4}, {"loss", nullptr}},
      {{"step", 0}, {"eval_loss", 4.0}, {"when", "before"}},
      {{"loss", 9.0}},
  };
  auto s = plot_series(recs);
  ASSERT_EQ(s.loss.size(), 2u);
  EXPECT_EQ(s.loss[0], std::make_pair(1.0, 3.0));
  EXPECT_EQ(s.loss[1], std::make_pair(3.0, 0.5));
  ASSERT_EQ(s.eval_loss.size(), 1u);
  ASSERT_EQ(s.lr.size(), 1u);
  EXPECT_THROW(render_loss_svg(PlotSeries{}, PlotOptions{}), lowrank::Error);
}
