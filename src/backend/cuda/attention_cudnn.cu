// cuDNN's fused SDPA (flash attention) for bf16 causal attention (GQA, optional sliding window),
// forward and backward, as a third path next to our own kernels (attention.cu, attention_tc*.cu).
//
// No link-time dependency: libcudnn.so.9 is dlopen'ed on first use and only the backend API is
// called (create/set/get/finalize/execute/destroy of descriptors). The code is compiled only when
// cuDNN's headers are present; LOWRANK_CUDNN=0 turns the path off at run time.
//
// The graphs are the ones cuDNN's flash-attention engines recognise, written here with the backend
// API the way cudnn-frontend lowers `sdpa` / `sdpa_backward` for cuDNN 9 (composite form: matmul,
// pointwise and reduction operations over virtual tensors; the engine fuses them):
//   forward:  S = Q Kᵀ · scale, causal / window mask (GEN_INDEX row and column, comparison,
//             BINARY_SELECT with -inf), softmax as max / sub / exp / sum / div with
//             Stats = max + log(sum) written out, O = P V (P in bf16).
//   backward: softmax_sum = rowsum(dO ⊙ O) (a workspace tensor), P = exp(S·scale masked − Stats),
//             dV = Pᵀ dO, dS = P (dO Vᵀ − softmax_sum) · scale, dK = dSᵀ Q, dQ = dS K (accumulated
//             in an f32 workspace tensor, then converted), GQA by a head-sum reduction of dK / dV.
// Stats is the natural-log log-sum-exp of the scaled, masked scores of each query row: exactly our
// lse [B, H, T], so any backward path can follow any forward path.
//
// Layouts need no copies: q [B*T, H*hd] is the logical [B, H, T, hd] with strides
// (T*H*hd, hd, H*hd, 1); k and v likewise with KV heads; Kᵀ (and Vᵀ in the backward) swap the last
// two dims and strides.
//
// One graph + execution plan is built per (device, B, T, H, KV, hd, window, scale, direction) and
// kept for the process (heuristics mode A, then fallback; the first engine config whose plan
// finalizes). A shape for which no plan builds is remembered and goes to our kernels (logged once).
// Workspace comes from the caching allocator per call; the handle is one per device, bound to the
// device's stream.
#include "attention_cudnn.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "common.cuh"
#include "context.h"
#include "lowrank/core/log.h"

#if __has_include(<cudnn_backend.h>)
#include <cudnn_backend.h>
#include <dlfcn.h>
#define LOWRANK_CUDNN_HEADERS 1
#else
#define LOWRANK_CUDNN_HEADERS 0
#endif

