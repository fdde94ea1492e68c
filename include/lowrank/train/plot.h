#pragma once
// A training run's metrics (metrics.jsonl, see metrics.h) drawn as a self-contained SVG chart:
// the training loss per logged step (a faint raw line plus a smoothed one when there are many
// points), the evaluation losses as points, and the learning rate on a secondary (right) axis.
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace lowrank::train {

struct PlotOptions {
  std::string title;  // empty: no title line
  int width = 900;    // pixels; at least 300
  int height = 500;   // pixels; at least 200
  bool log_y = false; // logarithmic loss axis
  bool show_lr = true;
};

// The series a chart is drawn from, extracted from metrics records: records with a numeric
// "step" and "loss" (train), "eval_loss" (eval) and "lr". A step logged twice (a resumed run
// appends) keeps its last value; the series are sorted by step. Other records are ignored.
struct PlotSeries {
  std::vector<std::pair<double, double>> loss, eval_loss, lr;
};
PlotSeries plot_series(const std::vector<nlohmann::json>& records);

// The SVG document. Throws Error when the records hold no loss and no eval loss to draw, or the
// options are out of range.
std::string render_loss_svg(const PlotSeries& series, const PlotOptions& options);

// "Nice" axis ticks covering [lo, hi] (steps of 1, 2 or 5 times a power of ten), at most about
// `target` of them. Exposed for tests.
std::vector<double> nice_ticks(double lo, double hi, int target);

}  // namespace lowrank::train
