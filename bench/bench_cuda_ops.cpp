// CUDA op benchmark: times the GEMMs, attention and fused kernels of a training step with CUDA
// events on the device's stream and prints achieved TFLOP/s (matrix work) or GB/s (memory-bound
// kernels: bytes read + written once).
// usage: bench_cuda_ops [--quick | --attention | --projections | --k-extension [r [pad]] | --dx-extension [r] |
//                        --dropout-shrink [r] | --lora-ranks | --attention-plans]
// (--attention: only the tensor-core vs cuDNN attention rows; --projections: only separate vs
// stacked frozen projections; --k-extension: LoRA's expand and g as today vs folded into the
// frozen GEMMs' K; --dx-extension: o's and down's LoRA input gradient as today vs folded into
// the input-grad GEMM's K; --dropout-shrink: LoRA's shrink through its dropout, fused vs composed;
// --lora-ranks: LoRA's six GEMMs of a projection at ranks 1–16; --attention-plans: what cuDNN's
// plan build costs the first call of a serving prefill's shape)
#ifdef LOWRANK_WITH_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "lowrank/backend/cuda/attention_path.h"
#include "lowrank/backend/cuda/device.h"
#include "lowrank/core/device_graph.h"
#include "lowrank/core/device_memory.h"
#include "lowrank/core/rng.h"
#include "lowrank/ops/ops.h"

#include "bench_util.h"

using namespace lowrank;