namespace lowrank::cuda {

#if LOWRANK_CUDNN_HEADERS
namespace {

// ---------------------------------------------------------------------------------------------
// The library: a table of the few entry points, resolved once.

struct Api {
  decltype(&cudnnGetVersion) get_version = nullptr;
  decltype(&cudnnGetErrorString) error_string = nullptr;
  decltype(&cudnnGetLastErrorString) last_error = nullptr;  // optional
  decltype(&cudnnCreate) create = nullptr;
  decltype(&cudnnSetStream) set_stream = nullptr;
  decltype(&cudnnBackendCreateDescriptor) create_desc = nullptr;
  decltype(&cudnnBackendDestroyDescriptor) destroy_desc = nullptr;
  decltype(&cudnnBackendSetAttribute) set_attr = nullptr;
  decltype(&cudnnBackendGetAttribute) get_attr = nullptr;
  decltype(&cudnnBackendFinalize) finalize = nullptr;
  decltype(&cudnnBackendExecute) execute = nullptr;
  int version = 0;  // e.g. 91900 for 9.19.0
};

struct Library {
  Api api;
  bool ok = false;
  std::string why;  // when !ok
};

bool env_disabled() {
  const char* e = std::getenv("LOWRANK_CUDNN");
  if (!e) return false;
  const std::string v = e;
  return v == "0" || v == "off" || v == "OFF" || v == "false" || v == "no";
}

// LOWRANK_CUDNN_PADDING_WORKAROUND=1 builds every backward graph with the padding-mask workaround
// that cuDNN <= 9.15 needs (see build_backward), so that it can be tested on a newer cuDNN.
bool force_padding_workaround() {
  static const bool on = [] {
    const char* e = std::getenv("LOWRANK_CUDNN_PADDING_WORKAROUND");
    return e && std::string(e) == "1";
  }();
  return on;
}

Library* load_library() {
  auto* lib = new Library;  // leaked on purpose: used until exit
  if (env_disabled()) {
    lib->why = "disabled by LOWRANK_CUDNN=0";
    log_debug("attention: cuDNN ", lib->why);
    return lib;
  }
  void* h = dlopen("libcudnn.so.9", RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char* e = dlerror();
    const std::string first = e ? e : "libcudnn.so.9 not found";
    h = dlopen("libcudnn.so", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      lib->why = "cannot load cuDNN (" + first + ")";
      log_debug("attention: ", lib->why, "; using lowrank's kernels");
      return lib;
    }
  }
  Api& a = lib->api;
  std::string missing;
  auto sym = [&](auto& fn, const char* name, bool required) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
    if (!fn && required) missing += std::string(missing.empty() ? "" : ", ") + name;
  };
  sym(a.get_version, "cudnnGetVersion", true);
  sym(a.error_string, "cudnnGetErrorString", true);
  sym(a.last_error, "cudnnGetLastErrorString", false);
  sym(a.create, "cudnnCreate", true);
  sym(a.set_stream, "cudnnSetStream", true);
  sym(a.create_desc, "cudnnBackendCreateDescriptor", true);
  sym(a.destroy_desc, "cudnnBackendDestroyDescriptor", true);
  sym(a.set_attr, "cudnnBackendSetAttribute", true);
  sym(a.get_attr, "cudnnBackendGetAttribute", true);
  sym(a.finalize, "cudnnBackendFinalize", true);
  sym(a.execute, "cudnnBackendExecute", true);
  if (!missing.empty()) {
    lib->why = "libcudnn lacks " + missing;
    log_debug("attention: ", lib->why, "; using lowrank's kernels");
    return lib;
  }
  a.version = static_cast<int>(a.get_version());
  if (a.version / 10000 != 9) {
    lib->why = detail::concat("cuDNN version ", a.version, " is not 9.x");
  } else if (a.version == 91000 || a.version == 91001) {
    // cudnn-frontend refuses these for bf16 SDPA (known bugs fixed in 9.10.2).
    lib->why = detail::concat("cuDNN ", a.version, " has known SDPA bugs (9.10.2 or newer needed)");
  } else {
    lib->ok = true;
    log_debug("attention: cuDNN ", a.version, " loaded, fused SDPA on");
    return lib;
  }
  log_info("attention: ", lib->why, "; using lowrank's kernels");
  return lib;
}

const Library& library() {
  static const Library* lib = load_library();
  return *lib;
}

std::string status_text(const Api& a, cudnnStatus_t st) {
  std::string s = a.error_string ? a.error_string(st) : detail::concat("cuDNN status ", int(st));
  if (a.last_error) {
    char buf[1024] = {0};
    a.last_error(buf, sizeof buf);
    if (buf[0]) s += std::string(" (") + buf + ")";
  }
  return s;
}

// Thrown while building a graph or plan: the shape falls back to our kernels.
struct BuildError {
  std::string what;
};

// An owned backend descriptor.
class Desc {
 public:
  Desc() = default;
  Desc(const Api& a, cudnnBackendDescriptorType_t type, const std::string& what) : a_(&a) {
    const cudnnStatus_t st = a.create_desc(type, &d_);
    if (st != CUDNN_STATUS_SUCCESS) {
      d_ = nullptr;
      throw BuildError{what + ": cudnnBackendCreateDescriptor(" + std::to_string(int(type)) + "): " +
                       status_text(a, st)};
    }
  }
  Desc(Desc&& o) noexcept : a_(o.a_), d_(o.d_) { o.d_ = nullptr; }
  Desc& operator=(Desc&& o) noexcept {
    if (this != &o) {
      reset();
      a_ = o.a_;
      d_ = o.d_;
      o.d_ = nullptr;
    }
    return *this;
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  ~Desc() { reset(); }
  cudnnBackendDescriptor_t get() const { return d_; }

 private:
  void reset() {
    if (d_) a_->destroy_desc(d_);
    d_ = nullptr;
  }
  const Api* a_ = nullptr;
  cudnnBackendDescriptor_t d_ = nullptr;
};

// Attribute names cuDNN 9.19 marks deprecated (still accepted by every 9.x; the frontend sets them).
constexpr auto kOpGraphHandle = static_cast<cudnnBackendAttributeName_t>(800);  // CUDNN_ATTR_OPERATIONGRAPH_HANDLE
constexpr auto kPlanHandle = static_cast<cudnnBackendAttributeName_t>(400);     // CUDNN_ATTR_EXECUTION_PLAN_HANDLE

// ---------------------------------------------------------------------------------------------
// Plans and the graph builder.

using Dims = std::array<int64_t, 4>;

// Non-virtual tensor ids (the variant pack's keys). By-value scalars get 50.., virtual tensors 1000..
enum Uid : int64_t {
  kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV,
  kSoftmaxSum, kDQAccum, kSeqQ, kSeqKV,
};

struct Plan {
  std::vector<Desc> descs;  // tensors, operations, their sub-descriptors: alive as long as the plan
  Desc graph, config, plan;
  int64_t workspace = 0;    // cuDNN's own workspace (bytes)
  // Host values of the by-value scalars (stable addresses: the Plan is never moved).
  float scale = 1.0f, neg_inf = -INFINITY, window = 0.0f, one = 1.0f;
  std::vector<std::pair<int64_t, void*>> scalars;
  // Backward: our workspace tensors, placed before cuDNN's workspace.
  bool padding = false;      // seq-len tensors for cudnn-frontend's padding-mask workaround (<= 9.15)
  bool zero_accum = false;   // dQ_accum needs zeroing (cuDNN < 9.6)
  int64_t sum_off = 0, accum_off = 0, accum_bytes = 0, seq_off = 0, cudnn_off = 0, total = 0;
};

struct Key {
  int device;
  int64_t B, T, H, KV, hd, window;
  uint32_t scale_bits;
  bool backward;
  int64_t ld = 0;  // q, k, v (and the backward's dq, dk, dv) as column blocks of rows of this stride
                   // (ops::attention_packed); 0: each dense
  auto tie() const { return std::tie(device, B, T, H, KV, hd, window, scale_bits, backward, ld); }
  bool operator<(const Key& o) const { return tie() < o.tie(); }
};

struct Tens {
  cudnnBackendDescriptor_t d = nullptr;
  Dims dim{}, stride{};
  cudnnDataType_t dt = CUDNN_DATA_FLOAT;
};

class Builder {
 public:
  Builder(const Api& a, Plan& p) : a_(a), p_(p) {}

  void set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type,
           int64_t n, const void* v, const std::string& what) {
    const cudnnStatus_t st = a_.set_attr(d, name, type, n, v);
    if (st != CUDNN_STATUS_SUCCESS)
      throw BuildError{what + ": set attribute " + std::to_string(int(name)) + ": " + status_text(a_, st)};
  }
  void finalize(cudnnBackendDescriptor_t d, const std::string& what) {
    const cudnnStatus_t st = a_.finalize(d);
    if (st != CUDNN_STATUS_SUCCESS) throw BuildError{what + ": finalize: " + status_text(a_, st)};
  }

