#include "lowrank/train/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <string>

#include "lowrank/core/error.h"

namespace lowrank::train {
namespace {

std::optional<double> number(const nlohmann::json& rec, const char* key) {
  auto it = rec.find(key);
  if (it == rec.end() || !it->is_number()) return std::nullopt;
  const double v = it->get<double>();
  // Skipped as non-finite values are: beyond 1e150 a chart's spans and ticks overflow to inf/NaN.
  if (!std::isfinite(v) || std::abs(v) > 1e150) return std::nullopt;
  return v;
}

std::vector<std::pair<double, double>> sorted(const std::map<double, double>& m) {
  return {m.begin(), m.end()};
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// Axis labels: up to 4 significant digits, no exponent for ordinary magnitudes.
std::string label(double v) {
  if (v == 0) return "0";
  const double a = std::fabs(v);
  if (a >= 1e-3 && a < 1e6) {
    std::string s = fmt("%.4g", v);
    return s;
  }
  std::string s = fmt("%.2g", v);  // 2e-04 → 2e-4
  auto e = s.find('e');
  if (e != std::string::npos) {
    std::string mant = s.substr(0, e), ex = s.substr(e + 1);
    const bool neg = !ex.empty() && ex[0] == '-';
    if (!ex.empty() && (ex[0] == '-' || ex[0] == '+')) ex = ex.substr(1);
    while (ex.size() > 1 && ex[0] == '0') ex = ex.substr(1);
    s = mant + "e" + (neg ? "-" : "") + ex;
  }
  return s;
}

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      default:
        // Control characters are not allowed in XML 1.0 text.
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n') o += ' ';
        else o += c;
    }
  }
  return o;
}

// Log-axis ticks: 1, 2, 5 × 10^k inside [lo, hi] (values, not logs).
std::vector<double> log_ticks(double lo, double hi) {
  std::vector<double> t;
  for (int k = static_cast<int>(std::floor(std::log10(lo))); k <= static_cast<int>(std::ceil(std::log10(hi))); ++k)
    for (double m : {1.0, 2.0, 5.0}) {
      const double v = m * std::pow(10.0, k);
      if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) t.push_back(v);
    }
  return t;
}

}  // namespace

PlotSeries plot_series(const std::vector<nlohmann::json>& records) {
  std::map<double, double> loss, eval, lr;
  for (const auto& r : records) {
    if (!r.is_object()) continue;
    auto step = number(r, "step");
    if (!step) continue;
    if (auto v = number(r, "loss")) loss[*step] = *v;
    if (auto v = number(r, "eval_loss")) eval[*step] = *v;
    if (auto v = number(r, "lr")) lr[*step] = *v;
  }
  return {sorted(loss), sorted(eval), sorted(lr)};
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!(hi > lo) || target < 2) return {lo};
  const double raw = (hi - lo) / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  std::vector<double> t;
  for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step)
    t.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);
  return t;
}

