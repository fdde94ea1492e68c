#include "lowrank/ops/profile.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <unordered_map>
#include <vector>

#ifdef LOWRANK_WITH_CUDA
#include "lowrank/backend/cuda/device.h"
#endif

namespace lowrank::profile {
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kCategories = static_cast<size_t>(Category::kCount);

struct Marker {
  void* event;  // CUDA event on the device's stream (null on the CPU)
  Clock::time_point host;
  Category category;  // of the time from this marker to the next
  const char* op;     // LOWRANK_PROFILE=ops: the op running from here to the next marker (null: none)
  bool op_starts;     // this marker is that op's start (not the end of an op nested in it)
};

// LOWRANK_PROFILE=ops: time and calls per (category, op name).
struct OpTotals {
  double device_ms = 0;
  int64_t calls = 0;
};

struct State {
  int enabled = -1;  // -1: not read from the environment yet; 1: categories; 2: also per op
  bool collecting = false;
  Device device = Device::cpu();
  std::vector<Marker> markers;
  Clock::time_point step_start;
  std::array<double, kCategories> device_ms{}, host_ms{};
  std::array<int64_t, kCategories> ops{};
  double wall_ms = 0;
  int steps = 0;
  Category current = Category::Other;
  const char* current_op = nullptr;
  bool sticky = false;
  std::unordered_map<std::string, OpTotals> per_op;  // key: "category\top"
};

// Per thread: a data-parallel run profiles rank 0, whose ops run on the thread that began the step.
State& state() {
  thread_local State s;
  return s;
}

void mark(Category c, bool op_starts = false) {
  State& s = state();
  void* ev = nullptr;
#ifdef LOWRANK_WITH_CUDA
  if (s.device.is_cuda()) ev = cuda::record_timing_event(s.device);
#endif
  s.markers.push_back({ev, Clock::now(), c, s.current_op, op_starts});
}

// Moves the current category to `c`, recording a marker when it changes.
void switch_to(Category c) {
  State& s = state();
  if (c != s.current) mark(c);
  s.current = c;
}

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

}  // namespace

const char* category_name(Category c) {
  static const char* names[] = {"other (outside ops)", "GEMM forward (frozen W)", "GEMM input-grad (frozen W)",
                                "GEMM weight-grad", "LoRA", "attention forward", "attention backward", "norms",
                                "RoPE", "activations", "element-wise", "embedding", "loss (lm_head + CE)",
                                "optimizer (zero, norm, clip, AdamW)", "NF4 dequantize"};
  static_assert(sizeof(names) / sizeof(names[0]) == kCategories);
  return names[static_cast<size_t>(c)];
}

Category category_of_op(const char* name) {
  const std::string_view n(name);
  auto starts = [&](std::string_view p) { return n.substr(0, p.size()) == p; };
  if (starts("matmul_nt") || starts("linear") || starts("norm_linears") || starts("norm_swiglu"))
    return Category::GemmForward;
  if (starts("matmul_nn")) return Category::GemmInputGrad;
  if (starts("matmul_tn")) return Category::GemmWeightGrad;
  if (starts("attention_backward")) return Category::AttentionBackward;
  if (starts("attention")) return Category::AttentionForward;
  if (starts("rmsnorm") || starts("layernorm")) return Category::Norm;
  if (starts("rope")) return Category::Rope;
  if (starts("activation") || starts("swiglu")) return Category::Activation;
  if (starts("embedding")) return Category::Embedding;
  if (starts("cross_entropy")) return Category::Loss;
  if (starts("nf4_dequantize")) return Category::Dequantize;
  if (starts("lora_rows")) return Category::Lora;
  if (starts("adamw") || starts("sum_squares") || starts("clip_by")) return Category::Optimizer;
  return Category::Elementwise;
}

bool enabled() {
  State& s = state();
  if (s.enabled < 0) {
    const char* e = std::getenv("LOWRANK_PROFILE");
    s.enabled = !e || !*e || std::strcmp(e, "0") == 0 ? 0 : std::strcmp(e, "ops") == 0 ? 2 : 1;
  }
  return s.enabled >= 1;
}

void set_enabled(bool on, bool per_op) { state().enabled = on ? (per_op ? 2 : 1) : 0; }

bool collecting() { return state().collecting; }

void begin_step(Device device) {
  State& s = state();
  if (s.collecting) return;
  s.device = device;
  s.markers.clear();
#ifdef LOWRANK_WITH_CUDA
  if (device.is_cuda()) {
    cuda::synchronize(device);  // the step's wall time starts with an idle device
    cuda::reset_timing_events(device);
  }
#endif
  s.current = Category::Other;
  s.sticky = false;
  s.collecting = true;
  s.step_start = Clock::now();
  mark(Category::Other);
}