  Tens tensor(int64_t uid, cudnnDataType_t dt, Dims dim, Dims stride, bool is_virtual, bool by_value = false) {
    const std::string what = "tensor " + std::to_string(uid);
    Desc t(a_, CUDNN_BACKEND_TENSOR_DESCRIPTOR, what);
    const int64_t alignment = 16;
    set(t.get(), CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt, what);
    set(t.get(), CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dim.data(), what);
    set(t.get(), CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, stride.data(), what);
    set(t.get(), CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, what);
    set(t.get(), CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment, what);
    const bool yes = true;
    if (is_virtual) set(t.get(), CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &yes, what);
    if (by_value) set(t.get(), CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &yes, what);
    finalize(t.get(), what);
    Tens r{t.get(), dim, stride, dt};
    p_.descs.push_back(std::move(t));
    return r;
  }
  Tens virt(cudnnDataType_t dt, Dims dim, Dims stride) { return tensor(next_virtual_++, dt, dim, stride, true); }
  // An f32 scalar passed by value from *value at every execution.
  Tens scalar(float* value) {
    const int64_t uid = next_scalar_++;
    p_.scalars.emplace_back(uid, value);
    return tensor(uid, CUDNN_DATA_FLOAT, {1, 1, 1, 1}, {1, 1, 1, 1}, false, true);
  }

  // y = mode(x [, b [, t]]) into a new virtual tensor of dtype `out`: dims broadcast over the inputs,
  // strides of the first input that has those dims (cudnn-frontend's inference).
  Tens pw(cudnnPointwiseMode_t mode, const Tens& x, const Tens* b, const Tens* t, cudnnDataType_t out,
          cudnnDataType_t compute, const std::string& name, int64_t axis = -1) {
    Dims dim = x.dim;
    for (const Tens* o : {b, t})
      if (o)
        for (int i = 0; i < 4; ++i) dim[i] = std::max(dim[i], o->dim[i]);
    Dims stride{};
    bool found = false;
    for (const Tens* o : {&x, b, t})
      if (o && o->dim == dim && !found) stride = o->stride, found = true;
    if (!found) throw BuildError{name + ": no input has the broadcast output shape"};
    Tens y = virt(out, dim, stride);
    pw_into(mode, x, b, t, y, compute, name, axis);
    return y;
  }
  void pw_into(cudnnPointwiseMode_t mode, const Tens& x, const Tens* b, const Tens* t, const Tens& y,
               cudnnDataType_t compute, const std::string& name, int64_t axis = -1) {
    Desc pwd(a_, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, name);
    set(pwd.get(), CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, name);
    set(pwd.get(), CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &compute, name);
    if (mode == CUDNN_POINTWISE_GEN_INDEX) set(pwd.get(), CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, name);
    finalize(pwd.get(), name);
    Desc op(a_, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, name);
    cudnnBackendDescriptor_t raw = pwd.get();
    set(op.get(), CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw, name);
    set(op.get(), CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x.d, name);
    set(op.get(), CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y.d, name);
    if (b) set(op.get(), CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b->d, name);
    if (t) set(op.get(), CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t->d, name);
    const float one = 1.0f;
    set(op.get(), CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, 1, &one, name);
    set(op.get(), CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, 1, &one, name);
    finalize(op.get(), name);
    p_.descs.push_back(std::move(pwd));
    ops_.push_back(op.get());
    p_.descs.push_back(std::move(op));
  }

  // c = a b (batched over the leading dims; a head dim of b that divides a's broadcasts: GQA), f32
  // accumulation. m/n/k overrides: per-batch sequence lengths (the padding-mask workaround).
  void matmul(const Tens& a, const Tens& b, const Tens& c, const std::string& name, const Tens* m = nullptr,
              const Tens* n = nullptr, const Tens* k = nullptr) {
    Desc md(a_, CUDNN_BACKEND_MATMUL_DESCRIPTOR, name);
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    set(md.get(), CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, name);
    finalize(md.get(), name);
    Desc op(a_, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, name);
    set(op.get(), CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a.d, name);
    set(op.get(), CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b.d, name);
    set(op.get(), CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c.d, name);
    cudnnBackendDescriptor_t raw = md.get();
    set(op.get(), CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw, name);
    if (m) set(op.get(), CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &m->d, name);
    if (n) set(op.get(), CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n->d, name);
    if (k) set(op.get(), CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &k->d, name);
    finalize(op.get(), name);
    p_.descs.push_back(std::move(md));
    ops_.push_back(op.get());
    p_.descs.push_back(std::move(op));
  }

  void reduce(cudnnReduceTensorOp_t mode, const Tens& x, const Tens& y, const std::string& name) {
    Desc rd(a_, CUDNN_BACKEND_REDUCTION_DESCRIPTOR, name);
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    set(rd.get(), CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, name);
    set(rd.get(), CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode, name);
    finalize(rd.get(), name);
    Desc op(a_, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, name);
    cudnnBackendDescriptor_t raw = rd.get();
    set(op.get(), CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw, name);
    set(op.get(), CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x.d, name);
    set(op.get(), CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y.d, name);
    finalize(op.get(), name);
    p_.descs.push_back(std::move(rd));
    ops_.push_back(op.get());
    p_.descs.push_back(std::move(op));
  }

  // A view of x with other dims / strides (the transposes of P, dS and K in the backward).
  void reshape(const Tens& x, const Tens& y, const std::string& name) {
    Desc op(a_, CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, name);
    set(op.get(), CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x.d, name);
    set(op.get(), CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y.d, name);
    finalize(op.get(), name);
    ops_.push_back(op.get());
    p_.descs.push_back(std::move(op));
  }