std::string render_loss_svg(const PlotSeries& s, const PlotOptions& o) {
  if (s.loss.empty() && s.eval_loss.empty())
    throw error("no \"loss\" or \"eval_loss\" values to plot (expected lines like {\"step\": 1, \"loss\": 2.5})");
  if (o.width < 300 || o.width > 10000) throw error("--width must be between 300 and 10000, got ", o.width);
  if (o.height < 200 || o.height > 10000) throw error("--height must be between 200 and 10000, got ", o.height);
  const bool show_lr = o.show_lr && !s.lr.empty();

  // Ranges.
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const auto* v : {&s.loss, &s.eval_loss})
    for (auto [x, y] : *v) {
      if (o.log_y && y <= 0) continue;
      x0 = std::min(x0, x), x1 = std::max(x1, x);
      y0 = std::min(y0, y), y1 = std::max(y1, y);
    }
  if (y0 > y1) throw error("--log-y needs positive loss values");
  if (show_lr)
    for (auto [x, y] : s.lr) x0 = std::min(x0, x), x1 = std::max(x1, x);
  if (x1 - x0 < 1) x1 = x0 + 1;

  std::vector<double> yt;
  if (o.log_y) {
    if (y1 / y0 < 1.01) y0 /= 1.05, y1 *= 1.05;
    y0 /= std::pow(y1 / y0, 0.04), y1 *= std::pow(y1 / y0, 0.04);
    yt = log_ticks(y0, y1);
    if (yt.size() < 3) yt = nice_ticks(y0, y1, 8);  // less than a decade: linear ticks
  } else {
    const double pad = std::max((y1 - y0) * 0.05, std::max(std::fabs(y1), 1e-3) * 0.01);
    y0 -= pad, y1 += pad;
    if (y0 < 0 && s.loss.size() + s.eval_loss.size() > 0 && y0 + pad >= 0) y0 = 0;  // losses are >= 0
    yt = nice_ticks(y0, y1, 6);
  }
  const std::vector<double> xt = nice_ticks(x0, x1, 8);
  double lr1 = 0;
  for (auto [x, y] : s.lr) lr1 = std::max(lr1, y);
  if (lr1 <= 0) lr1 = 1;
  std::vector<double> lt = nice_ticks(0, lr1 * 1.05, 5);
  const double lr_top = lt.empty() ? lr1 : std::max(lt.back(), lr1);

  // Geometry.
  const double W = o.width, H = o.height;
  const double left = 72, right = show_lr ? 78 : 24, top = o.title.empty() ? 24 : 44, bottom = 52;
  const double pw = W - left - right, ph = H - top - bottom;
  auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * pw; };
  auto py = [&](double y) {
    if (o.log_y) return top + ph - (std::log(y) - std::log(y0)) / (std::log(y1) - std::log(y0)) * ph;
    return top + ph - (y - y0) / (y1 - y0) * ph;
  };
  auto plr = [&](double v) { return top + ph - v / lr_top * ph; };
  auto pt = [&](double x, double y) { return fmt("%.1f", x) + "," + fmt("%.1f", y); };

  const char* c_loss = "#1f77b4";
  const char* c_eval = "#d62728";
  const char* c_lr = "#2ca02c";
  std::string svg;
  svg += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  svg += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + std::to_string(o.width) + "\" height=\"" +
         std::to_string(o.height) + "\" viewBox=\"0 0 " + std::to_string(o.width) + " " + std::to_string(o.height) +
         "\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"12\">\n";
  svg += "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n";
  if (!o.title.empty())
    svg += "<text x=\"" + fmt("%.1f", W / 2) + "\" y=\"26\" text-anchor=\"middle\" font-size=\"15\">" +
           xml_escape(o.title) + "</text>\n";

  // Grid and tick labels.
  svg += "<g stroke=\"#e5e5e5\" stroke-width=\"1\">\n";
  for (double y : yt)
    if (y >= y0 && y <= y1)
      svg += "<line x1=\"" + fmt("%.1f", left) + "\" y1=\"" + fmt("%.1f", py(y)) + "\" x2=\"" + fmt("%.1f", left + pw) +
             "\" y2=\"" + fmt("%.1f", py(y)) + "\"/>\n";
  for (double x : xt)
    if (x >= x0 && x <= x1)
      svg += "<line x1=\"" + fmt("%.1f", px(x)) + "\" y1=\"" + fmt("%.1f", top) + "\" x2=\"" + fmt("%.1f", px(x)) +
             "\" y2=\"" + fmt("%.1f", top + ph) + "\"/>\n";
  svg += "</g>\n<g fill=\"#333333\">\n";
  for (double y : yt)
    if (y >= y0 && y <= y1)
      svg += "<text x=\"" + fmt("%.1f", left - 6) + "\" y=\"" + fmt("%.1f", py(y) + 4) + "\" text-anchor=\"end\">" +
             label(y) + "</text>\n";
  for (double x : xt)
    if (x >= x0 && x <= x1)
      svg += "<text x=\"" + fmt("%.1f", px(x)) + "\" y=\"" + fmt("%.1f", top + ph + 18) + "\" text-anchor=\"middle\">" +
             label(x) + "</text>\n";
  if (show_lr)
    for (double v : lt)
      if (v <= lr_top)
        svg += "<text x=\"" + fmt("%.1f", left + pw + 6) + "\" y=\"" + fmt("%.1f", plr(v) + 4) + "\" fill=\"" + c_lr +
               "\">" + label(v) + "</text>\n";
  svg += "<text x=\"" + fmt("%.1f", left + pw / 2) + "\" y=\"" + fmt("%.1f", H - 12) +
         "\" text-anchor=\"middle\">step</text>\n";
  svg += "<text transform=\"translate(18," + fmt("%.1f", top + ph / 2) + ") rotate(-90)\" text-anchor=\"middle\">" +
         std::string(o.log_y ? "loss (log scale)" : "loss") + "</text>\n";
  if (show_lr)
    svg += "<text transform=\"translate(" + fmt("%.1f", W - 12) + "," + fmt("%.1f", top + ph / 2) +
           ") rotate(90)\" text-anchor=\"middle\" fill=\"" + c_lr + "\">learning rate</text>\n";
  svg += "</g>\n";
  svg += "<rect x=\"" + fmt("%.1f", left) + "\" y=\"" + fmt("%.1f", top) + "\" width=\"" + fmt("%.1f", pw) +
         "\" height=\"" + fmt("%.1f", ph) + "\" fill=\"none\" stroke=\"#888888\"/>\n";

  // Series.
  auto polyline = [&](const std::vector<std::pair<double, double>>& v, auto ymap, const std::string& style) {
    std::string p;
    for (auto [x, y] : v) {
      if (o.log_y && ymap == 0 && y <= 0) continue;
      if (!p.empty()) p += ' ';
      p += pt(px(x), ymap == 0 ? py(y) : plr(y));
    }
    if (!p.empty()) svg += "<polyline fill=\"none\" " + style + " points=\"" + p + "\"/>\n";
  };
  if (show_lr)
    polyline(s.lr, 1, std::string("stroke=\"") + c_lr + "\" stroke-width=\"1.5\" stroke-dasharray=\"6,4\"");
  const bool smooth = s.loss.size() >= 40;
  if (!s.loss.empty()) {
    polyline(s.loss, 0,
             std::string("stroke=\"") + c_loss + "\" stroke-width=\"" + (smooth ? "1\" stroke-opacity=\"0.35\"" : "2\""));
    if (s.loss.size() == 1)
      svg += "<circle cx=\"" + fmt("%.1f", px(s.loss[0].first)) + "\" cy=\"" + fmt("%.1f", py(s.loss[0].second)) +
             "\" r=\"3\" fill=\"" + c_loss + "\"/>\n";
  }
  if (smooth) {  // centred moving average over about 5% of the points (no lag, unlike an EMA)
    const int64_t n = static_cast<int64_t>(s.loss.size()), k = std::max<int64_t>(1, n / 40);
    std::vector<double> prefix(n + 1, 0.0);
    for (int64_t i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + s.loss[i].second;
    std::vector<std::pair<double, double>> sm;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t a = std::max<int64_t>(0, i - k), b = std::min<int64_t>(n, i + k + 1);
      sm.emplace_back(s.loss[i].first, (prefix[b] - prefix[a]) / static_cast<double>(b - a));
    }
    polyline(sm, 0, std::string("stroke=\"") + c_loss + "\" stroke-width=\"2\"");
  }
  for (auto [x, y] : s.eval_loss) {
    if (o.log_y && y <= 0) continue;
    svg += "<circle cx=\"" + fmt("%.1f", px(x)) + "\" cy=\"" + fmt("%.1f", py(y)) + "\" r=\"4.5\" fill=\"" + c_eval +
           "\" stroke=\"#ffffff\" stroke-width=\"1\"><title>step " + label(x) + ": eval loss " + fmt("%.4f", y) +
           "</title></circle>\n";
  }

  // Legend (top right inside the plot) with the last values.
  std::vector<std::pair<std::string, std::string>> items;  // text, swatch
  auto line_swatch = [](const char* c, const char* extra) {
    return std::string("<line x1=\"0\" y1=\"-4\" x2=\"22\" y2=\"-4\" stroke=\"") + c + "\" stroke-width=\"2\" " + extra + "/>";
  };
  if (!s.loss.empty())
    items.push_back({"train loss (last " + fmt("%.4f", s.loss.back().second) + ")", line_swatch(c_loss, "")});
  if (!s.eval_loss.empty()) {
    std::string t = "eval loss";
    if (s.eval_loss.size() >= 2)
      t += " (" + fmt("%.4f", s.eval_loss.front().second) + " \xe2\x86\x92 " + fmt("%.4f", s.eval_loss.back().second) + ")";
    else
      t += " (" + fmt("%.4f", s.eval_loss.back().second) + ")";
    items.push_back({t, std::string("<circle cx=\"11\" cy=\"-4\" r=\"4.5\" fill=\"") + c_eval + "\"/>"});
  }
  if (show_lr) items.push_back({"learning rate", line_swatch(c_lr, "stroke-dasharray=\"6,4\"")});
  const double lw = 250, lh = 18.0 * items.size() + 10;
  const double lx = left + pw - lw - 8, ly = top + 8;
  svg += "<g transform=\"translate(" + fmt("%.1f", lx) + "," + fmt("%.1f", ly) + ")\">\n";
  svg += "<rect width=\"" + fmt("%.0f", lw) + "\" height=\"" + fmt("%.0f", lh) +
         "\" fill=\"#ffffff\" fill-opacity=\"0.85\" stroke=\"#cccccc\"/>\n";
  for (size_t i = 0; i < items.size(); ++i) {
    svg += "<g transform=\"translate(8," + fmt("%.0f", 21.0 + 18.0 * i) + ")\">" + items[i].second +
           "<text x=\"30\" y=\"0\" fill=\"#333333\">" + xml_escape(items[i].first) + "</text></g>\n";
  }
  svg += "</g>\n</svg>\n";
  return svg;
}

}  // namespace lowrank::train
