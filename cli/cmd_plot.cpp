// lowrank plot: draws a run's metrics.jsonl (loss, eval loss, learning rate) as an SVG chart.
#include <cstdio>
#include <filesystem>

#include "command.h"
#include "lowrank/core/error.h"
#include "lowrank/io/atomic_file.h"
#include "lowrank/train/metrics.h"
#include "lowrank/train/plot.h"

namespace lowrank::cli {
namespace {

struct PlotArgs {
  std::string metrics, out;
  train::PlotOptions o;
  bool no_lr = false, no_title = false;
};

int run_plot(PlotArgs& a) {
  if (!std::filesystem::is_regular_file(a.metrics))
    throw error(a.metrics, ": no such metrics file (expected the metrics.jsonl that lowrank train writes)");
  const auto records = train::read_metrics(a.metrics);
  const auto series = train::plot_series(records);
  if (series.loss.empty() && series.eval_loss.empty())
    throw error(a.metrics, ": no \"loss\" or \"eval_loss\" values to plot");
  a.o.show_lr = !a.no_lr;
  if (a.o.title.empty() && !a.no_title) a.o.title = "lowrank: " + a.metrics;
  if (a.no_title) a.o.title.clear();
  const std::string svg = train::render_loss_svg(series, a.o);
  if (a.out.empty() || a.out == "-") {
    std::fwrite(svg.data(), 1, svg.size(), stdout);
    return 0;
  }
  const auto ext = std::filesystem::path(a.out).extension().string();
  if (ext != ".svg" && ext != ".SVG") throw error("-o ", a.out, ": only SVG output is supported (name it *.svg)");
  io::AtomicFile f(a.out);
  f.write(svg);
  f.commit();
  std::fprintf(stderr, "wrote %s (%zu train loss points, %zu eval points)\n", a.out.c_str(), series.loss.size(),
               series.eval_loss.size());
  return 0;
}

RegisterCommand reg{{"plot", "Draw a run's metrics.jsonl (loss, eval loss, learning rate) as an SVG chart",
                     [](CLI::App& app) {
                       auto a = std::make_shared<PlotArgs>();
                       app.add_option("metrics", a->metrics, "metrics.jsonl written by lowrank train")->required();
                       app.add_option("-o,--output", a->out, "Output .svg file (default: stdout)");
                       app.add_option("--title", a->o.title, "Chart title (default: lowrank: <metrics path>)");
                       app.add_flag("--no-title", a->no_title, "No title line");
                       app.add_option("--width", a->o.width, "Width in pixels")->capture_default_str();
                       app.add_option("--height", a->o.height, "Height in pixels")->capture_default_str();
                       app.add_flag("--log-y", a->o.log_y, "Logarithmic loss axis");
                       app.add_flag("--no-lr", a->no_lr, "Leave out the learning-rate curve");
                       return [a] { return run_plot(*a); };
                     }}};

}  // namespace
}  // namespace lowrank::cli