  // The operation graph, then the first engine config (heuristics mode A, then fallback) whose
  // execution plan finalizes.
  void finish(cudnnHandle_t handle) {
    Desc graph(a_, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
    set(graph.get(), CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, int64_t(ops_.size()),
        ops_.data(), "operation graph");
    set(graph.get(), kOpGraphHandle, CUDNN_TYPE_HANDLE, 1, &handle, "operation graph");
    finalize(graph.get(), "operation graph");
    std::string last = "heuristics returned no engine config";
    for (const cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
      const std::string what = mode == CUDNN_HEUR_MODE_A ? "heuristics A" : "heuristics fallback";
      Desc heur(a_, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, what);
      cudnnBackendDescriptor_t g = graph.get();
      set(heur.get(), CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g, what);
      set(heur.get(), CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, what);
      cudnnStatus_t st = a_.finalize(heur.get());
      if (st != CUDNN_STATUS_SUCCESS) {
        last = what + ": finalize: " + status_text(a_, st);
        continue;
      }
      int64_t count = 0;
      st = a_.get_attr(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr);
      if (st != CUDNN_STATUS_SUCCESS || count <= 0) {
        last = what + (st != CUDNN_STATUS_SUCCESS ? ": result count: " + status_text(a_, st) : ": no engine config");
        continue;
      }
      std::vector<Desc> configs;
      std::vector<cudnnBackendDescriptor_t> raw;
      for (int64_t i = 0; i < count; ++i) {
        configs.emplace_back(a_, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, what + " config");
        raw.push_back(configs.back().get());
      }
      int64_t got = 0;
      st = a_.get_attr(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got,
                       raw.data());
      if (st != CUDNN_STATUS_SUCCESS || got <= 0) {
        last = what + (st != CUDNN_STATUS_SUCCESS ? ": results: " + status_text(a_, st) : ": no engine config");
        continue;
      }
      for (int64_t i = 0; i < std::min(got, count); ++i) {
        Desc plan(a_, CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, "execution plan");
        st = a_.set_attr(plan.get(), kPlanHandle, CUDNN_TYPE_HANDLE, 1, &handle);
        if (st == CUDNN_STATUS_SUCCESS)
          st = a_.set_attr(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                           &raw[i]);
        if (st == CUDNN_STATUS_SUCCESS) st = a_.finalize(plan.get());
        if (st != CUDNN_STATUS_SUCCESS) {
          last = what + " config " + std::to_string(i) + ": plan: " + status_text(a_, st);
          continue;
        }
        int64_t ws = 0, n = 0;
        st = a_.get_attr(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n, &ws);
        if (st != CUDNN_STATUS_SUCCESS || ws < 0) {
          last = what + " config " + std::to_string(i) + ": workspace size: " + status_text(a_, st);
          continue;
        }
        p_.workspace = ws;
        p_.config = std::move(configs[size_t(i)]);
        p_.plan = std::move(plan);
        p_.graph = std::move(graph);
        return;
      }
    }
    throw BuildError{"no execution plan: " + last};
  }

 private:
  const Api& a_;
  Plan& p_;
  std::vector<cudnnBackendDescriptor_t> ops_;
  int64_t next_virtual_ = 1000, next_scalar_ = 50;
};

constexpr cudnnDataType_t kF32 = CUDNN_DATA_FLOAT, kBF16 = CUDNN_DATA_BFLOAT16, kI32 = CUDNN_DATA_INT32,
                          kBool = CUDNN_DATA_BOOLEAN;

// Causal mask (keep column <= row) and, with window > 0, the sliding window's left bound (keep
// column > row - window), as cudnn-frontend's top-left diagonal band masks lower them.
Tens causal_window_mask(Builder& g, Plan& p, Tens s, int64_t window) {
  {
    const Tens row = g.pw(CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, kI32, kF32, "causal row index", 2);
    const Tens col = g.pw(CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, kI32, kF32, "causal col index", 3);
    const Tens keep = g.pw(CUDNN_POINTWISE_CMP_GE, row, &col, nullptr, kBool, kBool, "causal row>=col");
    const Tens ninf = g.scalar(&p.neg_inf);
    s = g.pw(CUDNN_POINTWISE_BINARY_SELECT, s, &ninf, &keep, kF32, kF32, "causal select");
  }
  if (window > 0) {
    const Tens row = g.pw(CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, kI32, kF32, "window row index", 2);
    const Tens col = g.pw(CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, kI32, kF32, "window col index", 3);
    const Tens w = g.scalar(&p.window);
    const Tens colw = g.pw(CUDNN_POINTWISE_ADD, col, &w, nullptr, kF32, kF32, "window col+w");
    const Tens keep = g.pw(CUDNN_POINTWISE_CMP_GT, colw, &row, nullptr, kBool, kBool, "window col+w>row");
    const Tens ninf = g.scalar(&p.neg_inf);
    s = g.pw(CUDNN_POINTWISE_BINARY_SELECT, s, &ninf, &keep, kF32, kF32, "window select");
  }
  return s;
}

// Keeps rows < seq_q and columns < seq_kv (cudnn-frontend's padding mask).
Tens padding_mask(Builder& g, Plan& p, const Tens& s, const Tens& seq_q, const Tens& seq_kv) {
  const Tens row = g.pw(CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, kI32, kI32, "padding row index", 2);
  const Tens col = g.pw(CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, kI32, kI32, "padding col index", 3);
  const Tens rm = g.pw(CUDNN_POINTWISE_CMP_LT, row, &seq_q, nullptr, kBool, kBool, "padding row<sq");
  const Tens cm = g.pw(CUDNN_POINTWISE_CMP_LT, col, &seq_kv, nullptr, kBool, kBool, "padding col<skv");
  const Tens keep = g.pw(CUDNN_POINTWISE_LOGICAL_AND, rm, &cm, nullptr, kBool, kBool, "padding and");
  const Tens ninf = g.scalar(&p.neg_inf);
  return g.pw(CUDNN_POINTWISE_BINARY_SELECT, s, &ninf, &keep, kF32, kF32, "padding select");
}

float neg_inf_for(int version) {
  // cudnn-frontend: older cuDNN prefers the lowest finite float for softmax masks.
  return version < 91000 ? std::numeric_limits<float>::lowest() : -std::numeric_limits<float>::infinity();
}

void build_forward(const Api& a, cudnnHandle_t handle, const Key& k, Plan& p) {
  const int64_t B = k.B, T = k.T, H = k.H, KV = k.KV, D = k.hd;
  std::memcpy(&p.scale, &k.scale_bits, sizeof(float));
  p.neg_inf = neg_inf_for(a.version);
  p.window = static_cast<float>(k.window);
  Builder g(a, p);
  const int64_t lq = k.ld ? k.ld : H * D, lk = k.ld ? k.ld : KV * D;  // row strides of q and of k, v
  const Tens q = g.tensor(kQ, kBF16, {B, H, T, D}, {T * lq, D, lq, 1}, false);
  const Tens kt = g.tensor(kK, kBF16, {B, KV, D, T}, {T * lk, D, 1, lk}, false);
  const Tens v = g.tensor(kV, kBF16, {B, KV, T, D}, {T * lk, D, lk, 1}, false);
  const Tens o = g.tensor(kO, kBF16, {B, H, T, D}, {T * H * D, D, H * D, 1}, false);
  const Tens stats = g.tensor(kStats, kF32, {B, H, T, 1}, {H * T, T, 1, 1}, false);
  const Tens scale = g.scalar(&p.scale);
  const Dims sd{B, H, T, T}, ss{H * T * T, T * T, T, 1}, rd{B, H, T, 1}, rs{H * T, T, 1, 1};

  Tens s = g.virt(kF32, sd, ss);
  g.matmul(q, kt, s, "bmm1 Q Kt");
  s = g.pw(CUDNN_POINTWISE_MUL, s, &scale, nullptr, kF32, kF32, "attn scale");
  s = causal_window_mask(g, p, s, k.window);
  // softmax with Stats = max + log(sum exp(s - max))
  const Tens mx = g.virt(kF32, rd, rs);
  g.reduce(CUDNN_REDUCE_TENSOR_MAX, s, mx, "softmax max");
  const Tens z = g.pw(CUDNN_POINTWISE_SUB, s, &mx, nullptr, kF32, kF32, "softmax sub");
  const Tens e = g.pw(CUDNN_POINTWISE_EXP, z, nullptr, nullptr, kF32, kF32, "softmax exp");
  const Tens sum = g.virt(kF32, rd, rs);
  g.reduce(CUDNN_REDUCE_TENSOR_ADD, e, sum, "softmax sum");
  const Tens lg = g.pw(CUDNN_POINTWISE_LOG, sum, nullptr, nullptr, kF32, kF32, "softmax log");
  g.pw_into(CUDNN_POINTWISE_ADD, mx, &lg, nullptr, stats, kF32, "softmax stats");
  const Tens prob = g.virt(kBF16, e.dim, e.stride);  // bmm2's A operand in the I/O type
  g.pw_into(CUDNN_POINTWISE_DIV, e, &sum, nullptr, prob, kF32, "softmax div");
  g.matmul(prob, v, o, "bmm2 P V");
  g.finish(handle);
}

void build_backward(const Api& a, cudnnHandle_t handle, const Key& k, Plan& p) {
  const int64_t B = k.B, T = k.T, H = k.H, KV = k.KV, D = k.hd;
  std::memcpy(&p.scale, &k.scale_bits, sizeof(float));
  p.neg_inf = neg_inf_for(a.version);
  p.window = static_cast<float>(k.window);
  // cudnn-frontend works around a backward bug of cuDNN <= 9.15 for s_kv % 128 != 0 with a padding
  // mask whose sequence lengths are the full lengths; and cuDNN < 9.6 wants dQ_accum zeroed.
  p.padding = (T % 128 != 0 && a.version <= 91500) || force_padding_workaround();
  p.zero_accum = a.version < 90600;
  Builder g(a, p);
  const int64_t lq = k.ld ? k.ld : H * D, lk = k.ld ? k.ld : KV * D;  // row strides of q, dq and of k, v, dk, dv
  const Dims qd{B, H, T, D}, qs{T * H * D, D, H * D, 1}, qio{T * lq, D, lq, 1};
  const Dims kd{B, KV, T, D}, kio{T * lk, D, lk, 1};
  const Dims ktd{B, KV, D, T}, kts{T * lk, D, 1, lk};
  const Dims sd{B, H, T, T}, ss{H * T * T, T * T, T, 1}, sts{H * T * T, T * T, 1, T};
  const Dims rd{B, H, T, 1}, rs{H * T, T, 1, 1};
  const Tens q = g.tensor(kQ, kBF16, qd, qio, false);
  const Tens kt = g.tensor(kK, kBF16, ktd, kts, false);
  const Tens vt = g.tensor(kV, kBF16, ktd, kts, false);
  const Tens o = g.tensor(kO, kBF16, qd, qs, false);
  const Tens dout = g.tensor(kDO, kBF16, qd, qs, false);
  const Tens stats = g.tensor(kStats, kF32, rd, rs, false);
  const Tens dq = g.tensor(kDQ, kBF16, qd, qio, false);
  const Tens dk = g.tensor(kDK, kBF16, kd, kio, false);
  const Tens dv = g.tensor(kDV, kBF16, kd, kio, false);
  const Tens softmax_sum = g.tensor(kSoftmaxSum, kF32, rd, rs, false);
  const Tens dq_accum = g.tensor(kDQAccum, kF32, qd, {H * T * D, T * D, D, 1}, false);
  const Tens scale = g.scalar(&p.scale);
  const Tens one = g.scalar(&p.one);
  Tens seq_q, seq_kv;
  if (p.padding) {
    seq_q = g.tensor(kSeqQ, kI32, {B, 1, 1, 1}, {1, 1, 1, 1}, false);
    seq_kv = g.tensor(kSeqKV, kI32, {B, 1, 1, 1}, {1, 1, 1, 1}, false);
  }
  const Tens* sq = p.padding ? &seq_q : nullptr;
  const Tens* skv = p.padding ? &seq_kv : nullptr;

  // softmax_sum = rowsum(dO * O)  (the frontend's strides for the virtual product)
  const Tens prod = g.virt(kF32, qd, {H * T * D, T * D, H * D, 1});
  g.pw_into(CUDNN_POINTWISE_MUL, dout, &o, nullptr, prod, kF32, "dO*O");
  const Tens rowsum = g.virt(kF32, rd, rs);
  g.reduce(CUDNN_REDUCE_TENSOR_ADD, prod, rowsum, "rowsum dO*O");
  g.pw_into(CUDNN_POINTWISE_MUL, rowsum, &one, nullptr, softmax_sum, kF32, "softmax_sum");

  // P = exp(mask(S * scale) - Stats)
  Tens s = g.virt(kF32, sd, ss);
  g.matmul(q, kt, s, "matmul Q Kt", sq, skv);
  s = g.pw(CUDNN_POINTWISE_MUL, s, &scale, nullptr, kF32, kF32, "attn scale");
  if (p.padding) s = padding_mask(g, p, s, seq_q, seq_kv);
  s = g.pw(CUDNN_POINTWISE_SUB, s, &stats, nullptr, kF32, kF32, "sub stats");
  if (p.padding && a.version >= 90000 && a.version < 91000) s = padding_mask(g, p, s, seq_q, seq_kv);
  s = causal_window_mask(g, p, s, k.window);
  const Tens prob = g.pw(CUDNN_POINTWISE_EXP, s, nullptr, nullptr, kF32, kF32, "exp");

  // out = xᵀ y per query head, summed over the heads of a group when H > KV (dV and dK).
  auto matmul_group_sum = [&](const Tens& x_t, const Tens& y, const Tens& out, const std::string& name) {
    if (H == KV) {
      g.matmul(x_t, y, out, "matmul " + name, skv, nullptr, sq);
      return;
    }
    const Tens full = g.virt(kBF16, qd, {H * T * D, T * D, D, 1});
    g.matmul(x_t, y, full, "matmul " + name, skv, nullptr, sq);
    g.reduce(CUDNN_REDUCE_TENSOR_ADD, full, out, name + " head sum");
  };

  // dV = Pᵀ dO (summed over the heads of a group)
  const Tens prob_t = g.virt(kBF16, sd, sts);
  g.reshape(prob, prob_t, "reshape P");
  matmul_group_sum(prob_t, dout, dv, "Pt dO");

  // dS = P (dO Vᵀ - softmax_sum) * scale
  Tens dp = g.virt(kF32, sd, ss);
  g.matmul(dout, vt, dp, "matmul dO Vt", sq, skv);
  dp = g.pw(CUDNN_POINTWISE_SUB, dp, &softmax_sum, nullptr, kF32, kF32, "dP - softmax_sum");
  dp = g.pw(CUDNN_POINTWISE_MUL, dp, &prob, nullptr, kF32, kF32, "dP * P");
  const Tens ds = g.pw(CUDNN_POINTWISE_MUL, dp, &scale, nullptr, kF32, kF32, "dS scale");

  // dK = dSᵀ Q (summed over the heads of a group)
  const Tens ds_t = g.virt(kBF16, sd, sts);
  g.reshape(ds, ds_t, "reshape dS");
  matmul_group_sum(ds_t, q, dk, "dSt Q");

  // dQ = dS K, accumulated in f32 and converted
  const Tens kr = g.virt(kBF16, kd, kio);
  g.reshape(kt, kr, "reshape K");
  g.matmul(ds, kr, dq_accum, "matmul dS K", sq, nullptr, skv);
  g.pw_into(CUDNN_POINTWISE_IDENTITY, dq_accum, nullptr, nullptr, dq, kF32, "dQ");
  g.finish(handle);

  // Our workspace tensors first, cuDNN's after them (256-byte aligned pieces).
  auto up = [](int64_t n) { return (n + 255) / 256 * 256; };
  p.sum_off = 0;
  p.accum_off = up(B * H * T * 4);
  p.accum_bytes = B * H * T * D * 4;
  p.seq_off = p.accum_off + up(p.accum_bytes);
  p.cudnn_off = p.seq_off + (p.padding ? up(2 * B * 4) : 0);
  p.total = p.cudnn_off + up(p.workspace);
}

// ---------------------------------------------------------------------------------------------
// Cache and dispatch.

struct Entry {
  std::unique_ptr<Plan> plan;  // null: no plan for this key (error says why)
  std::string error;
};

struct State {
  std::mutex mutex;
  std::map<int, cudnnHandle_t> handles;
  std::map<int, std::string> handle_errors;
  std::map<Key, Entry> plans;
};

State& state() {
  static State* s = new State;  // leaked on purpose: cuDNN objects must outlive every user, and
  return *s;                    // destroying them after the CUDA context is gone would crash at exit
}

// The device's handle (created on first use, bound to the device's stream); null with `why` set
// when cuDNN cannot create one. Call with the state's mutex held.
cudnnHandle_t handle_for(const Api& a, State& st, Device d, std::string* why) {
  if (auto it = st.handles.find(d.index); it != st.handles.end()) return it->second;
  if (auto it = st.handle_errors.find(d.index); it != st.handle_errors.end()) {
    *why = it->second;
    return nullptr;
  }
  cudaStream_t stream = stream_for(d);  // also makes d current
  cudnnHandle_t h = nullptr;
  cudnnStatus_t s = a.create(&h);
  if (s == CUDNN_STATUS_SUCCESS) s = a.set_stream(h, stream);
  if (s != CUDNN_STATUS_SUCCESS) {
    *why = "cudnnCreate/cudnnSetStream on " + d.str() + ": " + status_text(a, s);
    st.handle_errors[d.index] = *why;
    log_info("attention: ", *why, "; using lowrank's kernels");
    return nullptr;
  }
  st.handles[d.index] = h;
  return h;
}

// The cached plan for k (built on first use), with its handle; null with `why` set when none.
Plan* plan_for(const Key& k, Device d, cudnnHandle_t* handle, std::string* why) {
  const Api& a = library().api;
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mutex);
  *handle = handle_for(a, st, d, why);
  if (!*handle) return nullptr;
  auto it = st.plans.find(k);
  if (it == st.plans.end()) {
    Entry e;
    auto p = std::make_unique<Plan>();
    try {
      const auto start = std::chrono::steady_clock::now();
      if (k.backward) build_backward(a, *handle, k, *p);
      else build_forward(a, *handle, k, *p);
      e.plan = std::move(p);
      log_debug("attention: cuDNN ", k.backward ? "backward" : "forward", " plan for B=", k.B, " T=", k.T,
                " H=", k.H, " KV=", k.KV, " hd=", k.hd, " window=", k.window, ", workspace ", e.plan->workspace,
                " bytes, built in ",
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count(), " ms");
    } catch (const BuildError& err) {
      e.error = err.what;
      log_info("attention: cuDNN ", k.backward ? "backward" : "forward", " graph for B=", k.B, " T=", k.T, " H=",
               k.H, " KV=", k.KV, " hd=", k.hd, " window=", k.window, " did not build (", err.what,
               "); using lowrank's kernels for this shape");
    }
    it = st.plans.emplace(k, std::move(e)).first;
  }
  if (!it->second.plan) *why = "no cuDNN plan for this shape: " + it->second.error;
  return it->second.plan.get();
}

// Whether the cuDNN path applies to these arguments (why says why not).
bool applies(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s, std::string* why) {
  auto no = [&](const std::string& r) {
    *why = r;
    return false;
  };
  if (q.dtype() != DType::BF16 || k.dtype() != DType::BF16 || v.dtype() != DType::BF16)
    return no("cuDNN attention runs bf16 only");
  const Library& lib = library();  // loaded only once a bf16 call could use it
  if (!lib.ok) return no(lib.why);
  if (s.head_dim % 8 != 0 || s.head_dim > 128) return no("cuDNN attention needs head_dim % 8 == 0 and <= 128");
  if (s.seq < 2) return no("cuDNN attention needs T >= 2");
  if (s.kv_heads <= 0 || s.heads % s.kv_heads != 0) return no("heads must be a multiple of kv_heads");
  if (s.window < 0) return no("negative window");
  if (!aligned16(q) || !aligned16(k) || !aligned16(v)) return no("cuDNN attention needs 16-byte aligned tensors");
  if (context(q.device()).props.major < 8) return no("cuDNN flash attention needs sm_80 or newer");
  return true;
}

Key key_of(const Tensor& q, const AttentionShape& s, bool backward) {
  uint32_t bits;
  std::memcpy(&bits, &s.scale, sizeof bits);
  // A window of T or more keys hides nothing: the same graph as plain causal attention.
  const int64_t window = s.window >= s.seq ? 0 : s.window;
  return Key{q.device().index, s.batch, s.seq, s.heads, s.kv_heads, s.head_dim, window, bits, backward};
}

void execute(const Api& a, cudnnHandle_t handle, Plan& p, std::vector<int64_t> uids, std::vector<void*> ptrs,
             void* workspace, const char* op) {
  for (auto& [uid, value] : p.scalars) {
    uids.push_back(uid);
    ptrs.push_back(value);
  }
  auto fail = [&](const char* what, cudnnStatus_t st) {
    throw InternalError(detail::concat(op, ": cuDNN ", what, " failed: ", status_text(a, st)));
  };
  cudnnBackendDescriptor_t pack = nullptr;
  cudnnStatus_t st = a.create_desc(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack);
  if (st != CUDNN_STATUS_SUCCESS) fail("variant pack", st);
  st = a.set_attr(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, int64_t(uids.size()), uids.data());
  if (st == CUDNN_STATUS_SUCCESS)
    st = a.set_attr(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, int64_t(ptrs.size()),
                    ptrs.data());
  if (st == CUDNN_STATUS_SUCCESS)
    st = a.set_attr(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
  if (st == CUDNN_STATUS_SUCCESS) st = a.finalize(pack);
  if (st != CUDNN_STATUS_SUCCESS) {
    a.destroy_desc(pack);
    fail("variant pack", st);
  }
  st = a.execute(handle, p.plan.get(), pack);
  a.destroy_desc(pack);
  if (st != CUDNN_STATUS_SUCCESS) fail("execute", st);
}

__global__ void fill_i32_kernel(int32_t* p, int64_t n, int32_t value) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) p[i] = value;
}

}  // namespace

