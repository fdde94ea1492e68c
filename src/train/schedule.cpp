#include "lowrank/train/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "lowrank/core/error.h"

namespace lowrank::train {

Schedule parse_schedule(const std::string& text) {
  if (text == "constant") return Schedule::Constant;
  if (text == "linear") return Schedule::Linear;
  if (text == "cosine") return Schedule::Cosine;
  if (text == "cosine_with_min_lr") return Schedule::CosineWithMinLr;
  throw error("--schedule: unknown schedule '", text, "' (expected constant, linear, cosine or cosine_with_min_lr)");
}

const char* schedule_name(Schedule schedule) {
  switch (schedule) {
    case Schedule::Constant:
      return "constant";
    case Schedule::Linear:
      return "linear";
    case Schedule::Cosine:
      return "cosine";
    case Schedule::CosineWithMinLr:
      return "cosine_with_min_lr";
  }
  return "?";
}

int64_t warmup_steps_for(int64_t warmup_steps, double warmup_ratio, int64_t total_steps) {
  if (warmup_steps > 0) return warmup_steps;
  return static_cast<int64_t>(std::ceil(static_cast<double>(total_steps) * warmup_ratio));
}

double lr_at(const ScheduleConfig& config, int64_t step) {
  if (!(config.base_lr >= 0.0)) throw error("learning rate must be >= 0, got ", config.base_lr);
  if (config.warmup_steps < 0) throw error("--warmup must be >= 0, got ", config.warmup_steps);
  if (config.total_steps < 0) throw error("total steps must be >= 0, got ", config.total_steps);
  if (step < 0) throw error("lr schedule: step must be >= 0, got ", step);
  if (!(config.min_lr_rate >= 0.0 && config.min_lr_rate <= 1.0))
    throw error("--min-lr-rate must be between 0 and 1, got ", config.min_lr_rate);

  // Written as transformers' lr_lambda (same operations in the same order, in double like
  // Python floats) so the values agree bit for bit; LambdaLR then returns base_lr * lambda.
  const double s = static_cast<double>(step);
  const int64_t w = config.warmup_steps;
  const int64_t t = config.total_steps;
  double factor;
  if (step < w) {
    factor = s / static_cast<double>(std::max<int64_t>(1, w));
  } else {
    const double decay_span = static_cast<double>(std::max<int64_t>(1, t - w));
    switch (config.schedule) {
      case Schedule::Constant:
        factor = 1.0;
        break;
      case Schedule::Linear:
        factor = std::max(0.0, static_cast<double>(t - step) / decay_span);
        break;
      case Schedule::Cosine:
      case Schedule::CosineWithMinLr: {
        const double num_cycles = 0.5;
        const double progress = static_cast<double>(step - w) / decay_span;
        factor = 0.5 * (1.0 + std::cos(std::numbers::pi * num_cycles * 2.0 * progress));
        // transformers applies the floor to plain cosine too, with rate 0: the same bits
        if (config.schedule == Schedule::CosineWithMinLr)
          factor = factor * (1.0 - config.min_lr_rate) + config.min_lr_rate;
        factor = std::max(0.0, factor);
        break;
      }
      default:
        factor = 1.0;
    }
  }
  return config.base_lr * factor;
}

}  // namespace lowrank::train
