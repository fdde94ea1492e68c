#pragma once
// A progress line on stderr for long work (training steps, evaluation batches):
//
//   step 12/100 [#.........] loss 2.3456 lr 2.0e-04 1234 tok/s 9.2 GiB ETA 01:23
//
// On a terminal it is redrawn in place with '\r' (at most every redraw_interval_s); in a log
// file or CI (stream not a TTY) it is printed as a plain line on the first update, then every
// log_interval_s, and at the end, so logs stay short and readable. Rates and the ETA come from
// the average time per unit since the bar was created. Single-threaded use only.
#include <cstdint>
#include <cstdio>
#include <functional>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

namespace lowrank::train {

struct ProgressOptions {
  std::string label = "step";
  bool quiet = false;              // true: draw nothing (print() still writes its messages)
  double log_interval_s = 10.0;    // not a TTY: at most one line per this many seconds
  double redraw_interval_s = 0.1;  // TTY: redraw at most this often (the last unit always)
  int bar_width = 10;              // characters between the brackets
  std::FILE* stream = nullptr;     // nullptr: stderr (stdout carries results only)
  std::optional<bool> tty;         // overrides isatty(stream); for tests
  std::function<double()> clock;   // monotonic seconds; default steady_clock; for tests
};

// What one update reports; fields left at their defaults are not shown.
struct ProgressStats {
  double loss = std::numeric_limits<double>::quiet_NaN();
  double lr = std::numeric_limits<double>::quiet_NaN();
  int64_t tokens = 0;  // tokens processed since the previous update (summed for tok/s)
  double memory_gib = std::numeric_limits<double>::quiet_NaN();  // GPU memory (peak reserved)
};

class ProgressBar {
 public:
  // `total` units (<= 0: unknown, no bar or ETA). `start` units were done before this process
  // (a resumed run): the count starts there, the rates only count units done here.
  explicit ProgressBar(int64_t total, ProgressOptions options = {}, int64_t start = 0);
  ~ProgressBar();  // finish()es a bar left open, so the terminal line ends with '\n'
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // `done` units are complete (absolute count, not an increment).
  void update(int64_t done, const ProgressStats& stats = {});
  // Writes a message line (e.g. an eval result) without garbling the bar: on a TTY the bar is
  // erased, the message printed, and the bar redrawn below it.
  void print(const std::string& message);
  // Prints the final state (if not already shown) and ends the line. Idempotent.
  void finish();

  std::string line() const;  // the current status line, without '\r' or '\n'
  bool is_tty() const { return tty_; }

 private:
  double now() const;
  void draw(bool force);
  void write(std::initializer_list<std::string_view> pieces);  // then fflush

  int64_t total_;
  int64_t start_;
  ProgressOptions opt_;
  std::FILE* out_;
  bool tty_ = false;
  double t0_ = 0.0;
  int64_t done_;
  ProgressStats last_;
  int64_t tokens_ = 0;               // since construction
  std::optional<double> last_draw_;  // clock time of the last line written
  bool shown_current_ = false;       // the current state has been written
  size_t drawn_len_ = 0;             // TTY: length of the line on screen (0: none)
  bool finished_ = false;
};

// The status line from its parts; NaN loss/lr/memory, tokens_per_s <= 0 and eta_s < 0 are left out.
std::string format_progress(const std::string& label, int64_t done, int64_t total, int bar_width,
                            double loss, double lr, double tokens_per_s, double eta_s,
                            double memory_gib = std::numeric_limits<double>::quiet_NaN());
// "MM:SS" below an hour, "H:MM:SS" above (hours grow as needed); "--:--" if negative or NaN.
std::string format_duration(double seconds);

}  // namespace lowrank::train