bool cudnn_attention_available(std::string* why) {
  const Library& lib = library();
  if (!lib.ok && why) *why = lib.why;
  return lib.ok;
}

int cudnn_version() { return library().ok ? library().api.version : 0; }

int64_t cudnn_attention_plans() {
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mutex);
  return static_cast<int64_t>(st.plans.size());
}

namespace {

// The forward from q, k, v at those addresses, dense or (ld > 0) column blocks of rows of that
// stride; `like`: a tensor of theirs (dtype, device, alignment already checked by the caller).
bool forward_cudnn(const Tensor& like, const void* q, const void* k, const void* v, int64_t ld,
                   const AttentionShape& s, Tensor& out, Tensor& lse, std::string* why) {
  std::string reason;
  auto no = [&] {
    if (why) *why = reason;
    return false;
  };
  cudnnHandle_t handle = nullptr;
  Key key = key_of(like, s, false);
  key.ld = ld;
  Plan* p = plan_for(key, like.device(), &handle, &reason);
  if (!p) return no();
  out = Tensor::empty({s.batch * s.seq, s.heads * s.head_dim}, like.dtype(), like.device());
  lse = Tensor::empty({s.batch, s.heads, s.seq}, DType::F32, like.device());
  Tensor ws = p->workspace > 0 ? Tensor::empty({p->workspace}, DType::U8, like.device()) : Tensor();
  execute(library().api, handle, *p, {kQ, kK, kV, kO, kStats},
          {const_cast<void*>(q), const_cast<void*>(k), const_cast<void*>(v), out.raw(), lse.raw()},
          ws.defined() ? ws.raw() : nullptr, "attention");
  return true;
}

// q, k, v (bf16, 16-byte aligned) as the column blocks of one packed [B*T, (H + 2·KV)·hd].
bool packed_applies(const Tensor& qkv, const AttentionShape& s, std::string* why) {
  const int64_t wq = s.heads * s.head_dim, wk = s.kv_heads * s.head_dim;
  if (qkv.rank() != 2 || qkv.dim(1) != wq + 2 * wk || qkv.dim(1) % 8 != 0) {
    *why = "a packed q, k, v of another shape";
    return false;
  }
  // dtype, library, heads and alignment; the k and v blocks start 16-byte aligned too (hd % 8 == 0)
  return applies(qkv, qkv, qkv, s, why);
}

}  // namespace

