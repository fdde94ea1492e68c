#pragma once
// Learning-rate schedules equal to transformers' get_constant_schedule_with_warmup,
// get_linear_schedule_with_warmup and get_cosine_schedule_with_warmup (num_cycles 0.5), as a
// pure function of the step, so a resumed run needs no scheduler state.
#include <cstdint>
#include <string>

namespace lowrank::train {

enum class Schedule { Constant, Linear, Cosine, CosineWithMinLr };

// "constant", "linear", "cosine" or "cosine_with_min_lr" (the --schedule flag; transformers'
// lr_scheduler_type names); throws Error naming the text otherwise.
Schedule parse_schedule(const std::string& text);
const char* schedule_name(Schedule schedule);

struct ScheduleConfig {
  Schedule schedule = Schedule::Cosine;
  double base_lr = 2e-4;     // the peak lr, reached at the end of warmup
  int64_t warmup_steps = 0;  // linear ramp from 0 over this many steps
  int64_t total_steps = 0;  // optimizer steps in the run (decay reaches 0 here; unused by Constant)
  double min_lr_rate = 0;   // CosineWithMinLr: the floor, a fraction of base_lr (0..1)
};

// transformers' warmup for a run of `total_steps`: `warmup_steps` when given, else
// ceil(total_steps * warmup_ratio) (TrainingArguments.get_warmup_steps).
int64_t warmup_steps_for(int64_t warmup_steps, double warmup_ratio, int64_t total_steps);

// The lr for the optimizer step with 0-based index `step`: lr_at(cfg, 0) is the lr of the first
// step, which is 0 when warmup_steps > 0, exactly as transformers' LambdaLR gives it. With
// w = warmup_steps, T = total_steps:
//   step < w:  base_lr * step / max(1, w)
//   Constant:  base_lr
//   Linear:    base_lr * max(0, (T - step) / max(1, T - w))
//   Cosine:    base_lr * max(0, 0.5 * (1 + cos(pi * 0.5 * 2 * progress))),
//              progress = (step - w) / max(1, T - w)
//   CosineWithMinLr: the cosine's factor c as c * (1 - min_lr_rate) + min_lr_rate
//              (get_cosine_with_min_lr_schedule_with_warmup with min_lr_rate)
// Throws Error on a negative base_lr, warmup_steps, total_steps or step.
double lr_at(const ScheduleConfig& config, int64_t step);

}  // namespace lowrank::train