namespace {

const Device kGpu = Device::cuda(0);

Tensor random_gpu(const Shape& s, DType t, uint64_t seed, float amp = 1.0f) {
  Tensor c = Tensor::empty(s);
  Rng rng(seed);
  for (int64_t i = 0; i < c.numel(); ++i) c.f32()[i] = rng.uniform(-amp, amp);
  return c.to(t).to(kGpu);
}

double time_ms(const std::function<void()>& fn, int warmup = 3, int iters = 10) {
  return bench::time_ms(kGpu, fn, warmup, iters);
}

// Per call of fn, replayed from a CUDA graph of `calls` calls (after warm-up calls that make the
// GEMM plans): no host launch cost, as in a training step's graph. For kernels of a few µs,
// which timing from the host would show at the host's launch rate.
double graph_ms(const std::function<void()>& fn, int calls = 20, int replays = 5) {
  for (int i = 0; i < 3; ++i) fn();
  DeviceGraph graph(kGpu, make_device_graph_pool(kGpu));
  graph.record([&] {
    for (int i = 0; i < calls; ++i) fn();
  });
  return bench::time_ms(kGpu, [&] { graph.replay(); }, 1, replays) / calls;
}

void report_flops(const std::string& what, double ms, double flops) {
  std::printf("%-58s %9.3f ms  %8.1f TFLOP/s\n", what.c_str(), ms, flops / ms * 1e-9);
}
void report_bytes(const std::string& what, double ms, double bytes) {
  std::printf("%-58s %9.3f ms  %8.1f GB/s\n", what.c_str(), ms, bytes / ms * 1e-6);
}

void bench_gemms(int64_t tokens) {
  std::printf("\n-- GEMMs (tokens = %lld)\n", static_cast<long long>(tokens));
  for (auto [in, out] : {std::pair<int64_t, int64_t>{4096, 4096}, {4096, 14336}, {14336, 4096}}) {
    Tensor x = random_gpu({tokens, in}, DType::BF16, 1), w = random_gpu({out, in}, DType::BF16, 2);
    Tensor dy = random_gpu({tokens, out}, DType::BF16, 3);
    Tensor y, dx;
    const double f = 2.0 * tokens * in * out;
    const std::string shape = std::to_string(tokens) + "x" + std::to_string(in) + "x" + std::to_string(out);
    report_flops("bf16 nt  y = x W^T        " + shape, time_ms([&] { ops::matmul_nt(x, w, y); }), f);
    report_flops("bf16 nn  dx = dy W        " + shape, time_ms([&] { ops::matmul_nn(dy, w, dx); }), f);
    Tensor dw = Tensor::empty({out, in}, DType::F32, kGpu);
    report_flops("bf16 tn  dW = dy^T x (f32 out) " + shape, time_ms([&] { ops::matmul_tn(dy, x, dw); }), f);
  }
  // LoRA: bf16 activations against f32 A [r, in] and B [out, r].
  const int64_t in = 4096, out = 4096, r = 16;
  Tensor x = random_gpu({tokens, in}, DType::BF16, 4), A = random_gpu({r, in}, DType::F32, 5);
  Tensor B = random_gpu({out, r}, DType::F32, 6), y = random_gpu({tokens, out}, DType::BF16, 7), h;
  const double bytes = 2.0 * tokens * (in + 2 * out) + 4.0 * r * (in + out);
  report_bytes("LoRA fwd: h = x A^T, y += s h B^T (r=16, mixed)", time_ms([&] {
                 ops::matmul_nt(x, A, h);
                 ops::matmul_nt(h, B, y, 2.0f, 1.0f);
               }),
               bytes);
}

void bench_attention(int64_t B, int64_t T, int64_t H, int64_t KV, int64_t hd, int64_t window,
                     cuda::AttentionPath path = cuda::AttentionPath::Auto) {
  cuda::set_attention_path(path);
  const char* tag = path == cuda::AttentionPath::Generic      ? " [generic]"
                    : path == cuda::AttentionPath::TensorCore ? " [tc]"
                    : path == cuda::AttentionPath::Cudnn      ? " [cudnn]"
                                                              : "";
  ops::AttentionShape s{B, T, H, KV, hd, window, 1.0f / std::sqrt(float(hd))};
  Tensor q = random_gpu({B * T, H * hd}, DType::BF16, 1), k = random_gpu({B * T, KV * hd}, DType::BF16, 2);
  Tensor v = random_gpu({B * T, KV * hd}, DType::BF16, 3), dout = random_gpu({B * T, H * hd}, DType::BF16, 4);
  Tensor lse, out;
  const double keys = window > 0 ? std::min<double>(window, (T + 1) / 2.0) : (T + 1) / 2.0;  // mean keys per row
  const double fwd = 4.0 * B * H * T * keys * hd;  // QK^T and PV
  char name[128];
  Tensor dq, dk, dv;
  if (path == cuda::AttentionPath::Cudnn) {  // the first call of a shape builds cuDNN's plans
    auto wall_ms = [](const std::function<void()>& fn) {
      const auto t0 = std::chrono::steady_clock::now();
      fn();
      cuda::synchronize(kGpu);
      return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    };
    const double f = wall_ms([&] { out = ops::attention(q, k, v, s, &lse); });
    const double b = wall_ms([&] { ops::attention_backward(dout, q, k, v, out, lse, s, dq, dk, dv); });
    std::printf("  (cuDNN plan build, first call of the shape: fwd %.0f ms, bwd %.0f ms)\n", f, b);
  }
  std::snprintf(name, sizeof name, "attention fwd B=%lld T=%lld H=%lld KV=%lld hd=%lld w=%lld%s", (long long)B,
                (long long)T, (long long)H, (long long)KV, (long long)hd, (long long)window, tag);
  report_flops(name, time_ms([&] { out = ops::attention(q, k, v, s, &lse); }, 2, 5), fwd);
  std::snprintf(name, sizeof name, "attention bwd (2.5x fwd FLOPs) T=%lld hd=%lld%s", (long long)T, (long long)hd, tag);
  report_flops(name, time_ms([&] { ops::attention_backward(dout, q, k, v, out, lse, s, dq, dk, dv); }, 2, 5),
               2.5 * fwd);
  cuda::set_attention_path(cuda::AttentionPath::Auto);
}

// What a new attention shape costs a server's prefill: cuDNN builds a plan for every new (B, T) on
// its first call, the tensor-core kernels need none. For each shape: the first cuDNN call (plan
// build + run, wall ms), then both paths' forward times. Serving prefills B prompts of T tokens.
void bench_attention_plans() {
  std::string why;
  if (!cuda::cudnn_attention_available(&why)) {
    std::printf("\n-- attention plans: cuDNN unavailable (%s)\n", why.c_str());
    return;
  }
  std::printf("\n-- attention: cuDNN plan build on a shape's first call vs the forward (bf16, causal)\n");
  struct Heads {
    const char* name;
    int64_t H, KV, hd;
  };
  for (const Heads& h : {Heads{"Qwen2.5-0.5B", 14, 2, 64}, Heads{"Llama-3-8B", 32, 8, 128}})
    for (auto [B, T] : std::initializer_list<std::pair<int64_t, int64_t>>{
             {1, 128}, {2, 128}, {3, 128}, {37, 128}, {63, 128}, {64, 128}, {1, 100}, {1, 129}, {1, 2048}, {1, 8192}}) {
      const ops::AttentionShape s{B, T, h.H, h.KV, h.hd, 0, 1.0f / std::sqrt(float(h.hd))};
      Tensor q = random_gpu({B * T, h.H * h.hd}, DType::BF16, 1), k = random_gpu({B * T, h.KV * h.hd}, DType::BF16, 2);
      Tensor v = random_gpu({B * T, h.KV * h.hd}, DType::BF16, 3), out;
      cuda::set_attention_path(cuda::AttentionPath::Cudnn);
      const auto t0 = std::chrono::steady_clock::now();
      out = ops::attention(q, k, v, s);
      cuda::synchronize(kGpu);
      const double first = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      const double cudnn = time_ms([&] { out = ops::attention(q, k, v, s); }, 2, 5);
      cuda::set_attention_path(cuda::AttentionPath::TensorCore);
      double tc = -1;  // -1: no tensor-core kernel for this shape
      try {
        tc = time_ms([&] { out = ops::attention(q, k, v, s); }, 2, 5);
      } catch (const std::exception&) {
      }
      cuda::set_attention_path(cuda::AttentionPath::Auto);
      std::printf("%-13s B=%-3lld T=%-5lld first cuDNN call %8.1f ms   cuDNN %.4f ms   tensor cores %.4f ms\n", h.name,
                  (long long)B, (long long)T, first, cudnn, tc);
    }
}

// Our tensor-core kernels against cuDNN's fused SDPA on the shapes that matter for training:
// Llama-3-8B-like heads at T = 2048 and Qwen2-0.5B's heads (14 query / 2 KV heads of 64).
void bench_attention_paths() {
  std::string why;
  const bool cudnn = cuda::cudnn_attention_available(&why);
  std::printf("\n-- attention: tensor cores vs cuDNN fused SDPA (bf16, causal; cuDNN %s)\n",
              cudnn ? std::to_string(cuda::cudnn_version()).c_str() : ("unavailable: " + why).c_str());
  struct Shape {
    int64_t B, T, H, KV, hd;
  };
  for (const Shape& c : {Shape{4, 2048, 32, 8, 128}, Shape{8, 1024, 14, 2, 64}, Shape{8, 1024, 32, 8, 64}}) {
    bench_attention(c.B, c.T, c.H, c.KV, c.hd, 0, cuda::AttentionPath::TensorCore);
    if (cudnn) bench_attention(c.B, c.T, c.H, c.KV, c.hd, 0, cuda::AttentionPath::Cudnn);
  }
}

void bench_fused(int64_t tokens, int64_t d, int64_t ffn, int64_t vocab) {
  std::printf("\n-- memory-bound kernels (tokens = %lld, d = %lld)\n", (long long)tokens, (long long)d);
  Tensor x = random_gpu({tokens, d}, DType::BF16, 1), w = random_gpu({d}, DType::BF16, 2), rstd;
  report_bytes("rmsnorm fwd bf16", time_ms([&] { ops::rmsnorm(x, w, 1e-6f, &rstd); }), 4.0 * tokens * d);
  Tensor dy = random_gpu({tokens, d}, DType::BF16, 3), dw = Tensor::zeros({d}, DType::F32, kGpu);
  ops::rmsnorm(x, w, 1e-6f, &rstd);
  report_bytes("rmsnorm bwd bf16 (+dw)", time_ms([&] { ops::rmsnorm_backward(dy, x, w, rstd, &dw); }),
               6.0 * tokens * d);
  Tensor g = random_gpu({tokens, ffn}, DType::BF16, 4), u = random_gpu({tokens, ffn}, DType::BF16, 5);
  report_bytes("swiglu fwd bf16", time_ms([&] { ops::swiglu(g, u); }), 6.0 * tokens * ffn);
  Tensor dg, du, dyf = random_gpu({tokens, ffn}, DType::BF16, 6);
  report_bytes("swiglu bwd bf16", time_ms([&] { ops::swiglu_backward(dyf, g, u, dg, du); }), 10.0 * tokens * ffn);
  Tensor y = random_gpu({tokens, d}, DType::BF16, 7);
  report_bytes("residual add_ bf16", time_ms([&] { ops::add_(y, x); }), 6.0 * tokens * d);
  const int64_t hd = 128, heads = d / hd;
  Tensor cos = random_gpu({8192, hd / 2}, DType::F32, 8), sin = random_gpu({8192, hd / 2}, DType::F32, 9);
  std::vector<int32_t> posv(tokens);
  for (int64_t i = 0; i < tokens; ++i) posv[i] = static_cast<int32_t>(i % 4096);
  Tensor pos = Tensor::empty({tokens}, DType::I32);
  std::memcpy(pos.raw(), posv.data(), tokens * 4);
  pos = pos.to(kGpu);
  report_bytes("rope_ bf16", time_ms([&] { ops::rope_(y, heads, pos, cos, sin); }), 4.0 * tokens * d);
  const int64_t chunk = 1024;
  Tensor logits = random_gpu({chunk, vocab}, DType::BF16, 10, 4.0f);
  Tensor tg = Tensor::empty({chunk}, DType::I32);
  for (int64_t i = 0; i < chunk; ++i) tg.data<int32_t>()[i] = static_cast<int32_t>((i * 7919) % vocab);
  tg = tg.to(kGpu);
  Tensor loss = Tensor::zeros({1}, DType::F64, kGpu);
  report_bytes("cross_entropy_chunk bf16 in place (1024 x vocab)",
               time_ms([&] { ops::cross_entropy_chunk(logits, tg, 1.0f, logits, loss); }), 2.0 * chunk * vocab * 2);
  const int64_t n = 40LL << 20;  // 40M LoRA parameters
  Tensor p = random_gpu({n}, DType::F32, 11), gr = random_gpu({n}, DType::F32, 12);
  Tensor m = Tensor::zeros({n}, DType::F32, kGpu), vv = Tensor::zeros({n}, DType::F32, kGpu);
  ops::AdamWScalars sc;
  sc.neg_step = -1e-4f;
  report_bytes("adamw_update_ 40M params", time_ms([&] { ops::adamw_update_(p, gr, m, vv, sc); }), 28.0 * n);
  Tensor acc = Tensor::zeros({1}, DType::F64, kGpu);
  report_bytes("sum_squares_ 40M", time_ms([&] { ops::sum_squares_(gr, acc); }), 4.0 * n);
  Tensor mask;
  report_bytes("dropout bf16 (tokens x d)", time_ms([&] { ops::dropout(x, 0.05, 1, 0, &mask); }), 5.0 * tokens * d);
}


// The frozen projections of one layer that read one input, as separate GEMMs (today's path for
// models with separate q/k/v and gate/up weights) against one GEMM over the row-stacked weights
// (what fusing them at load would run), forward and input-gradient, plus the column copies that
// split a fused output.
void bench_projection_fusion(int64_t tokens, const char* name, int64_t d, int64_t q, int64_t kv, int64_t inter) {
  std::printf("\n-- %s projections, separate vs stacked weights (tokens = %lld)\n", name, (long long)tokens);
  auto group = [&](const char* what, std::vector<int64_t> outs) {
    int64_t total = 0;
    for (int64_t o : outs) total += o;
    Tensor x = random_gpu({tokens, d}, DType::BF16, 1), w = random_gpu({total, d}, DType::BF16, 2);
    Tensor dy = random_gpu({tokens, total}, DType::BF16, 3);
    std::vector<Tensor> ws, ys(outs.size()), dys;
    int64_t row = 0;
    for (int64_t o : outs) {
      ws.push_back(w.slice_rows(row, row + o));
      dys.push_back(random_gpu({tokens, o}, DType::BF16, 4));
      row += o;
    }
    Tensor y, dx;
    const double f = 2.0 * tokens * d * total;
    report_flops(std::string(what) + " fwd, separate", time_ms([&] {
                   for (size_t i = 0; i < ws.size(); ++i) ops::matmul_nt(x, ws[i], ys[i]);
                 }),
                 f);
    report_flops(std::string(what) + " fwd, stacked", time_ms([&] { ops::matmul_nt(x, w, y); }), f);
    report_flops(std::string(what) + " input-grad, separate (beta=1)", time_ms([&] {
                   for (size_t i = 0; i < ws.size(); ++i) ops::matmul_nn(dys[i], ws[i], dx, 1.0f, i ? 1.0f : 0.0f);
                 }),
                 f);
    report_flops(std::string(what) + " input-grad, stacked", time_ms([&] { ops::matmul_nn(dy, w, dx); }), f);
    report_bytes(std::string(what) + " split the stacked output (copies)", time_ms([&] {
                   int64_t col = 0;
                   for (size_t i = 0; i < ws.size(); ++i) {
                     ops::copy_columns_(ys[i], 0, y, col, outs[i]);
                     col += outs[i];
                   }
                 }),
                 4.0 * tokens * total);
  };
  group("q,k,v", {q, kv, kv});
  group("gate,up", {inter, inter});
}

// LoRA members that read one input (q,k,v; gate,up; or one projection alone), rank r each, as the
// training step runs them today — the expand written first and the frozen GEMM adding x Wᵀ to it
// (beta = 1); backward g_i = s·dy_i B_i beside the input-grad GEMMs — against the K-extension:
// y_i = [x | h]·[W_i | s·B_i (zeros for the other members)]ᵀ in one GEMM of K = in + R, and
// dx_ext = Σ dy_i [W_i | s·B_i] whose last R columns are g. dx += g·A is in both (first today, after
// with the extension), as are the copies the extension needs unless the norm writes into x_ext
// and its backward reads dx_ext's first columns.
// `pad`: the group's R rounded up to a multiple of it (zero columns; K = in + R then fills whole
// K tiles when in does).
void bench_k_extension(int64_t tokens, const char* name, int64_t in, std::vector<int64_t> outs, int64_t r,
                       int64_t pad) {
  const int64_t members = static_cast<int64_t>(outs.size()), R = (r * members + pad - 1) / pad * pad;
  Tensor x = random_gpu({tokens, in}, DType::BF16, 1), x_ext = random_gpu({tokens, in + R}, DType::BF16, 2);
  Tensor h = random_gpu({tokens, R}, DType::BF16, 3), A = random_gpu({R, in}, DType::BF16, 4, 0.05f);
  Tensor g = Tensor::empty({tokens, R}, DType::BF16, kGpu), dx = Tensor::empty({tokens, in}, DType::BF16, kGpu);
  Tensor dx_ext = Tensor::empty({tokens, in + R}, DType::BF16, kGpu);
  std::vector<Tensor> W, W_ext, B, dy, y(outs.size());
  double flops = 0;
  for (int64_t i = 0; i < members; ++i) {
    W.push_back(random_gpu({outs[i], in}, DType::BF16, 10 + i, 0.05f));
    W_ext.push_back(random_gpu({outs[i], in + R}, DType::BF16, 20 + i, 0.05f));
    B.push_back(random_gpu({outs[i], r}, DType::BF16, 30 + i, 0.05f));
    dy.push_back(random_gpu({tokens, outs[i]}, DType::BF16, 40 + i));
    y[i] = Tensor::empty({tokens, outs[i]}, DType::BF16, kGpu);
    flops += 2.0 * tokens * in * outs[i];
  }
  std::string what = std::string(name);
  std::printf("\n-- %s: LoRA expand + g as today vs the K-extension (tokens = %lld, r = %lld, K = %lld + %lld; "
              "graph-replayed)\n",
              what.c_str(), (long long)tokens, (long long)r, (long long)in, (long long)R);
  report_flops(what + " fwd: expand, then GEMM beta=1", graph_ms([&] {
                 for (int64_t i = 0; i < members; ++i) {
                   ops::matmul_blocks(ops::Gemm::NT, {h, i * r, r}, ops::ColumnBlock::all(B[i]),
                                      ops::ColumnBlock::all(y[i]), 2.0f, 0.0f);
                   ops::matmul_nt(x, W[i], y[i], 1.0f, 1.0f);
                 }
               }),
               flops);
  report_flops(what + " fwd: GEMM alone (no LoRA)", graph_ms([&] {
                 for (int64_t i = 0; i < members; ++i) ops::matmul_nt(x, W[i], y[i]);
               }),
               flops);
  report_flops(what + " fwd: K-extended GEMM", graph_ms([&] {
                 for (int64_t i = 0; i < members; ++i) ops::matmul_nt(x_ext, W_ext[i], y[i]);
               }),
               flops);
  report_flops(what + " bwd: g_i, dx = g A, input-grad beta=1", graph_ms([&] {
                 for (int64_t i = 0; i < members; ++i)
                   ops::matmul_blocks(ops::Gemm::NN, ops::ColumnBlock::all(dy[i]), ops::ColumnBlock::all(B[i]),
                                      {g, i * r, r}, 2.0f, 0.0f);
                 ops::matmul_nn(g, A, dx);
                 for (int64_t i = 0; i < members; ++i) ops::matmul_nn(dy[i], W[i], dx, 1.0f, 1.0f);
               }),
               flops);
  report_flops(what + " bwd: input-grad alone (no LoRA)", graph_ms([&] {
                 for (int64_t i = 0; i < members; ++i) ops::matmul_nn(dy[i], W[i], dx, 1.0f, i ? 1.0f : 0.0f);
               }),
               flops);
  report_flops(what + " bwd: K-extended input-grad, dx += g A", graph_ms([&] {
                 for (int64_t i = 0; i < members; ++i)
                   ops::matmul_nn(dy[i], W_ext[i], dx_ext, 1.0f, i ? 1.0f : 0.0f);
                 ops::matmul_blocks(ops::Gemm::NN, {dx_ext, in, R}, ops::ColumnBlock::all(A), {dx_ext, 0, in}, 1.0f,
                                    1.0f);
               }),
               flops);
  report_bytes(what + " copy x into x_ext", graph_ms([&] { ops::copy_columns_(x_ext, 0, x, 0, in); }),
               4.0 * tokens * in);
  report_bytes(what + " copy dx out of dx_ext", graph_ms([&] { ops::copy_columns_(dx, 0, dx_ext, 0, in); }),
               4.0 * tokens * in);
}


// LoRA's input gradient of a projection that reads the residual stream's gradient (o, down), as a
// training step runs it today — g = s·dy B, dx = g A written first, the frozen input-grad GEMM
// adding dy W to it (beta = 1) — against the output-side K-extension: dy lives in the first `out`
// columns of dy_ext [N, out + R] (the norm's backward writes it there), g' = s·dy B goes into its
// last R columns, and one GEMM dx = dy_ext · [W; A] of K = out + R writes dx (beta = 0).
void bench_dx_extension(int64_t tokens, const char* name, int64_t in, int64_t out, int64_t r, int64_t R) {
  Tensor dy = random_gpu({tokens, out}, DType::BF16, 1), dy_ext = random_gpu({tokens, out + R}, DType::BF16, 2);
  Tensor W = random_gpu({out, in}, DType::BF16, 3, 0.05f), W_ext = random_gpu({out + R, in}, DType::BF16, 4, 0.05f);
  Tensor A = random_gpu({r, in}, DType::BF16, 5, 0.05f), B = random_gpu({out, r}, DType::BF16, 6, 0.05f);
  Tensor g = Tensor::empty({tokens, r}, DType::BF16, kGpu), dx = Tensor::empty({tokens, in}, DType::BF16, kGpu);
  const double flops = 2.0 * tokens * in * out;
  const std::string what = std::string(name) + " (R " + std::to_string(R) + ")";
  report_flops(what + " today: g, dx = s g A, dx += dy W", graph_ms([&] {
                 ops::matmul_nn(dy, B, g, 2.0f, 0.0f);
                 ops::matmul_nn(g, A, dx);
                 ops::matmul_nn(dy, W, dx, 1.0f, 1.0f);
               }),
               flops);
  report_flops(what + " input-grad alone (no LoRA)", graph_ms([&] { ops::matmul_nn(dy, W, dx); }), flops);
  report_flops(what + " extended: g' into dy_ext, dx = dy_ext [W; A]", graph_ms([&] {
                 ops::matmul_blocks(ops::Gemm::NN, {dy_ext, 0, out}, ops::ColumnBlock::all(B), {dy_ext, out, r}, 2.0f,
                                    0.0f);
                 ops::matmul_nn(dy_ext, W_ext, dx);
               }),
               flops);
}

// LoRA's shrink through its dropout: ops::dropout_shrink and its backward (fused for bf16 on
// CUDA) against the composition they replace (dropout, the GEMMs, dropout's backward), per call.
void bench_dropout_shrink(int64_t tokens, int64_t in, int64_t r) {
  Tensor x = random_gpu({tokens, in}, DType::BF16, 1), A = random_gpu({r, in}, DType::BF16, 2, 0.05f);
  Tensor g = random_gpu({tokens, r}, DType::BF16, 3), dA = Tensor::zeros({r, in}, DType::F32, kGpu);
  Tensor dx = random_gpu({tokens, in}, DType::BF16, 4), h;
  const ops::DropoutDraws d{0.05, 7, 4096, Tensor()};
  const double bytes = 2.0 * tokens * in;  // x once
  const std::string shape = "[" + std::to_string(tokens) + ", " + std::to_string(in) + "] r=" + std::to_string(r);
  report_bytes("fused    fwd  h = drop(x) A^T     " + shape, time_ms([&] { ops::dropout_shrink(x, d, A, h); }), bytes);
  report_bytes("composed fwd  dropout, GEMM       " + shape, time_ms([&] {
                 ops::matmul_nt(ops::dropout(x, d.p, d.seed, d.offset, nullptr), A, h);
               }),
               bytes);
  report_bytes("fused    bwd  dA, dx added        " + shape,
               time_ms([&] { ops::dropout_shrink_backward(x, d, g, A, dA, 0.5f, &dx, true); }), 3 * bytes);
  report_bytes("composed bwd  dA, dx added        " + shape, time_ms([&] {
                 Tensor mask, gx;
                 const Tensor x_drop = ops::dropout(x, d.p, d.seed, d.offset, &mask);
                 ops::matmul_tn(g, x_drop, dA, 0.5f, 1.0f);
                 ops::matmul_nn(g, A, gx, 0.5f, 0.0f);
                 ops::dropout_backward_add_(dx, gx, mask, d.p);
               }),
               3 * bytes);
  report_bytes("no dropout   dA, dx added (GEMMs) " + shape, time_ms([&] {
                 ops::matmul_tn(g, x, dA, 0.5f, 1.0f);
                 ops::matmul_nn(g, A, dx, 0.5f, 1.0f);
               }),
               3 * bytes);
}

// LoRA's six GEMMs of one projection at rank r, each timed alone: does a rank below 8 (rows of
// h and g under 16 bytes) cost more than r = 8?
void bench_lora_rank(int64_t tokens, int64_t in, int64_t out, int64_t r) {
  Tensor x = random_gpu({tokens, in}, DType::BF16, 1), A = random_gpu({r, in}, DType::BF16, 2, 0.05f);
  Tensor B = random_gpu({out, r}, DType::BF16, 3, 0.05f), dy = random_gpu({tokens, out}, DType::BF16, 4);
  Tensor y = random_gpu({tokens, out}, DType::BF16, 5), dx = random_gpu({tokens, in}, DType::BF16, 6);
  Tensor dA = Tensor::zeros({r, in}, DType::F32, kGpu), dB = Tensor::zeros({out, r}, DType::F32, kGpu), h, g;
  ops::matmul_nt(x, A, h);
  ops::matmul_nn(dy, B, g);
  const std::string shape = "[" + std::to_string(tokens) + "] " + std::to_string(in) + "->" + std::to_string(out) +
                            " r=" + std::to_string(r);
  const double ms[6] = {time_ms([&] { ops::matmul_nt(x, A, h); }),
                        time_ms([&] { ops::matmul_nt(h, B, y, 0.5f, 1.0f); }),
                        time_ms([&] { ops::matmul_tn(dy, h, dB, 0.5f, 1.0f); }),
                        time_ms([&] { ops::matmul_nn(dy, B, g); }),
                        time_ms([&] { ops::matmul_tn(g, x, dA, 0.5f, 1.0f); }),
                        time_ms([&] { ops::matmul_nn(g, A, dx, 0.5f, 1.0f); })};
  std::printf("%-28s shrink %.4f  expand %.4f  dB %.4f  g %.4f  dA %.4f  dx %.4f  sum %.4f ms\n", shape.c_str(),
              ms[0], ms[1], ms[2], ms[3], ms[4], ms[5], ms[0] + ms[1] + ms[2] + ms[3] + ms[4] + ms[5]);
}
}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const bool attention_only = argc > 1 && std::strcmp(argv[1], "--attention") == 0;
  const bool projections_only = argc > 1 && std::strcmp(argv[1], "--projections") == 0;
  const bool k_extension = argc > 1 && std::strcmp(argv[1], "--k-extension") == 0;
  const bool dropout_shrink = argc > 1 && std::strcmp(argv[1], "--dropout-shrink") == 0;
  const bool lora_ranks = argc > 1 && std::strcmp(argv[1], "--lora-ranks") == 0;
  const bool attention_plans = argc > 1 && std::strcmp(argv[1], "--attention-plans") == 0;
  const bool dx_extension = argc > 1 && std::strcmp(argv[1], "--dx-extension") == 0;
  if (cuda_device_count() == 0) {
    std::fprintf(stderr, "bench_cuda_ops: no CUDA GPU is visible\n");
    return 1;
  }
  std::printf("%s\n", cuda::device_description(kGpu));
  try {
    if (attention_plans) {
      bench_attention_plans();
      return 0;
    }
    if (dropout_shrink) {
      const int64_t r = argc > 2 ? std::atoll(argv[2]) : 16;
      std::printf("\n-- LoRA shrink through dropout p = 0.05 (GB/s: x once; backward x and dx twice)\n");
      for (int64_t in : {256, 768, 2048, 8192}) bench_dropout_shrink(8192, in, r);
      return 0;
    }
    if (lora_ranks) {
      std::printf("\n-- LoRA's GEMMs by rank (bf16, f32 dA/dB)\n");
      for (auto [in, out] : {std::pair<int64_t, int64_t>{768, 768}, {768, 2048}, {2048, 768}, {2048, 2048}})
        for (int64_t r : {1, 2, 4, 8, 12, 16}) bench_lora_rank(8192, in, out, r);
      return 0;
    }
    if (dx_extension) {
      const int64_t r = argc > 2 ? std::atoll(argv[2]) : 16;
      std::printf("\n-- o / down input gradient: LoRA's dx as today vs the output-side K-extension (r = %lld)\n",
                  (long long)r);
      struct Proj {
        const char* name;
        int64_t in, out;
      };
      for (const Proj& p : std::initializer_list<Proj>{{"base7m o", 256, 256},
                                                       {"base7m down", 704, 256},
                                                       {"base120m o", 768, 768},
                                                       {"base120m down", 2048, 768},
                                                       {"Qwen-0.5B o", 896, 896},
                                                       {"Qwen-0.5B down", 4864, 896},
                                                       {"Llama-1B o", 2048, 2048},
                                                       {"Llama-1B down", 8192, 2048},
                                                       {"Llama-8B o", 4096, 4096},
                                                       {"Llama-8B down", 14336, 4096}})
        for (int64_t R : {r, (r + 63) / 64 * 64}) bench_dx_extension(8192, p.name, p.in, p.out, r, R);
      return 0;
    }
    if (k_extension) {
      const int64_t r = argc > 2 ? std::atoll(argv[2]) : 16, pad = argc > 3 ? std::max(1LL, std::atoll(argv[3])) : 1;
      const int64_t tokens = 8192;
      struct Group {
        const char* name;
        int64_t in;
        std::vector<int64_t> outs;
      };
      for (const Group& g : std::initializer_list<Group>{
           {"base7m q,k,v", 256, {256, 256, 256}},
           {"base7m o", 256, {256}},
           {"base7m gate,up", 256, {704, 704}},
           {"base7m down", 704, {256}},
           {"base120m q,k,v", 768, {768, 768, 768}},
           {"base120m gate,up", 768, {2048, 2048}},
           {"base120m down", 2048, {768}},
           {"Llama-1B q,k,v", 2048, {2048, 512, 512}},
           {"Llama-1B o", 2048, {2048}},
           {"Llama-1B gate,up", 2048, {8192, 8192}},
           {"Llama-1B down", 8192, {2048}},
           {"Qwen-0.5B q,k,v", 896, {896, 128, 128}},
           {"Qwen-0.5B gate,up", 896, {4864, 4864}},
           {"Qwen-0.5B down", 4864, {896}},
           {"Llama-8B q,k,v", 4096, {4096, 1024, 1024}},
           {"Llama-8B gate,up", 4096, {14336, 14336}},
           {"Llama-8B down", 14336, {4096}},
           })
        bench_k_extension(tokens, g.name, g.in, g.outs, r, pad);
      return 0;
    }
    if (projections_only || !quick) {
      bench_projection_fusion(8192, "Qwen2.5-0.5B", 896, 896, 128, 4864);
      bench_projection_fusion(8192, "Llama-3.2-1B", 2048, 2048, 512, 8192);
      bench_projection_fusion(8192, "Llama-3-8B", 4096, 4096, 1024, 14336);
      if (projections_only) return 0;
    }
    if (attention_only) {
      bench_attention_paths();
      return 0;
    }
    bench_gemms(quick ? 2048 : 8192);
    std::printf("\n-- attention (bf16)\n");
    bench_attention(quick ? 1 : 4, 1024, 32, 8, 128, 0);
    bench_attention(quick ? 1 : 4, 1024, 32, 8, 128, 0, cuda::AttentionPath::Generic);
    if (!quick) {
      bench_attention(2, 2048, 32, 8, 128, 0);
      bench_attention(2, 4096, 32, 8, 128, 1024);
      bench_attention(4, 1024, 16, 16, 64, 0);
    }
    bench_attention_paths();
    bench_fused(quick ? 2048 : 8192, 4096, 14336, 128256);
    const cuda::AllocatorStats st = cuda::allocator_stats(kGpu);
    std::printf("\nallocator: %.2f GiB peak, %llu cudaMalloc calls, %llu reuses\n", st.peak_in_use / 1073741824.0,
                (unsigned long long)st.device_mallocs, (unsigned long long)st.reuses);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
#else
#include <cstdio>
int main() {
  std::fprintf(stderr, "bench_cuda_ops: this lowrank was built without the CUDA backend\n");
  return 1;
}
#endif