bool attention_cudnn(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s, Tensor& out,
                     Tensor& lse, std::string* why) {
  std::string reason;
  if (!applies(q, k, v, s, &reason)) {
    if (why) *why = reason;
    return false;
  }
  return forward_cudnn(q, q.raw(), k.raw(), v.raw(), 0, s, out, lse, why);
}

bool attention_cudnn_packed(const Tensor& qkv, const AttentionShape& s, Tensor& out, Tensor& lse, std::string* why) {
  std::string reason;
  if (!packed_applies(qkv, s, &reason)) {
    if (why) *why = reason;
    return false;
  }
  const auto* base = static_cast<const bf16*>(qkv.raw());
  const int64_t wq = s.heads * s.head_dim, wk = s.kv_heads * s.head_dim;
  return forward_cudnn(qkv, base, base + wq, base + wq + wk, qkv.dim(1), s, out, lse, why);
}

namespace {

// The backward into dq, dk, dv at those addresses, dense or (out_ld > 0) rows of that stride.
// The backward from q, k, v and into dq, dk, dv at those addresses, dense or (ld > 0) column
// blocks of rows of that stride; `like`: a tensor of theirs (checked by the caller with applies()).
bool backward_cudnn(const Tensor& like, const Tensor& dout, const void* q, const void* k, const void* v,
                    const Tensor& out, const Tensor& lse, const AttentionShape& s, void* dq, void* dk, void* dv,
                    int64_t ld, std::string* why) {
  std::string reason;
  auto no = [&] {
    if (why) *why = reason;
    return false;
  };
  if (dout.dtype() != DType::BF16 || out.dtype() != DType::BF16) return reason = "cuDNN attention runs bf16 only", no();
  auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  if (!aligned16(dout) || !aligned16(out) || !aligned16(lse) || !aligned(dq) || !aligned(dk) || !aligned(dv))
    return reason = "cuDNN attention needs 16-byte aligned tensors", no();
  cudnnHandle_t handle = nullptr;
  Key key = key_of(like, s, true);
  key.ld = ld;
  Plan* p = plan_for(key, like.device(), &handle, &reason);
  if (!p) return no();
  Tensor ws = Tensor::empty({p->total}, DType::U8, like.device());
  char* base = static_cast<char*>(ws.raw());
  cudaStream_t stream = stream_for(like.device());
  if (p->zero_accum) LR_CUDA(cudaMemsetAsync(base + p->accum_off, 0, size_t(p->accum_bytes), stream));
  std::vector<int64_t> uids{kQ, kK, kV, kO, kDO, kStats, kDQ, kDK, kDV, kSoftmaxSum, kDQAccum};
  std::vector<void*> ptrs{const_cast<void*>(q), const_cast<void*>(k), const_cast<void*>(v), out.raw(), dout.raw(),
                          lse.raw(), dq, dk, dv, base + p->sum_off, base + p->accum_off};
  if (p->padding) {
    auto* seq = reinterpret_cast<int32_t*>(base + p->seq_off);  // seq_q [B] then seq_kv [B], all T
    fill_i32_kernel<<<grid_for(2 * s.batch, 256), 256, 0, stream>>>(seq, 2 * s.batch, static_cast<int32_t>(s.seq));
    LR_CUDA_LAUNCHED();
    uids.push_back(kSeqQ);
    ptrs.push_back(seq);
    uids.push_back(kSeqKV);
    ptrs.push_back(seq + s.batch);
  }
  execute(library().api, handle, *p, std::move(uids), std::move(ptrs), p->workspace > 0 ? base + p->cudnn_off : nullptr,
          "attention_backward");
  return true;
}

}  // namespace

