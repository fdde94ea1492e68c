#include "lowrank/train/progress.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>

namespace lowrank::train {
namespace {

double steady_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

std::string printf_string(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

}  // namespace

std::string format_duration(double seconds) {
  if (!(seconds >= 0.0) || !std::isfinite(seconds)) return "--:--";
  const auto s = static_cast<int64_t>(std::llround(seconds));
  char buf[48];
  if (s < 3600)
    std::snprintf(buf, sizeof buf, "%02lld:%02lld", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  else
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  return buf;
}

std::string format_progress(const std::string& label, int64_t done, int64_t total, int bar_width,
                            double loss, double lr, double tokens_per_s, double eta_s, double memory_gib) {
  std::string s = label;
  s += ' ';
  s += std::to_string(done);
  if (total > 0) {
    s += '/';
    s += std::to_string(total);
    if (bar_width > 0) {
      const int64_t clamped = std::clamp<int64_t>(done, 0, total);
      const auto filled = static_cast<int>(clamped * bar_width / total);
      s += " [";
      s.append(static_cast<size_t>(filled), '#');
      s.append(static_cast<size_t>(bar_width - filled), '.');
      s += ']';
    }
  }
  if (!std::isnan(loss)) s += printf_string(" loss %.4f", loss);
  if (!std::isnan(lr)) s += printf_string(" lr %.1e", lr);
  if (tokens_per_s > 0.0 && std::isfinite(tokens_per_s))
    s += printf_string(" %.0f tok/s", tokens_per_s);
  if (!std::isnan(memory_gib)) s += printf_string(" %.1f GiB", memory_gib);
  if (total > 0 && eta_s >= 0.0) {
    s += " ETA ";
    s += format_duration(eta_s);
  }
  return s;
}

ProgressBar::ProgressBar(int64_t total, ProgressOptions options, int64_t start)
    : total_(total), start_(start), opt_(std::move(options)), done_(start) {
  out_ = opt_.stream ? opt_.stream : stderr;
  tty_ = opt_.tty ? *opt_.tty : ::isatty(::fileno(out_)) == 1;
  t0_ = now();
}

ProgressBar::~ProgressBar() {
  // A destructor must not throw; finish() only formats and writes to a FILE*.
  finish();
}

double ProgressBar::now() const { return opt_.clock ? opt_.clock() : steady_seconds(); }

std::string ProgressBar::line() const {
  const double elapsed = now() - t0_;
  const int64_t here = done_ - start_;  // units done by this process
  const double per_unit = here > 0 ? elapsed / static_cast<double>(here) : -1.0;
  const double eta = per_unit >= 0.0 && total_ > 0
                         ? per_unit * static_cast<double>(std::max<int64_t>(0, total_ - done_))
                         : -1.0;
  const double tok_s = elapsed > 0.0 ? static_cast<double>(tokens_) / elapsed : 0.0;
  return format_progress(opt_.label, done_, total_, opt_.bar_width, last_.loss, last_.lr, tok_s,
                         eta, last_.memory_gib);
}

void ProgressBar::write(std::initializer_list<std::string_view> pieces) {
  for (std::string_view p : pieces) std::fwrite(p.data(), 1, p.size(), out_);
  std::fflush(out_);
}

void ProgressBar::draw(bool force) {
  const double t = now();
  const double interval = tty_ ? opt_.redraw_interval_s : opt_.log_interval_s;
  if (!force && last_draw_ && t - *last_draw_ < interval) return;
  last_draw_ = t;
  shown_current_ = true;
  const std::string text = line();
  if (!tty_) {
    write({text, "\n"});
    return;
  }
  // Pad with spaces over what is left of a longer previous line (no terminal escape codes).
  const size_t pad = drawn_len_ > text.size() ? drawn_len_ - text.size() : 0;
  write({"\r", text, std::string(pad, ' ')});
  drawn_len_ = text.size();
}

void ProgressBar::update(int64_t done, const ProgressStats& stats) {
  if (finished_) return;
  done_ = done;
  last_ = stats;
  if (stats.tokens > 0) tokens_ += stats.tokens;
  shown_current_ = false;
  if (opt_.quiet) return;
  // On a terminal the last unit is always drawn, so the bar ends full.
  draw(tty_ && total_ > 0 && done >= total_);
}

void ProgressBar::print(const std::string& message) {
  if (tty_ && drawn_len_ > 0 && !opt_.quiet) {
    write({"\r", std::string(drawn_len_, ' '), "\r", message, "\n"});
    drawn_len_ = 0;
    if (!finished_) draw(true);
    return;
  }
  write({message, "\n"});
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  if (opt_.quiet) return;
  if (!shown_current_ && last_draw_) draw(true);  // nothing at all if update() never came
  if (tty_ && drawn_len_ > 0) write({"\n"});
  drawn_len_ = 0;
}

}  // namespace lowrank::train
