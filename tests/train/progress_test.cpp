#include "lowrank/train/progress.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>

using namespace lowrank::train;

namespace {

// A FILE* writing into memory, plus a settable clock: the bar's output as a string.
class Capture {
 public:
  Capture() { file_ = open_memstream(&buf_, &size_); }
  ~Capture() {
    std::fclose(file_);
    std::free(buf_);
  }
  ProgressOptions options(bool tty) {
    ProgressOptions o;
    o.stream = file_;
    o.tty = tty;
    o.clock = [this] { return now; };
    return o;
  }
  std::string text() {
    std::fflush(file_);
    return std::string(buf_, size_);
  }
  double now = 1000.0;

 private:
  char* buf_ = nullptr;
  size_t size_ = 0;
  std::FILE* file_;
};

int count(const std::string& s, char c) {
  int n = 0;
  for (char x : s) n += x == c;
  return n;
}

}  // namespace

TEST(Progress, FormatsTheStatusLine) {
  EXPECT_EQ(format_progress("step", 12, 100, 10, 2.3456, 2e-4, 1234.4, 83),
            "step 12/100 [#.........] loss 2.3456 lr 2.0e-04 1234 tok/s ETA 01:23");
  EXPECT_EQ(format_progress("step", 50, 100, 10, NAN, NAN, 0, -1), "step 50/100 [#####.....]");
  EXPECT_EQ(format_progress("batch", 3, 0, 10, 1.0, NAN, 0, 5), "batch 3 loss 1.0000");
  EXPECT_EQ(format_progress("step", 3, 10, 0, NAN, NAN, 2000, -1, 9.25), "step 3/10 2000 tok/s 9.2 GiB");
  EXPECT_EQ(format_progress("step", 150, 100, 4, NAN, NAN, 0, -1), "step 150/100 [####]");
}

TEST(Progress, FormatsDurations) {
  EXPECT_EQ(format_duration(0), "00:00");
  EXPECT_EQ(format_duration(83.4), "01:23");
  EXPECT_EQ(format_duration(3599), "59:59");
  EXPECT_EQ(format_duration(3600), "1:00:00");
  EXPECT_EQ(format_duration(100 * 3600 + 61), "100:01:01");
  EXPECT_EQ(format_duration(-1), "--:--");
  EXPECT_EQ(format_duration(NAN), "--:--");
}

TEST(Progress, NotATtyPrintsPlainLinesEveryIntervalAndAtTheEnd) {
  Capture cap;
  {
    ProgressBar bar(100, cap.options(false));
    for (int step = 1; step <= 30; ++step) {
      cap.now += 1.0;  // one second per step
      bar.update(step, {2.0, 1e-4, 500});
    }
    bar.finish();
  }
  const std::string out = cap.text();
  // First update (t=1), then t=11, t=21, and the final state (step 30) at finish.
  EXPECT_EQ(count(out, '\n'), 4) << out;
  EXPECT_EQ(out.find('\r'), std::string::npos);
  EXPECT_NE(out.find("step 1/100 [.........."), std::string::npos) << out;
  EXPECT_NE(out.find("step 11/100 [#........."), std::string::npos) << out;
  // Last line: 30 steps in 30 s -> 1 s/step, 70 to go; 500 tokens per second.
  EXPECT_NE(out.find("step 30/100 [###.......] loss 2.0000 lr 1.0e-04 500 tok/s ETA 01:10\n"),
            std::string::npos)
      << out;
}

TEST(Progress, FinishDoesNotRepeatAnAlreadyPrintedLine) {
  Capture cap;
  ProgressBar bar(2, cap.options(false));
  bar.update(1);
  cap.now += 20;
  bar.update(2);
  bar.finish();
  bar.finish();
  EXPECT_EQ(count(cap.text(), '\n'), 2) << cap.text();
}

TEST(Progress, TtyRedrawsInPlaceAndEndsTheLine) {
  Capture cap;
  {
    ProgressBar bar(3, cap.options(true));
    EXPECT_TRUE(bar.is_tty());
    bar.update(1, {12.5, NAN, 0});
    cap.now += 0.01;
    bar.update(2, {1.5, NAN, 0});  // within redraw_interval_s: skipped
    cap.now += 0.01;
    bar.update(3, {1.25, NAN, 0});  // the last unit is always drawn
  }                                 // the destructor ends the line
  const std::string out = cap.text();
  EXPECT_EQ(count(out, '\r'), 2) << out;
  EXPECT_EQ(out.back(), '\n');
  EXPECT_EQ(count(out, '\n'), 1);
  EXPECT_EQ(out.find("step 2/3"), std::string::npos);
  // The shorter second line is padded over the first one's tail.
  const std::string second = out.substr(out.rfind('\r') + 1);
  const std::string first = out.substr(1, out.rfind('\r') - 1);
  EXPECT_EQ(second.size(), first.size() + 1) << out;  // + '\n'
}

TEST(Progress, PrintKeepsMessagesOnTheirOwnLines) {
  Capture cap;
  ProgressBar bar(10, cap.options(true));
  bar.update(1);
  bar.print("eval loss 1.23");
  bar.finish();
  const std::string out = cap.text();
  EXPECT_NE(out.find("\reval loss 1.23\n\rstep 1/10"), std::string::npos) << out;
  EXPECT_EQ(out.back(), '\n');
}

TEST(Progress, ResumedRunCountsOnlyItsOwnSteps) {
  Capture cap;
  ProgressBar bar(100, cap.options(false), 50);
  cap.now += 10;
  bar.update(60);  // 10 steps in 10 s: 40 left -> 40 s
  EXPECT_EQ(bar.line(), "step 60/100 [######....] ETA 00:40");
}

TEST(Progress, QuietWritesNothing) {
  Capture cap;
  auto opt = cap.options(true);
  opt.quiet = true;
  {
    ProgressBar bar(10, opt);
    for (int i = 1; i <= 10; ++i) bar.update(i, {1.0, 1e-3, 100});
    bar.finish();
  }
  EXPECT_EQ(cap.text(), "");
}