bool attention_backward_cudnn(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& out, const Tensor& lse, const AttentionShape& s, Tensor& dq, Tensor& dk,
                              Tensor& dv, std::string* why) {
  std::string reason;
  if (!applies(q, k, v, s, &reason)) {
    if (why) *why = reason;
    return false;
  }
  return backward_cudnn(q, dout, q.raw(), k.raw(), v.raw(), out, lse, s, dq.raw(), dk.raw(), dv.raw(), 0, why);
}

bool attention_backward_cudnn_packed(const Tensor& dout, const Tensor& qkv, const Tensor& out, const Tensor& lse,
                                     const AttentionShape& s, Tensor& dqkv, std::string* why) {
  std::string reason;
  if (!packed_applies(qkv, s, &reason) || dqkv.shape() != qkv.shape() || dqkv.dtype() != qkv.dtype()) {
    if (why) *why = reason.empty() ? "a packed gradient of another shape" : reason;
    return false;
  }
  const int64_t wq = s.heads * s.head_dim, wk = s.kv_heads * s.head_dim;
  const auto* in = static_cast<const bf16*>(qkv.raw());
  auto* g = static_cast<bf16*>(dqkv.raw());
  return backward_cudnn(qkv, dout, in, in + wq, in + wq + wk, out, lse, s, g, g + wq, g + wq + wk, qkv.dim(1), why);
}

#else  // no cuDNN headers at build time: the path never applies

bool cudnn_attention_available(std::string* why) {
  if (why) *why = "lowrank was built without cuDNN headers";
  return false;
}

int cudnn_version() { return 0; }

int64_t cudnn_attention_plans() { return 0; }

bool attention_cudnn(const Tensor&, const Tensor&, const Tensor&, const AttentionShape&, Tensor&, Tensor&,
                     std::string* why) {
  if (why) *why = "lowrank was built without cuDNN headers";
  return false;
}

bool attention_backward_cudnn(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                              const Tensor&, const AttentionShape&, Tensor&, Tensor&, Tensor&, std::string* why) {
  if (why) *why = "lowrank was built without cuDNN headers";
  return false;
}

bool attention_cudnn_packed(const Tensor&, const AttentionShape&, Tensor&, Tensor&, std::string* why) {
  if (why) *why = "lowrank was built without cuDNN headers";
  return false;
}

bool attention_backward_cudnn_packed(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                     const AttentionShape&, Tensor&, std::string* why) {
  if (why) *why = "lowrank was built without cuDNN headers";
  return false;
}

#endif

}  // namespace lowrank::cuda
