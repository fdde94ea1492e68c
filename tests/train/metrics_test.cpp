#include "lowrank/train/metrics.h"

#include <gtest/gtest.h>

#include <cmath>

#include "io/io_test_helpers.h"
#include "lowrank/io/files.h"

using namespace lowrank;
using namespace lowrank::train;
using lowrank::io::testing::expect_error;
using lowrank::io::testing::ScratchDir;
using json = nlohmann::json;

TEST(Metrics, OneCompactObjectPerLineThatParsesBack) {
  ScratchDir dir;
  const std::string path = dir.file("metrics.jsonl");
  {
    MetricsWriter w(path);
    EXPECT_TRUE(w.is_open());
    for (int step = 1; step <= 3; ++step)
      w.write({{"step", step}, {"loss", 2.5 / step}, {"lr", 2e-4}, {"note", "a b\nc"}});
    // Written through to the file at once (no buffering to lose on a kill).
    EXPECT_EQ(read_metrics(path).size(), 3u);
  }
  const std::string text = io::read_file(path);
  EXPECT_EQ(text.rfind("{\"loss\":2.5,\"lr\":0.0002,\"note\":\"a b\\nc\",\"step\":1}\n", 0), 0u)
      << text;
  const auto records = read_metrics(path);
  ASSERT_EQ(records.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(records[i].at("step"), i + 1);
    EXPECT_DOUBLE_EQ(records[i].at("loss").get<double>(), 2.5 / (i + 1));
  }
}

TEST(Metrics, ReopeningAppends) {
  ScratchDir dir;
  const std::string path = dir.file("metrics.jsonl");
  MetricsWriter w(path);
  w.write({{"step", 1}});
  w.close();
  EXPECT_FALSE(w.is_open());
  w.open(path);
  w.write({{"step", 2}});
  MetricsWriter moved = std::move(w);
  moved.write({{"step", 3}});
  const auto records = read_metrics(path);
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[2].at("step"), 3);
}

TEST(Metrics, PartialLastLineFromAKilledRunIsCutOff) {
  ScratchDir dir;
  const std::string path = dir.write("metrics.jsonl", "{\"step\":1}\n{\"step\":2}\n{\"st");
  // A reader skips the cut line; the writer removes it before appending.
  EXPECT_EQ(read_metrics(path).size(), 2u);
  MetricsWriter w(path);
  w.write({{"step", 3}});
  EXPECT_EQ(io::read_file(path), "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n");
  // No newline at all: the whole content is one cut line.
  const std::string only = dir.write("only.jsonl", "{\"step\":");
  MetricsWriter w2(only);
  w2.write({{"step", 1}});
  EXPECT_EQ(io::read_file(only), "{\"step\":1}\n");
}

TEST(Metrics, NonFiniteNumbersBecomeNull) {
  ScratchDir dir;
  MetricsWriter w(dir.file("m.jsonl"));
  w.write({{"loss", std::nan("")}, {"grad_norm", INFINITY}});
  const auto records = read_metrics(dir.file("m.jsonl"));
  ASSERT_EQ(records.size(), 1u);
  EXPECT_TRUE(records[0].at("loss").is_null());
  EXPECT_TRUE(records[0].at("grad_norm").is_null());
}

TEST(Metrics, Errors) {
  ScratchDir dir;
  MetricsWriter closed;
  expect_error([&] { closed.write({{"step", 1}}); }, "metrics", {"open"});
  expect_error([&] { MetricsWriter w(dir.file("no/such/dir/m.jsonl")); },
               dir.file("no/such/dir/m.jsonl"), {"cannot open"});
  MetricsWriter w(dir.file("m.jsonl"));
  expect_error([&] { w.write(json::array({1, 2})); }, dir.file("m.jsonl"), {"object", "array"});
  expect_error([&] { w.write({{"text", "\xff\xfe"}}); }, dir.file("m.jsonl"), {"UTF-8"});
  EXPECT_EQ(io::read_file(dir.file("m.jsonl")), "");
  const std::string bad = dir.write("bad.jsonl", "{\"step\":1}\nnot json\n{\"step\":3}\n");
  expect_error([&] { read_metrics(bad); }, bad, {"line 2"});
}
