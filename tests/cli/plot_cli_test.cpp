// `lowrank plot`: a metrics.jsonl becomes a well-formed, self-contained SVG; bad input exits 2.
#include <gtest/gtest.h>

#include <regex>

#include "cli/cli_test_helpers.h"
#include "io/io_test_helpers.h"

using namespace lowrank;

namespace {

std::string metrics_text(int steps, bool with_eval) {
  std::string s;
  if (with_eval) s += "{\"step\":0,\"eval_loss\":3.5,\"when\":\"before\"}\n";
  for (int i = 1; i <= steps; ++i) {
    const double loss = 3.0 / (1.0 + 0.05 * i) + 0.01 * (i % 3);
    const double lr = 2e-4 * std::min(1.0, i / 10.0);
    s += "{\"step\":" + std::to_string(i) + ",\"loss\":" + std::to_string(loss) + ",\"lr\":" + std::to_string(lr) +
         ",\"grad_norm\":0.5,\"tokens\":" + std::to_string(64 * i) + ",\"tokens_per_second\":1000}\n";
  }
  if (with_eval) s += "{\"step\":" + std::to_string(steps) + ",\"eval_loss\":1.25,\"when\":\"after\"}\n";
  return s;
}

// Every opened element is closed in order (a small well-formedness check; no attributes with '>').
void expect_well_formed(const std::string& svg) {
  ASSERT_EQ(svg.rfind("<?xml", 0), 0u);
  std::vector<std::string> stack;
  std::regex tag(R"(<(/?)([A-Za-z]+)[^>]*?(/?)>)");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), tag); it != std::sregex_iterator(); ++it) {
    const auto& m = *it;
    if (m[1] == "/") {
      ASSERT_FALSE(stack.empty()) << "stray </" << m[2] << ">";
      ASSERT_EQ(stack.back(), m[2].str());
      stack.pop_back();
    } else if (m[3] != "/") {
      stack.push_back(m[2]);
    }
  }
  EXPECT_TRUE(stack.empty());
}

int count(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

TEST(PlotCli, WritesSvgFile) {
  io::testing::ScratchDir d;
  const std::string m = d.write("metrics.jsonl", metrics_text(100, true));
  const std::string out = d.file("loss.svg");
  auto r = test::run_cli("plot " + m + " -o " + out + " --title 'a <b> & c'");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(r.out.empty());
  const std::string svg = test::slurp(out);
  expect_well_formed(svg);
  EXPECT_NE(svg.find("<svg xmlns=\"http://www.w3.org/2000/svg\""), std::string::npos);
  EXPECT_NE(svg.find("a &lt;b&gt; &amp; c"), std::string::npos);      // title escaped
  EXPECT_EQ(count(svg, "<polyline"), 3);                                // raw loss, smoothed loss, lr
  EXPECT_EQ(count(svg, "<title>step"), 2);                              // the two eval points
  EXPECT_NE(svg.find("3.5000 \xe2\x86\x92 1.2500"), std::string::npos); // eval before → after
  EXPECT_NE(svg.find("learning rate"), std::string::npos);
  EXPECT_EQ(svg.find("href"), std::string::npos);                       // self-contained
  EXPECT_EQ(svg.find("nan"), std::string::npos);
}

TEST(PlotCli, StdoutAndOptions) {
  io::testing::ScratchDir d;
  const std::string m = d.write("metrics.jsonl", metrics_text(5, false));
  auto r = test::run_cli("plot " + m + " --no-lr --log-y --width 640 --height 320");
  ASSERT_EQ(r.code, 0) << r.err;
  expect_well_formed(r.out);
  EXPECT_NE(r.out.find("width=\"640\" height=\"320\""), std::string::npos);
  EXPECT_EQ(count(r.out, "<polyline"), 1);  // few points: no smoothed line; --no-lr
  EXPECT_NE(r.out.find("log scale"), std::string::npos);
}

TEST(PlotCli, EvalOnlyAndResumedRuns) {
  io::testing::ScratchDir d;
  // Only eval records; a resumed run that logged step 2 twice, with a null (NaN) loss.
  auto r = test::run_cli("plot " + d.write("e.jsonl", "{\"step\":0,\"eval_loss\":2}\n{\"step\":9,\"eval_loss\":1}\n"));
  ASSERT_EQ(r.code, 0) << r.err;
  expect_well_formed(r.out);
  r = test::run_cli("plot " + d.write("r.jsonl", "{\"step\":1,\"loss\":2}\n{\"step\":2,\"loss\":1.9}\n"
                                               "{\"step\":2,\"loss\":1.8}\n{\"step\":3,\"loss\":null}\n"));
  ASSERT_EQ(r.code, 0) << r.err;
  expect_well_formed(r.out);
  EXPECT_EQ(r.out.find("nan"), std::string::npos);
  // Values so large that the axis span overflows: left out, not drawn as NaN coordinates.
  r = test::run_cli("plot " + d.write("h.jsonl", "{\"step\":1,\"loss\":1e308}\n{\"step\":2,\"loss\":-1e308}\n"
                                               "{\"step\":3,\"loss\":2}\n{\"step\":4,\"loss\":1.5}\n"));
  ASSERT_EQ(r.code, 0) << r.err;
  expect_well_formed(r.out);
  EXPECT_EQ(r.out.find("nan"), std::string::npos);
  EXPECT_EQ(r.out.find("inf"), std::string::npos);
}

void expect_bad_input(const std::string& args, const std::string& fragment) {
  auto r = test::run_cli(args);
  EXPECT_EQ(r.code, 2) << args << "\n" << r.err;
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find(fragment), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

TEST(PlotCliErrors, BadInput) {
  io::testing::ScratchDir d;
  expect_bad_input("plot " + d.file("missing.jsonl"), "missing.jsonl");
  expect_bad_input("plot " + d.write("empty.jsonl", ""), "no \"loss\" or \"eval_loss\"");
  expect_bad_input("plot " + d.write("other.jsonl", "{\"step\":1,\"lr\":0.1}\n"), "no \"loss\"");
  expect_bad_input("plot " + d.write("bad.jsonl", "{\"step\":1,\"loss\":2}\nnot json\n{\"step\":3,\"loss\":1}\n"),
                   "bad.jsonl");
  const std::string m = d.write("m.jsonl", metrics_text(3, true));
  expect_bad_input("plot " + m + " -o " + d.file("loss.png"), "only SVG");
  expect_bad_input("plot " + m + " --width 10", "--width");
  expect_bad_input("plot " + m + " -o " + d.file("no/such/dir/loss.svg"), "loss.svg");
  expect_bad_input("plot " + d.write("neg.jsonl", "{\"step\":1,\"loss\":-1}\n") + " --log-y", "positive");
  expect_bad_input("plot", "metrics");
  EXPECT_FALSE(std::filesystem::exists(d.file("loss.png")));
}

}  // namespace
