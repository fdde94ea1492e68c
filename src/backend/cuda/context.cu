// Device discovery, per-device contexts and CUDA error reporting.
#include <array>
#include <atomic>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <sstream>
#include <string_view>
#include <vector>

#include "common.cuh"
#include "context.h"
#include "dependent_launch.cuh"
#include "lowrank/core/device_memory.h"

namespace lowrank::cuda {
namespace {

constexpr int kMaxDevices = 64;
constexpr size_t kWorkspaceBytes = 32u << 20;  // cuBLASLt's recommendation for Hopper

std::mutex g_mutex;
thread_local int t_current_device = -1;  // what this thread last passed to cudaSetDevice
std::array<std::atomic<DeviceContext*>, kMaxDevices> g_contexts{};  // leaked on purpose: used until exit

DeviceContext* create_context(int index) {
  auto ctx = std::make_unique<DeviceContext>();
  ctx->index = index;
  LR_CUDA(cudaSetDevice(index));
  t_current_device = index;
  LR_CUDA(cudaGetDeviceProperties(&ctx->props, index));
  // Non-blocking: the legacy default stream never serialises against our work.
  LR_CUDA(cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking));
  if (cublasLtCreate(&ctx->lt) != CUBLAS_STATUS_SUCCESS)
    throw error("cuda:", index, ": cannot create a cuBLASLt handle");
  ctx->workspace_bytes = kWorkspaceBytes;
  LR_CUDA(cudaMalloc(&ctx->workspace, ctx->workspace_bytes));
  LR_CUDA(cudaMalloc(&ctx->grid_counters, DeviceContext::kGridCounters * sizeof(unsigned)));
  LR_CUDA(cudaMemsetAsync(ctx->grid_counters, 0, DeviceContext::kGridCounters * sizeof(unsigned), ctx->stream));  // before any kernel of the stream
  std::ostringstream os;
  os << "cuda:" << index << " " << ctx->props.name << ", sm_" << ctx->props.major << ctx->props.minor << ", "
     << ctx->props.multiProcessorCount << " SMs, " << (ctx->props.totalGlobalMem >> 20) << " MiB";
  ctx->description = os.str();
  return ctx.release();
}

}  // namespace

void throw_cuda_error(cudaError_t e, const char* call, const char* file, int line) {
  const std::string msg = detail::concat("CUDA error ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ") in ",
                                         call, " at ", file, ":", line);
  if (e == cudaErrorMemoryAllocation || e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver ||
      e == cudaErrorInvalidDevice)
    throw Error(msg);
  throw InternalError(msg);
}

void check_device(Device d) {
  LR_CHECK(d.is_cuda(), "check_device on ", d.str());
  const int n = cuda_device_count();
  if (n == 0) throw error("--device ", d.str(), ": no CUDA GPU is visible");
  if (d.index < 0 || d.index >= n)
    throw error("--device ", d.str(), ": only ", n, " CUDA GPU", n == 1 ? " is" : "s are", " visible (cuda:0",
                n > 1 ? detail::concat("..cuda:", n - 1) : std::string(), ")");
}

DeviceContext& context(Device d) {
  DeviceContext* ctx = d.index >= 0 && d.index < kMaxDevices ? g_contexts[d.index].load() : nullptr;
  if (!ctx) {
    check_device(d);
    LR_CHECK(d.index < kMaxDevices, "more than ", kMaxDevices, " CUDA devices");
    std::lock_guard<std::mutex> lock(g_mutex);
    ctx = g_contexts[d.index].load();
    if (!ctx) {
      ctx = create_context(d.index);
      g_contexts[d.index].store(ctx);
    }
  }
  // cudaSetDevice only when the thread's device changes: this runs before every op.
  if (t_current_device != d.index) {
    LR_CUDA(cudaSetDevice(d.index));
    t_current_device = d.index;
  }
  if (t_side_work_device == d.index) return *ctx->side;
  return *ctx;
}

DeviceContext& side_context(DeviceContext& main) {
  LR_CHECK(!main.main, "side_context of a side context");
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!main.side) {
    auto side = std::make_unique<DeviceContext>(main);  // handle, properties, counters shared
    side->side = nullptr;
    side->main = &main;
    LR_CUDA(cudaStreamCreateWithFlags(&side->stream, cudaStreamNonBlocking));
    LR_CUDA(cudaMalloc(&side->workspace, side->workspace_bytes));  // split-K partials run alongside main's
    main.side = side.release();
  }
  return *main.side;
}

void synchronize_streams(DeviceContext& ctx) {
  DeviceContext& m = ctx.main ? *ctx.main : ctx;
  LR_CUDA(cudaStreamSynchronize(m.stream));
  if (m.side) LR_CUDA(cudaStreamSynchronize(m.side->stream));
}

cudaStream_t stream_for(Device d) { return context(d).stream; }
int multiprocessor_count(Device d) { return context(d).props.multiProcessorCount; }

bool dependent_launch(Device d) {
  static const bool disabled = [] {
    const char* v = std::getenv("LOWRANK_DEPENDENT_LAUNCH");
    return v && std::string_view(v) == "0";
  }();
  return !disabled && context(d).props.major >= 9;
}

void synchronize(Device d) { synchronize_streams(context(d)); }
void* native_stream(Device d) { return stream_for(d); }
const char* device_description(Device d) { return context(d).description.c_str(); }

Tensor upload_i32(const std::vector<int32_t>& v, Device d) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::I32, d);
  if (!v.empty()) device_copy(t.raw(), d, v.data(), Device::cpu(), v.size() * sizeof(int32_t));
  return t;
}

void check_arg(const Tensor& t, const char* op, const char* name, bool any_dtype) {
  LR_CHECK(t.defined(), op, ": ", name, " is undefined");
  LR_CHECK(t.device().is_cuda(), op, ": ", name, " ", t.str(), " is not on a CUDA device");
  LR_CHECK(any_dtype || t.dtype() == DType::F32 || t.dtype() == DType::BF16, op, ": ", name, " ", t.str(),
           " must be F32 or BF16");
}

}  // namespace lowrank::cuda

namespace lowrank::cuda {
namespace {
// Per-device pools of timing events, rewound each profiled step (events are reused, never freed).
struct EventPool {
  std::vector<cudaEvent_t> events;
  size_t next = 0;
};
EventPool& event_pool(int index) {
  static auto* pools = new std::array<EventPool, kMaxDevices>();
  return (*pools)[index];
}
}  // namespace

void* record_timing_event(Device d) {
  DeviceContext& ctx = context(d);
  EventPool& pool = event_pool(d.index);
  if (pool.next == pool.events.size()) {
    cudaEvent_t e;
    LR_CUDA(cudaEventCreate(&e));
    pool.events.push_back(e);
  }
  cudaEvent_t e = pool.events[pool.next++];
  LR_CUDA(cudaEventRecord(e, ctx.stream));
  return e;
}

void reset_timing_events(Device d) {
  context(d);
  event_pool(d.index).next = 0;
}

float timing_event_elapsed_ms(void* from, void* to) {
  float ms = 0;
  LR_CUDA(cudaEventSynchronize(static_cast<cudaEvent_t>(to)));
  LR_CUDA(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(from), static_cast<cudaEvent_t>(to)));
  return ms;
}

}  // namespace lowrank::cuda