void end_step() {
  State& s = state();
  if (!s.collecting) return;
  mark(Category::Other);
  s.collecting = false;
#ifdef LOWRANK_WITH_CUDA
  if (s.device.is_cuda()) cuda::synchronize(s.device);
#endif
  s.wall_ms += ms_between(s.step_start, Clock::now());
  for (size_t i = 0; i + 1 < s.markers.size(); ++i) {
    const Marker& a = s.markers[i];
    const Marker& b = s.markers[i + 1];
    const auto c = static_cast<size_t>(a.category);
    const double host = ms_between(a.host, b.host);
    double dev = host;  // the CPU backend runs synchronously
#ifdef LOWRANK_WITH_CUDA
    if (a.event && b.event) dev = cuda::timing_event_elapsed_ms(a.event, b.event);
#endif
    s.device_ms[c] += dev;
    s.host_ms[c] += host;
    if (s.enabled == 2) {
      const std::string_view op = a.op ? std::string_view(a.op) : std::string_view("(between ops)");
      OpTotals& t = s.per_op[std::string(category_name(a.category)) + "\t" + std::string(op.substr(0, op.find('(')))];
      t.device_ms += dev;
      if (a.op_starts) ++t.calls;  // an op's time can be cut in parts by the ops nested in it
    }
  }
  ++s.steps;
}

std::string report() {
  const State& s = state();
  if (s.steps == 0) return "profile: no steps collected\n";
  double dev_total = 0, host_total = 0;
  int64_t ops_total = 0;
  for (size_t c = 0; c < kCategories; ++c) {
    dev_total += s.device_ms[c];
    host_total += s.host_ms[c];
    ops_total += s.ops[c];
  }
  const double n = s.steps;
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line,
                "profile: %d step(s) on %s; per step: wall %.2f ms, device %.2f ms, host enqueue %.2f ms, %lld ops\n",
                s.steps, s.device.str().c_str(), s.wall_ms / n, dev_total / n, host_total / n,
                static_cast<long long>(ops_total / s.steps));
  out += line;
  std::snprintf(line, sizeof line, "  %-36s %10s %6s %10s %7s\n", "category", "device ms", "%", "host ms", "ops");
  out += line;
  for (size_t c = 0; c < kCategories; ++c) {
    if (s.device_ms[c] == 0 && s.ops[c] == 0) continue;
    std::snprintf(line, sizeof line, "  %-36s %10.2f %5.1f%% %10.2f %7lld\n", category_name(static_cast<Category>(c)),
                  s.device_ms[c] / n, dev_total > 0 ? 100.0 * s.device_ms[c] / dev_total : 0.0, s.host_ms[c] / n,
                  static_cast<long long>(s.ops[c] / s.steps));
    out += line;
  }
  if (!s.per_op.empty()) {  // LOWRANK_PROFILE=ops: the 40 costliest ops, whatever their category
    std::vector<std::pair<std::string, OpTotals>> rows(s.per_op.begin(), s.per_op.end());
    std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.device_ms > b.second.device_ms; });
    std::snprintf(line, sizeof line, "  %-36s %-28s %10s %7s %9s\n", "category", "op", "device ms", "calls", "us/call");
    out += line;
    for (size_t i = 0; i < rows.size() && i < 40; ++i) {
      const auto& [key, t] = rows[i];
      const size_t tab = key.find('\t');
      std::snprintf(line, sizeof line, "  %-36s %-28s %10.3f %7lld %9.1f\n", key.substr(0, tab).c_str(),
                    key.substr(tab + 1, 28).c_str(), t.device_ms / n, static_cast<long long>(t.calls / s.steps),
                    t.calls ? 1000.0 * t.device_ms / t.calls : 0.0);
      out += line;
    }
  }
  return out;
}

void reset() {
  State& s = state();
  const int e = s.enabled;
  s = State{};
  s.enabled = e;
}

Scope::Scope(Category c, bool sticky) {
  State& s = state();
  if (!s.collecting) return;
  active_ = true;
  saved_ = s.current;
  saved_sticky_ = s.sticky;
  if (s.sticky && !sticky) return;  // an enclosing sticky scope keeps its category
  s.sticky = s.sticky || sticky;
  switch_to(c);
}

Scope::~Scope() {
  if (!active_) return;
  State& s = state();
  if (!s.collecting) return;
  s.sticky = saved_sticky_;
  switch_to(saved_);
}

OpScope::OpScope(const char* call_text) {
  State& s = state();
  if (!s.collecting) return;
  active_ = true;
  saved_ = s.current;
  saved_op_ = s.current_op;
  static std::unordered_map<const char*, Category> cache;  // call_text is a string literal per call site
  auto it = cache.find(call_text);
  if (it == cache.end()) it = cache.emplace(call_text, category_of_op(call_text)).first;
  const Category c = s.sticky ? s.current : it->second;
  ++s.ops[static_cast<size_t>(c)];
  if (s.enabled == 2) {  // a marker at every op's start and end
    s.current_op = call_text;
    s.current = c;
    mark(c, /*op_starts=*/true);
    return;
  }
  switch_to(c);
}

OpScope::~OpScope() {
  if (!active_) return;
  State& s = state();
  if (!s.collecting) return;
  if (s.enabled == 2) {
    s.current_op = saved_op_;
    s.current = saved_;
    mark(saved_);
    return;
  }
  switch_to(saved_);
}

}  // namespace lowrank::profile
