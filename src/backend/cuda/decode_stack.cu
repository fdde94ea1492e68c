// One decode row through every layer of the model in one launch (ops::decode_stack): a persistent
// kernel of one block per SM. A one-stream decode step of a small model is a chain of ~270 short
// launches whose gaps and ramps, not the ~1 GB of weights, set its time (Qwen2.5-0.5B: ~41 µs a
// layer for 7.5 µs of weight bytes at the bandwidth limit). Here the layers run as phases of one
// kernel separated by grid-wide barriers, and the weights never wait for them: they do not depend
// on the activations, so one warp of every block streams the block's share of every phase's weight
// rows into a ring of shared-memory stages (cp.async.bulk, completion on an mbarrier) as far ahead
// as the ring allows, across phases and layers, while the other warps compute.
//
// A layer, with G blocks:
//   stage x      every block forms the layer's input x = x_mid + down(act) (+ LoRA) and xn = rmsnorm(x)
//   QKV          rows of [A_q; A_k; A_v; q; k; v] split over the blocks, dotted with xn: LoRA's
//                shrinks h, and q/k/v before their LoRA terms and RoPE             -> barrier
//   attention    one block per (KV head, key split): q's and the new k/v's LoRA terms and RoPE,
//                k and v into the paged pool, the split's online softmax          -> barrier
//   O            every block merges the splits; rows of [A_o; o] dotted with it   -> barrier
//   GU           x_mid = x + o(attn) (+ LoRA), xn = rmsnorm(x_mid); rows of [A_gate; A_up] and the
//                (gate, up) row pairs: SwiGLU in the epilogue, or, with LoRA on gate/up, after the
//                next barrier by the same block (ACT)                              -> barrier
//   DOWN         act staged; rows of [A_down; down]                               -> barrier
// The values are rounded where the fused ops (fused_decode.cu) and paged attention round them, and
// each dot sums in their order: on the same GPU the outputs equal the layer ops' bit for bit.
//
// Status (H200, one stream, docs/cuda.md "One launch for all layers"): exact, but slower than the
// fused launches per layer (Qwen2.5-0.5B 804 vs 914 tok/s, with an adapter 609 vs 622; Llama-3-8B
// 171 vs 204), so the model takes it only with LOWRANK_DECODE_STACK=1. Per 0.5B layer (LOWRANK_DECODE_STACK_TRACE=1) the
// phases take 4-18 µs each where their weights need 1-3: staging the inputs every block shares
// (y, a 28 KB B, the splits' partial outputs) ~5 µs, the attention blocks ~10 µs, each barrier
// ~1.2-2.8 µs. Runtime loops are not unrolled (`#pragma unroll 1`): the kernel's code is large.
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "common.cuh"
#include "online_softmax.cuh"
#include "backend/cuda/cuda_ops.h"

namespace lowrank::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kConsumerWarps = 7;  // warp 7 streams the weights
constexpr int kConsumers = kConsumerWarps * 32;
constexpr int kMaxStages = 6;
constexpr int64_t kMaxStageBytes = 32 * 1024;  // a (gate, up) row pair or a row of down must fit
constexpr int kMaxLayers = 48;  // the parameters live in the kernel's parameter space (32 KB)
constexpr int kMaxRank = 64;
constexpr int kTile = 32;            // attention keys per tile: one per lane
constexpr int kHeadsPerWarp = 3;     // query heads a warp carries (7 warps: up to 21 >= kMaxHeadsPerBlock)
constexpr int kMaxHeadsPerBlock = 16;
constexpr int kMaxChunks = 4;        // head_dim <= 128
constexpr int64_t kMaxSharedBytes = 227 * 1024;

enum Target { kQ, kK, kV, kO, kGate, kUp, kDown };

struct Lora {
  const bf16* a = nullptr;  // [r, K] (null: none)
  const bf16* b = nullptr;  // [n, r]
  float scale = 0.0f;
  int r = 0;
};

struct LayerParams {
  const void* attn_norm;
  const void* mlp_norm;
  bool norm_f32;
  const bf16 *q, *k, *v, *o, *gate, *up, *down;
  const bf16 *q_bias, *k_bias, *v_bias;
  Lora lora[7];
  const float *cos, *sin;  // [P, half]
  bf16 *k_pool, *v_pool;   // [pool rows, KV·hd]
  int window;              // 0: full causal (or a window past max_len)
  int splits, split_len;   // the attention's key splits
};

struct Params {
  int layers;
  int64_t d, I, qn, kvn;  // widths: model, MLP, H·hd, KV·hd
  int H, KV, hd, half, group, heads_per_block, head_chunks;
  int block_size, max_blocks, stages;
  int64_t stage_bytes;
  int64_t att_floats;  // the attention's shared memory (floats)
  unsigned long long* trace;  // LOWRANK_DECODE_STACK_TRACE: [barriers, G, 8] times (trace_mark), else null
  int max_splits;             // part_o's stride: the largest split count of any layer
  int64_t P;                  // RoPE table positions
  float eps, scale, softcap;
  const bf16* x_in;  // [d]
  bf16* x_out;       // [d]
  const int32_t *pos, *slot, *table, *len;
  // Scratch shared by the blocks (global): written in one phase, read after the next barrier.
  bf16 *q_pre, *k_pre, *v_pre;  // [qn], [kvn], [kvn]: products (+ bias), before LoRA and RoPE
  bf16 *y_o, *y_d;              // [d]: o's and down's products
  bf16 *g_pre, *u_pre, *act;    // [I]
  bf16* h;                      // [7, kMaxRank]: LoRA's shrinks
  float *part_o, *part_lse;     // [H, max splits, hd], [H, max splits]
  unsigned* counter;            // the grid barrier's arrivals (zeroed before the launch)
  LayerParams L[kMaxLayers];
};

// ---- shared memory: the weight ring's stages and their mbarriers

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
// The waiting thread is suspended (up to the hint, 10 ms, as CUTLASS waits) until the phase
// completes: a spinning warp would take issue slots from the warps that work.
__device__ __forceinline__ bool mbar_try_wait(uint64_t* bar, uint32_t parity) {
  uint32_t ok;
  asm volatile(
      "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2, %3;\n selp.u32 %0, 1, 0, p;\n}"
      : "=r"(ok)
      : "r"(smem_addr(bar)), "r"(parity), "r"(0x989680)
      : "memory");
  return ok != 0;
}
// A wait that never returns is a bug: trap after ~2 s instead of hanging the device.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  const long long t0 = clock64();
  while (!mbar_try_wait(bar, parity))
    if (clock64() - t0 > (1LL << 32)) __trap();
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void mbar_expect(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_addr(dst)),
               "l"(src), "r"(bytes), "r"(smem_addr(bar))
               : "memory");
}

// The consumer warps' own barrier (the streaming warp never joins it).
__device__ __forceinline__ void consumers_sync() { asm volatile("bar.sync 1, %0;" ::"n"(kConsumers) : "memory"); }

// LOWRANK_DECODE_STACK_TRACE: thread 0's time at point `slot` of the phase before barrier target / G
// (0 arrival, 1 departure, 2 inputs staged, 3 first chunk of weights there, 4 rows done).
__device__ __forceinline__ void trace_mark(const Params& p, unsigned target, int slot) {
  if (!p.trace || threadIdx.x != 0) return;
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  p.trace[(int64_t(target / gridDim.x) * gridDim.x + blockIdx.x) * 8 + slot] = t;
}

// All blocks' consumers: arrivals counted on one global counter; `target` grows by G each time.
__device__ void grid_barrier(const Params& p, unsigned& target) {
  consumers_sync();
  target += gridDim.x;
  if (threadIdx.x == 0) {
    trace_mark(p, target - gridDim.x, 0);
    __threadfence();
    atomicAdd(p.counter, 1u);
    const long long t0 = clock64();
    unsigned seen;
#pragma unroll 1
    for (;;) {
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(p.counter) : "memory");
      if (seen >= target) break;
      if (clock64() - t0 > (1LL << 32)) __trap();
      __nanosleep(64);  // the other warps of the SM keep its issue slots
    }
    __threadfence();
    trace_mark(p, target - gridDim.x, 1);
  }
  consumers_sync();
}

// v plus an output's LoRA term, rounded once: scale · (h · b) + v with b its row of B (as
// fused_decode.cu). h and b in shared memory (staged) or global memory.
__device__ __forceinline__ float with_lora(const Lora& u, const bf16* h, const bf16* b, float v) {
  if (!u.a) return v;
  float acc = 0.0f;
#pragma unroll 1
  for (int j = 0; j < u.r; ++j) acc = fmaf(__bfloat162float(h[j]), __bfloat162float(b[j]), acc);
  return round_bf16(u.scale * acc + v);
}

// ---- staging: small global inputs of a phase copied into shared memory with all their loads in
// flight at once (cp.async through L2: also what other blocks wrote before the last barrier), so
// that a phase waits for one memory latency, not one per element.

__device__ __forceinline__ void stage_async(void* dst, const void* src, int64_t bytes) {
  if (((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) & 15) == 0 && bytes % 16 == 0) {
#pragma unroll 1
    for (int64_t i = threadIdx.x * 16; i < bytes; i += kConsumers * 16)
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(static_cast<unsigned char*>(dst) + i)),
                   "l"(static_cast<const unsigned char*>(src) + i)
                   : "memory");
  } else {  // unaligned (odd LoRA ranks): 2-byte elements, one load each
#pragma unroll 1
    for (int64_t i = threadIdx.x * 2; i < bytes; i += kConsumers * 2)
      *reinterpret_cast<unsigned short*>(static_cast<unsigned char*>(dst) + i) =
          __ldcg(reinterpret_cast<const unsigned short*>(static_cast<const unsigned char*>(src) + i));
  }
}
// Every staged copy of this thread has landed; then the consumers meet (all copies visible).
__device__ __forceinline__ void staged_wait() {
  asm volatile("cp.async.wait_all;" ::: "memory");
  consumers_sync();
}

// ---- the row schedule: each phase's weight rows, split evenly over the blocks, streamed in chunks

enum Phase { kPhaseQKV, kPhaseO, kPhaseGU, kPhaseDown, kPhases };
enum Kind { kShrink, kRowQ, kRowK, kRowV, kRowO, kRowGU, kRowDown };

struct Seg {
  const bf16* m0;
  const bf16* m1;  // the paired row's matrix (gate, up), else null
  int64_t rows, k;
  int kind, target;
};

constexpr int kSegments = 6;  // the most a phase has (QKV: A_q, A_k, A_v, q, k, v)

// Segment i of a phase's weight rows (rows 0: none), by value: no array in local memory.
__device__ __forceinline__ Seg segment(const Params& p, const LayerParams& L, int phase, int i) {
  auto shrink = [&](int t, int64_t k) {
    return L.lora[t].a ? Seg{L.lora[t].a, nullptr, L.lora[t].r, k, kShrink, t} : Seg{nullptr, nullptr, 0, k, kShrink, t};
  };
  switch (phase * kSegments + i) {
    case kPhaseQKV * kSegments + 0: return shrink(kQ, p.d);
    case kPhaseQKV * kSegments + 1: return shrink(kK, p.d);
    case kPhaseQKV * kSegments + 2: return shrink(kV, p.d);
    case kPhaseQKV * kSegments + 3: return {L.q, nullptr, p.qn, p.d, kRowQ, kQ};
    case kPhaseQKV * kSegments + 4: return {L.k, nullptr, p.kvn, p.d, kRowK, kK};
    case kPhaseQKV * kSegments + 5: return {L.v, nullptr, p.kvn, p.d, kRowV, kV};
    case kPhaseO * kSegments + 0: return shrink(kO, p.qn);
    case kPhaseO * kSegments + 1: return {L.o, nullptr, p.d, p.qn, kRowO, kO};
    case kPhaseGU * kSegments + 0: return shrink(kGate, p.d);
    case kPhaseGU * kSegments + 1: return shrink(kUp, p.d);
    case kPhaseGU * kSegments + 2: return {L.gate, L.up, p.I, p.d, kRowGU, kGate};
    case kPhaseDown * kSegments + 0: return shrink(kDown, p.I);
    case kPhaseDown * kSegments + 1: return {L.down, nullptr, p.d, p.I, kRowDown, kDown};
    default: return {nullptr, nullptr, 0, 1, kShrink, 0};
  }
}

// The phase's rows in all: this block takes [total · b / G, total · (b + 1) / G).
__device__ __forceinline__ int64_t phase_rows(const Params& p, const LayerParams& L, int phase) {
  int64_t total = 0;
#pragma unroll 1
  for (int i = 0; i < kSegments; ++i) total += segment(p, L, phase, i).rows;
  return total;
}

// Calls f(seg, first row in seg, rows) for each chunk of this block's rows of the phase, in order.
template <class F>
__device__ __forceinline__ void for_chunks(const Params& p, const LayerParams& L, int phase, F&& f) {
  const int64_t total = phase_rows(p, L, phase);
  const int64_t lo = total * blockIdx.x / gridDim.x, hi = total * (blockIdx.x + 1) / gridDim.x;
  int64_t base = 0;
#pragma unroll 1
  for (int i = 0; i < kSegments; ++i) {
    const Seg s = segment(p, L, phase, i);
    const int64_t a = max(lo, base), b = min(hi, base + s.rows);
    if (a < b) {
      const int64_t row_bytes = s.k * 2 * (s.m1 ? 2 : 1);
      const int64_t per = row_bytes < p.stage_bytes ? p.stage_bytes / row_bytes : 1;
#pragma unroll 1
      for (int64_t r = a; r < b; r += per) f(s, r - base, min(per, b - r));
    }
    base += s.rows;
  }
}

// The streaming warp's lane 0: every chunk of every phase of every layer, into the ring in order.
__device__ void stream_weights(const Params& p, unsigned char* ring, uint64_t* full, uint64_t* empty) {
  uint32_t c = 0;
#pragma unroll 1
  for (int l = 0; l < p.layers; ++l)
#pragma unroll 1
    for (int phase = 0; phase < kPhases; ++phase)
      for_chunks(p, p.L[l], phase, [&](const Seg& s, int64_t r0, int64_t n) {
        const int st = c % p.stages;
        const uint32_t use = c / p.stages;
        if (use > 0) mbar_wait(&empty[st], (use - 1) & 1);
        const uint32_t bytes = static_cast<uint32_t>(n * s.k * 2);
        unsigned char* dst = ring + st * p.stage_bytes;
        mbar_expect(&full[st], s.m1 ? 2 * bytes : bytes);
        bulk_copy(dst, s.m0 + r0 * s.k, bytes, &full[st]);
        if (s.m1) bulk_copy(dst + bytes, s.m1 + r0 * s.k, bytes, &full[st]);
        ++c;
      });
}

constexpr int64_t kStagingBytes = 48 * 1024;

struct Shared {
  unsigned char* ring;  // [stages][stage_bytes]
  uint64_t* full;       // [stages]
  uint64_t* empty;      // [stages]
  bf16* xs;             // [max(d, qn, I)]: the phase's input row
  bf16* xres;           // [d]: the residual stream (x, then x_mid)
  bf16* hs;             // [7][kMaxRank]: LoRA's h of the targets the phase needs
  float* scratch;       // [32]
  float* att;           // attention: q [heads_per_block·hd], K tile [kTile][hd + 1], V tile [kTile][hd]
  long long* rows;      // [kTile] pool rows of the tile
  unsigned char* stg;   // [kStagingBytes]: staged inputs
};

__device__ __forceinline__ void stage_h(const Params& p, const Shared& sh, const LayerParams& L, int t) {
  if (L.lora[t].a) stage_async(sh.hs + t * kMaxRank, p.h + t * kMaxRank, L.lora[t].r * 2);
}

__host__ __device__ __forceinline__ int64_t align16(int64_t bytes) { return (bytes + 15) / 16 * 16; }

// Sum over the consumer threads (all of them must call it).
__device__ float consumers_sum(float v, float* scratch) {
  return warps_sum(v, scratch, kConsumerWarps, [] { consumers_sync(); });
}

// The residual stream's update, then its norm: xres = bf16(y + its LoRA term + xres) for every
// element (y: o's or down's product [d], written by all blocks before the last barrier; u and t its
// update and h slot; y null: none), then, with a norm weight w, xs = rmsnorm(xres) · w rounded as
// the fused kernels stage it. y, w, h and B's rows are staged first (B in slabs of rows that fit).
__device__ void residual_and_norm(const Params& p, const Shared& sh, const bf16* y, const Lora& u, int t,
                                  const void* w, bool w_f32) {
  const int64_t d = p.d;
  bf16* ys = reinterpret_cast<bf16*>(sh.stg);
  unsigned char* ws = sh.stg + align16(d * 2);
  const int64_t wbytes = w ? d * (w_f32 ? 4 : 2) : 0;
  bf16* bs = reinterpret_cast<bf16*>(ws + align16(wbytes));
  const int64_t room = kStagingBytes - (reinterpret_cast<unsigned char*>(bs) - sh.stg);
  if (y) stage_async(ys, y, d * 2);
  if (w) stage_async(ws, w, wbytes);
  const bool lora = y && u.a;
  if (lora) stage_async(sh.hs + t * kMaxRank, p.h + t * kMaxRank, u.r * 2);
  const bool stage_b = lora && room >= u.r * 2;
  const int64_t per = stage_b ? room / (u.r * 2) : d;
#pragma unroll 1
  for (int64_t i0 = 0; i0 < d; i0 += per) {
    const int64_t i1 = min(d, i0 + per);
    if (stage_b) stage_async(bs, u.b + i0 * u.r, (i1 - i0) * u.r * 2);
    staged_wait();
    if (y)
#pragma unroll 1
      for (int64_t i = i0 + threadIdx.x; i < i1; i += kConsumers) {
        const bf16* b = stage_b ? bs + (i - i0) * u.r : u.b + i * u.r;
        const float v = with_lora(u, sh.hs + t * kMaxRank, b, __bfloat162float(ys[i]));
        sh.xres[i] = __float2bfloat16_rn(v + __bfloat162float(sh.xres[i]));
      }
    consumers_sync();  // bs is refilled; xres complete
  }
  if (!w) return;
  float ss = 0.0f;
#pragma unroll 1
  for (int64_t i = threadIdx.x; i < d; i += kConsumers) {
    const float v = __bfloat162float(sh.xres[i]);
    ss += v * v;
  }
  const float rstd = rsqrtf(consumers_sum(ss, sh.scratch) / static_cast<float>(d) + p.eps);
#pragma unroll 1
  for (int64_t i = threadIdx.x; i < d; i += kConsumers) {
    const float wi = w_f32 ? reinterpret_cast<const float*>(ws)[i] : __bfloat162float(reinterpret_cast<const bf16*>(ws)[i]);
    sh.xs[i] = __float2bfloat16_rn(__bfloat162float(sh.xres[i]) * rstd * wi);
  }
  consumers_sync();
}

// A lane's part of the dots of staged row w0 (and w1) with x over `packs` 16-byte packs: every
// lane takes every 32nd pack, four at a time with their shared-memory loads issued together.
template <bool kPair>
__device__ __forceinline__ void dot_packs(const uint4* x, const uint4* w0, const uint4* w1, int64_t packs, int lane,
                                          float& a0, float& a1) {
  constexpr int kU = 4;
  int64_t v = lane;
#pragma unroll 1
  for (; v + 32 * (kU - 1) < packs; v += 32 * kU) {
    uint4 xu[kU], wu[kU], vu[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      xu[u] = x[v + 32 * u];
      wu[u] = w0[v + 32 * u];
      if (kPair) vu[u] = w1[v + 32 * u];
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      float fx[8], fw[8];
      unpack8(xu[u], fx);
      unpack8(wu[u], fw);
#pragma unroll
      for (int e = 0; e < 8; ++e) a0 = fmaf(fw[e], fx[e], a0);
      if (kPair) {
        unpack8(vu[u], fw);
#pragma unroll
        for (int e = 0; e < 8; ++e) a1 = fmaf(fw[e], fx[e], a1);
      }
    }
  }
#pragma unroll 1
  for (; v < packs; v += 32) {
    float fx[8], fw[8];
    unpack8(x[v], fx);
    unpack8(w0[v], fw);
#pragma unroll
    for (int e = 0; e < 8; ++e) a0 = fmaf(fw[e], fx[e], a0);
    if (kPair) {
      unpack8(w1[v], fw);
#pragma unroll
      for (int e = 0; e < 8; ++e) a1 = fmaf(fw[e], fx[e], a1);
    }
  }
}

// This block's rows of a phase: each consumer warp takes every 7th row, dots it (from its ring
// stage) with xs and runs the row's epilogue; a chunk's stage is released when every warp is past it.
__device__ void run_rows(const Params& p, const Shared& sh, const LayerParams& L, int phase, uint32_t& c, unsigned target) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const bool gu_lora = L.lora[kGate].a || L.lora[kUp].a;
  int64_t j = 0;  // the block's row count in this phase
  for_chunks(p, L, phase, [&](const Seg& s, int64_t r0, int64_t n) {
    const int st = c % p.stages;
    const uint32_t use = c / p.stages;
    const bf16* stage = reinterpret_cast<const bf16*>(sh.ring + st * p.stage_bytes);
    const int64_t packs = s.k / 8;
    // Every warp waits for the chunk, rows of its own or not: its release of the stage below must
    // not count towards the stage's previous use.
    mbar_wait(&sh.full[st], use & 1);
    if (j == 0) trace_mark(p, target, 3);
#pragma unroll 1
    for (int64_t i = 0; i < n; ++i, ++j) {
      if (j % kConsumerWarps != warp) continue;
      const uint4* w0 = reinterpret_cast<const uint4*>(stage + i * s.k);
      const uint4* w1 = reinterpret_cast<const uint4*>(stage + (n + i) * s.k);
      const uint4* xv = reinterpret_cast<const uint4*>(sh.xs);
      const bf16* bias = s.kind == kRowQ ? L.q_bias : s.kind == kRowK ? L.k_bias : s.kind == kRowV ? L.v_bias : nullptr;
      const float bias_v = bias && lane == 0 ? __bfloat162float(bias[r0 + i]) : 0.0f;  // loaded before the dot
      float a0 = 0.0f, a1 = 0.0f;
      if (s.m1) dot_packs<true>(xv, w0, w1, packs, lane, a0, a1);
      else dot_packs<false>(xv, w0, w1, packs, lane, a0, a1);
      a0 = warp_sum(a0);
      if (s.m1) a1 = warp_sum(a1);
      if (lane != 0) continue;
      const int64_t row = r0 + i;
      switch (s.kind) {
        case kShrink:
          __stcg(p.h + s.target * kMaxRank + row, __float2bfloat16_rn(a0));
          break;
        case kRowQ:
        case kRowK:
        case kRowV: {
          bf16* y = s.kind == kRowQ ? p.q_pre : s.kind == kRowK ? p.k_pre : p.v_pre;
          float v = round_bf16(a0);
          if (bias) v = round_bf16(v + bias_v);
          __stcg(y + row, __float2bfloat16_rn(v));
          break;
        }
        case kRowO:
          __stcg(p.y_o + row, __float2bfloat16_rn(a0));
          break;
        case kRowDown:
          __stcg(p.y_d + row, __float2bfloat16_rn(a0));
          break;
        default: {  // gate, up
          const float g = round_bf16(a0), u = round_bf16(a1);
          if (gu_lora) {
            __stcg(p.g_pre + row, __float2bfloat16_rn(g));
            __stcg(p.u_pre + row, __float2bfloat16_rn(u));
          } else {
            __stcg(p.act + row, __float2bfloat16_rn(g / (1.0f + expf(-g)) * u));
          }
        }
      }
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(&sh.empty[st]);
    ++c;
  });
  trace_mark(p, target, 4);
}

// ACT (LoRA on gate or up): SwiGLU of this block's (gate, up) rows with their LoRA terms.
__device__ void run_act(const Params& p, const Shared& sh, const LayerParams& L) {
  const int64_t total = phase_rows(p, L, kPhaseGU);
  const int64_t lo = total * blockIdx.x / gridDim.x, hi = total * (blockIdx.x + 1) / gridDim.x;
  const int64_t base = total - p.I;  // the pairs come last
  const int64_t r0 = max(lo, base) - base, rows = hi - base - r0;
  if (rows <= 0) return;
  const Lora &ug = L.lora[kGate], &uu = L.lora[kUp];
  bf16* gs = reinterpret_cast<bf16*>(sh.stg);
  bf16* us = gs + align16(rows * 2) / 2;
  bf16* bg = us + align16(rows * 2) / 2;
  bf16* bu = bg + align16(rows * ug.r * 2) / 2;
  const bool stage_b = (reinterpret_cast<unsigned char*>(bu) - sh.stg) + rows * uu.r * 2 <= kStagingBytes;
  stage_async(gs, p.g_pre + r0, rows * 2);
  stage_async(us, p.u_pre + r0, rows * 2);
  stage_h(p, sh, L, kGate);
  stage_h(p, sh, L, kUp);
  if (stage_b && ug.a) stage_async(bg, ug.b + r0 * ug.r, rows * ug.r * 2);
  if (stage_b && uu.a) stage_async(bu, uu.b + r0 * uu.r, rows * uu.r * 2);
  staged_wait();
#pragma unroll 1
  for (int64_t i = threadIdx.x; i < rows; i += kConsumers) {
    const int64_t row = r0 + i;
    const float g = with_lora(ug, sh.hs + kGate * kMaxRank, stage_b ? bg + i * ug.r : ug.b + row * ug.r,
                              __bfloat162float(gs[i]));
    const float u = with_lora(uu, sh.hs + kUp * kMaxRank, stage_b ? bu + i * uu.r : uu.b + row * uu.r,
                              __bfloat162float(us[i]));
    __stcg(p.act + row, __float2bfloat16_rn(g / (1.0f + expf(-g)) * u));
  }
}

// RoPE of the pair (a, b) = rows (i, i + half) of a head with the row's cos/sin (rope_'s
// rotation; null tables: a position outside them, not rotated).
__device__ __forceinline__ void rotate(const float* cs, const float* sn, int i, float& a, float& b) {
  if (!cs) return;
  const float ra = a * cs[i] - b * sn[i], rb = b * cs[i] + a * sn[i];
  a = ra;
  b = rb;
}

// 16-byte loads of K (and of V) a thread issues per tile of kTile keys of head_dim <= 32 · kMaxChunks.
constexpr int kMaxTileLoads = (kTile * 32 * kMaxChunks / 8 + kConsumers - 1) / kConsumers;

// One (KV head, chunk of its query heads, key split) of the paged decode attention (as
// paged_decode_kernel in paged_attention.cu), its q (and the new k, v) finished here first: their
// products, LoRA terms and RoPE tables staged together.
__device__ void run_attention(const Params& p, const Shared& sh, const LayerParams& L, int a, int pos, int len,
                              int slot, unsigned target) {
  const int hd = p.hd, ldk = hd + 1, half = p.half;
  const int warp = threadIdx.x >> 5;
  const int split = a % L.splits, kvh = a / L.splits / p.head_chunks, chunk = a / L.splits % p.head_chunks;
  const int h0 = kvh * p.group + chunk * p.heads_per_block;
  const int heads = min(p.heads_per_block, p.group - chunk * p.heads_per_block);
  const int begin = L.window > 0 ? max(0, len - 1 - L.window + 1) : 0;
  const int k0 = begin + split * L.split_len, k1 = min(len, k0 + L.split_len);
  const bool new_key = k0 <= len - 1 && len - 1 < k1 && slot >= 0;  // this split sees it: writes it first
  float* q_s = sh.att;                          // [heads][hd], scale folded in
  float* k_s = q_s + p.heads_per_block * hd;    // [kTile][hd + 1]
  float* v_s = k_s + kTile * ldk;               // [kTile][hd]
  const Lora &uq = L.lora[kQ], &uk = L.lora[kK], &uv = L.lora[kV];
  const int64_t q0 = int64_t(h0) * hd, nq = int64_t(heads) * hd, kv0 = int64_t(kvh) * hd;
  // Staged: q's rows of the block's heads, k's and v's of its KV head, the RoPE row, B's rows.
  unsigned char* at = sh.stg;
  auto take = [&](int64_t bytes) {
    unsigned char* r = at;
    at += align16(bytes);
    return r;
  };
  bf16* qp = reinterpret_cast<bf16*>(take(nq * 2));
  bf16* kp = reinterpret_cast<bf16*>(take(hd * 2));
  bf16* vp = reinterpret_cast<bf16*>(take(hd * 2));
  const bool rotated = pos >= 0 && pos < p.P;
  float* cs = rotated ? reinterpret_cast<float*>(take(half * 4)) : nullptr;
  float* sn = rotated ? reinterpret_cast<float*>(take(half * 4)) : nullptr;
  const int64_t fixed = at - sh.stg;
  const bool stage_b = fixed + align16(nq * uq.r * 2) + align16(hd * uk.r * 2) + align16(hd * uv.r * 2) <= kStagingBytes;
  const bf16* bq = uq.b + q0 * uq.r;
  const bf16* bk = uk.b + kv0 * uk.r;
  const bf16* bv = uv.b + kv0 * uv.r;
  stage_async(qp, p.q_pre + q0, nq * 2);
  stage_h(p, sh, L, kQ);
  if (new_key) {
    stage_async(kp, p.k_pre + kv0, hd * 2);
    stage_async(vp, p.v_pre + kv0, hd * 2);
    stage_h(p, sh, L, kK);
    stage_h(p, sh, L, kV);
  }
  if (rotated) {
    stage_async(cs, L.cos + int64_t(pos) * half, half * 4);
    stage_async(sn, L.sin + int64_t(pos) * half, half * 4);
  }
  if (stage_b) {
    bf16* sq = reinterpret_cast<bf16*>(take(nq * uq.r * 2));
    bf16* sk = reinterpret_cast<bf16*>(take(hd * uk.r * 2));
    bf16* sv = reinterpret_cast<bf16*>(take(hd * uv.r * 2));
    if (uq.a) stage_async(sq, bq, nq * uq.r * 2);
    if (new_key && uk.a) stage_async(sk, bk, hd * uk.r * 2);
    if (new_key && uv.a) stage_async(sv, bv, hd * uv.r * 2);
    bq = sq, bk = sk, bv = sv;
  }
  staged_wait();
  trace_mark(p, target, 2);
#pragma unroll 1
  for (int e = threadIdx.x; e < heads * half; e += kConsumers) {
    const int hh = e / half, i = e % half;
    const int64_t ra = int64_t(hh) * hd + i, rb = ra + half;  // within the block's heads
    float va = with_lora(uq, sh.hs + kQ * kMaxRank, bq + ra * uq.r, __bfloat162float(qp[ra]));
    float vb = with_lora(uq, sh.hs + kQ * kMaxRank, bq + rb * uq.r, __bfloat162float(qp[rb]));
    rotate(cs, sn, i, va, vb);
    q_s[hh * hd + i] = round_bf16(va) * p.scale;
    q_s[hh * hd + i + half] = round_bf16(vb) * p.scale;
  }
  if (new_key) {
    const int64_t row = int64_t(slot) * p.kvn + kv0;
#pragma unroll 1
    for (int e = threadIdx.x; e < half; e += kConsumers) {
      float ka = with_lora(uk, sh.hs + kK * kMaxRank, bk + int64_t(e) * uk.r, __bfloat162float(kp[e]));
      float kb = with_lora(uk, sh.hs + kK * kMaxRank, bk + int64_t(e + half) * uk.r, __bfloat162float(kp[e + half]));
      rotate(cs, sn, e, ka, kb);
      __stcg(L.k_pool + row + e, __float2bfloat16_rn(ka));
      __stcg(L.k_pool + row + e + half, __float2bfloat16_rn(kb));
    }
#pragma unroll 1
    for (int e = threadIdx.x; e < hd; e += kConsumers)
      __stcg(L.v_pool + row + e,
             __float2bfloat16_rn(with_lora(uv, sh.hs + kV * kMaxRank, bv + int64_t(e) * uv.r, __bfloat162float(vp[e]))));
  }
  WarpHeads<kHeadsPerWarp, kMaxChunks> st;
  const int per_row = hd / 8;
#pragma unroll 1
  for (int t0 = k0; t0 < k1; t0 += kTile) {
    const int n = min(kTile, k1 - t0);
    consumers_sync();  // the previous tile is used up (the first time: q_s and the new key written)
    if (threadIdx.x < kTile) {
      const int j = t0 + threadIdx.x;
      sh.rows[threadIdx.x] = threadIdx.x < n ? int64_t(p.table[j / p.block_size]) * p.block_size + j % p.block_size : -1;
    }
    consumers_sync();
    uint4 kq[kMaxTileLoads], vq[kMaxTileLoads];  // every load of the tile issued before any is used
#pragma unroll
    for (int u = 0; u < kMaxTileLoads; ++u) {
      const int e = threadIdx.x + u * kConsumers;
      kq[u] = vq[u] = uint4{0, 0, 0, 0};
      if (e >= kTile * per_row) continue;
      const int r = e / per_row, c = (e - r * per_row) * 8;
      const long long row = sh.rows[r];
      if (row < 0) continue;
      const int64_t off = row * p.kvn + kv0 + c;
      kq[u] = __ldcg(reinterpret_cast<const uint4*>(L.k_pool + off));
      vq[u] = __ldcg(reinterpret_cast<const uint4*>(L.v_pool + off));
    }
#pragma unroll
    for (int u = 0; u < kMaxTileLoads; ++u) {
      const int e = threadIdx.x + u * kConsumers;
      if (e >= kTile * per_row) continue;
      const int r = e / per_row, c = (e - r * per_row) * 8;
      float kf[8], vf[8];
      unpack8(kq[u], kf);
      unpack8(vq[u], vf);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        k_s[r * ldk + c + i] = kf[i];
        v_s[r * hd + c + i] = vf[i];
      }
    }
    consumers_sync();
    st.fold(q_s, hd, warp, kConsumerWarps, heads, k_s, ldk, v_s, n, p.softcap);
  }
  auto split_slot = [&](int hl) { return int64_t(h0 + hl) * p.max_splits + split; };  // the head's split slot
  st.write(hd, warp, kConsumerWarps, heads, [&](int hl, int c, float v) { __stcg(p.part_o + split_slot(hl) * hd + c, v); },
           [&](int hl, float lse) { __stcg(p.part_lse + split_slot(hl), lse); });
}

// xs = the attention output: every block merges the splits (as paged_combine_kernel): each head's
// split weights e^{lse_s - max} formed once, the partial outputs staged in slabs of heads.
__device__ void stage_attention(const Params& p, const Shared& sh, const LayerParams& L) {
  const int ms = p.max_splits, ns = L.splits, hd = p.hd;
  float* wt = reinterpret_cast<float*>(sh.stg);  // [H][ms]
  float* po = wt + align16(int64_t(p.H) * ms * 4) / 4;
  const int64_t head_bytes = int64_t(ns) * hd * 4;
  const int per = static_cast<int>((kStagingBytes - align16(int64_t(p.H) * ms * 4)) / head_bytes);  // >= 1 (host)
  stage_async(wt, p.part_lse, int64_t(p.H) * ms * 4);
#pragma unroll 1
  for (int h = 0; h < min(per, p.H); ++h) stage_async(po + int64_t(h) * ns * hd, p.part_o + int64_t(h) * ms * hd, head_bytes);
  staged_wait();
#pragma unroll 1
  for (int h = threadIdx.x; h < p.H; h += kConsumers) {
    float mx = -INFINITY;
#pragma unroll 1
    for (int i = 0; i < ns; ++i) mx = fmaxf(mx, wt[h * ms + i]);  // finite: split 0 has keys
#pragma unroll 1
    for (int i = 0; i < ns; ++i) wt[h * ms + i] = expf(wt[h * ms + i] - mx);  // 0 for empty splits
  }
  consumers_sync();
#pragma unroll 1
  for (int h0 = 0; h0 < p.H; h0 += per) {
    const int h1 = min(p.H, h0 + per);
    if (h0 > 0) {
#pragma unroll 1
      for (int h = h0; h < h1; ++h)
        stage_async(po + int64_t(h - h0) * ns * hd, p.part_o + int64_t(h) * ms * hd, head_bytes);
      staged_wait();
    }
#pragma unroll 1
    for (int64_t e = threadIdx.x; e < int64_t(h1 - h0) * hd; e += kConsumers) {
      const int64_t hh = e / hd, dd = e % hd;
      float num = 0.0f, den = 0.0f;
#pragma unroll 1
      for (int i = 0; i < ns; ++i) {
        const float w = wt[(h0 + hh) * ms + i];
        num += w * po[(hh * ns + i) * hd + dd];
        den += w;
      }
      sh.xs[h0 * hd + e] = __float2bfloat16_rn(num / den);
    }
    consumers_sync();  // po is refilled
  }
}

// Shared memory, in bytes from the start (host and device agree on it).
struct SmemLayout {
  int64_t full, hs, scratch, rows, xres, xs, att, stg, total;
};
__host__ __device__ inline SmemLayout smem_layout(int64_t d, int64_t widest, int64_t att_floats, int stages,
                                                  int64_t stage_bytes) {
  auto a16 = [](int64_t b) { return (b + 15) / 16 * 16; };
  SmemLayout l;
  l.full = stages * stage_bytes;  // then empty: kMaxStages mbarriers each
  l.hs = l.full + 2 * kMaxStages * 8;
  l.scratch = l.hs + a16(7 * kMaxRank * 2);
  l.rows = l.scratch + 32 * 4;
  l.xres = l.rows + kTile * 8;
  l.xs = l.xres + a16(d * 2);
  l.att = l.xs + a16(widest * 2);
  l.stg = l.att + a16(att_floats * 4);
  l.total = l.stg + kStagingBytes;
  return l;
}

__global__ void __launch_bounds__(kThreads, 1) decode_stack_kernel(const __grid_constant__ Params p) {
  extern __shared__ __align__(128) unsigned char smem[];
  const SmemLayout lay = smem_layout(p.d, max(p.d, max(p.qn, p.I)), p.att_floats, p.stages, p.stage_bytes);
  Shared sh;
  sh.ring = smem;
  sh.full = reinterpret_cast<uint64_t*>(smem + lay.full);
  sh.empty = sh.full + kMaxStages;
  sh.hs = reinterpret_cast<bf16*>(smem + lay.hs);
  sh.scratch = reinterpret_cast<float*>(smem + lay.scratch);
  sh.rows = reinterpret_cast<long long*>(smem + lay.rows);
  sh.xres = reinterpret_cast<bf16*>(smem + lay.xres);
  sh.xs = reinterpret_cast<bf16*>(smem + lay.xs);
  sh.att = reinterpret_cast<float*>(smem + lay.att);
  sh.stg = smem + lay.stg;
  const int warp = threadIdx.x >> 5;
  if (threadIdx.x == 0) {
#pragma unroll 1
    for (int s = 0; s < p.stages; ++s) {
      mbar_init(&sh.full[s], 1);
      mbar_init(&sh.empty[s], kConsumerWarps);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (warp == kConsumerWarps) {
    if ((threadIdx.x & 31) == 0) stream_weights(p, sh.ring, sh.full, sh.empty);
    return;
  }
  const int pos = *p.pos, len = *p.len, slot = *p.slot;
  unsigned target = 0;
  uint32_t c = 0;  // chunks consumed
#pragma unroll 1
  for (int64_t i = threadIdx.x; i < p.d; i += kConsumers) sh.xres[i] = p.x_in[i];
  const Lora none{};
#pragma unroll 1
  for (int li = 0;; ++li) {
    // x = x_mid + down(act) (+ LoRA), rounded as linear_residual rounds it; then the attention's norm
    const Lora& down = li > 0 ? p.L[li - 1].lora[kDown] : none;
    const bf16* y_d = li > 0 ? p.y_d : nullptr;
    if (li == p.layers) {
      residual_and_norm(p, sh, y_d, down, kDown, nullptr, false);
      break;
    }
    const LayerParams& L = p.L[li];
    residual_and_norm(p, sh, y_d, down, kDown, L.attn_norm, L.norm_f32);
    trace_mark(p, target, 2);
    run_rows(p, sh, L, kPhaseQKV, c, target);
    grid_barrier(p, target);
    if (blockIdx.x < p.KV * p.head_chunks * L.splits) {
      run_attention(p, sh, L, blockIdx.x, pos, len, slot, target);
      trace_mark(p, target, 4);
    }
    grid_barrier(p, target);
    stage_attention(p, sh, L);
    trace_mark(p, target, 2);
    run_rows(p, sh, L, kPhaseO, c, target);
    grid_barrier(p, target);
    residual_and_norm(p, sh, p.y_o, L.lora[kO], kO, L.mlp_norm, L.norm_f32);  // x_mid, then its norm
    trace_mark(p, target, 2);
    run_rows(p, sh, L, kPhaseGU, c, target);
    grid_barrier(p, target);
    if (L.lora[kGate].a || L.lora[kUp].a) {
      run_act(p, sh, L);
      trace_mark(p, target, 4);
      grid_barrier(p, target);
    }
    stage_async(sh.xs, p.act, p.I * 2);
    staged_wait();
    trace_mark(p, target, 2);
    run_rows(p, sh, L, kPhaseDown, c, target);
    grid_barrier(p, target);
  }
  if (blockIdx.x == 0)
#pragma unroll 1
    for (int64_t i = threadIdx.x; i < p.d; i += kConsumers) p.x_out[i] = sh.xres[i];
}

bool bf16_matrix(const Tensor& t, int64_t rows, int64_t cols, Device d) {
  return t.defined() && t.dtype() == DType::BF16 && t.rank() == 2 && t.dim(0) == rows && t.dim(1) == cols &&
         t.device() == d && aligned16(t.raw());
}

bool optional_bias(const Tensor& b, int64_t n, Device d) {
  return !b.defined() || (b.dtype() == DType::BF16 && b.numel() == n && b.device() == d);
}

bool lora_fits(const LowRankUpdate& u, int64_t n, int64_t k, Device d) {
  if (!u.A.defined()) return true;
  const int64_t r = u.A.dim(0);
  return r >= 1 && r <= kMaxRank && bf16_matrix(u.A, r, k, d) && u.B.dtype() == DType::BF16 && u.B.rank() == 2 &&
         u.B.dim(0) == n && u.B.dim(1) == r && u.B.device() == d;
}

Lora lora_of(const LowRankUpdate& u) {
  if (!u.A.defined()) return {};
  return {u.A.data<bf16>(), u.B.data<bf16>(), u.scale, static_cast<int>(u.A.dim(0))};
}

const bf16* bf16_or_null(const Tensor& t) { return t.defined() ? t.data<bf16>() : nullptr; }

// The trace, per kind of phase averaged over the layers (µs): the slowest block's phase (from the
// previous barrier's last departure to its arrival), the barrier's latency (last arrival to last
// departure), and the mean block's parts from its own departure: staging its inputs, waiting for
// its first chunk of weights, its rows, and the rest until it arrives.
void print_trace(const Tensor& buf, const std::vector<std::string>& labels, int blocks, cudaStream_t st) {
  LR_CUDA(cudaStreamSynchronize(st));
  const Tensor h = buf.to(Device::cpu());
  const auto* t = reinterpret_cast<const unsigned long long*>(h.raw());
  std::map<std::string, std::array<double, 8>> sum;  // slowest, barrier, staging, wait, rows, rest, count
  unsigned long long prev = 0;
  auto at = [&](size_t k, int b, int s) { return double(t[(k * blocks + b) * 8 + s]); };
  for (size_t k = 0; k < labels.size(); ++k) {
    double max_arrive = 0, max_leave = 0;
    for (int b = 0; b < blocks; ++b) {
      max_arrive = std::max(max_arrive, at(k, b, 0));
      max_leave = std::max(max_leave, at(k, b, 1));
    }
    if (k > 0) {
      auto& s = sum[labels[k]];
      s[0] += (max_arrive - prev) * 1e-3;
      s[1] += (max_leave - max_arrive) * 1e-3;
      double parts[4] = {0, 0, 0, 0};
      int n = 0;
      for (int b = 0; b < blocks; ++b) {
        const double start = at(k - 1, b, 1), staged = at(k, b, 2), first = at(k, b, 3), done = at(k, b, 4);
        if (staged == 0) continue;  // a block without this phase's work (attention)
        ++n;
        parts[0] += staged - start;
        parts[1] += first > 0 ? first - staged : 0;
        parts[2] += first > 0 && done > 0 ? done - first : 0;
        parts[3] += at(k, b, 0) - (done > 0 ? done : staged);
      }
      for (int i = 0; i < 4; ++i) s[2 + i] += n ? parts[i] / n * 1e-3 : 0;
      s[6] += 1;
    }
    prev = static_cast<unsigned long long>(max_leave);
  }
  std::fprintf(stderr, "decode_stack trace (µs a layer): phase (slowest) / barrier / mean block: staging, weights, rows, rest\n");
  for (const auto& [name, s] : sum)
    std::fprintf(stderr, "  %-10s %7.2f %7.2f | %7.2f %7.2f %7.2f %7.2f\n", name.c_str(), s[0] / s[6], s[1] / s[6],
                 s[2] / s[6], s[3] / s[6], s[4] / s[6], s[5] / s[6]);
}

}  // namespace

Tensor decode_stack(const Tensor& x, const std::vector<DecodeLayer>& layers, const DecodeRow& row) {
  const Device dev = x.device();
  if (x.dtype() != DType::BF16 || x.rank() != 2 || x.dim(0) != 1 || !aligned16(x.raw()) ||
      layers.size() > static_cast<size_t>(kMaxLayers))
    return Tensor();
  const int64_t d = x.dim(1), H = row.heads, KV = row.kv_heads, hd = row.head_dim;
  const int64_t qn = H * hd, kvn = KV * hd, I = layers[0].gate.defined() ? layers[0].gate.dim(0) : 0;
  if (d % 8 != 0 || I % 8 != 0 || hd % 8 != 0 || hd > 32 * kMaxChunks || KV <= 0 || H % KV != 0 || I <= 0 ||
      std::max(d, std::max(qn, I)) * 2 > kMaxStageBytes || 4 * d > kMaxStageBytes)
    return Tensor();
  const bool row_ok = row.pos.dtype() == DType::I32 && row.pos.numel() == 1 && row.slot.dtype() == DType::I32 &&
                      row.slot.numel() == 1 && row.len.dtype() == DType::I32 && row.len.numel() == 1 &&
                      row.table.dtype() == DType::I32 && row.table.rank() == 2 && row.table.dim(0) == 1 &&
                      row.block_size > 0 && row.max_len >= 1 && row.max_len <= row.table.dim(1) * row.block_size;
  if (!row_ok) return Tensor();

  Params p{};
  p.layers = static_cast<int>(layers.size());
  p.d = d;
  p.I = I;
  p.qn = qn;
  p.kvn = kvn;
  p.H = int(H);
  p.KV = int(KV);
  p.hd = int(hd);
  p.half = int(hd / 2);
  p.group = int(H / KV);
  p.heads_per_block = std::min(p.group, kMaxHeadsPerBlock);
  p.head_chunks = (p.group + p.heads_per_block - 1) / p.heads_per_block;
  p.block_size = int(row.block_size);
  p.max_blocks = int(row.table.dim(1));
  p.eps = row.eps;
  p.scale = row.scale;
  p.softcap = row.softcap;
  const int sms = multiprocessor_count(dev);
  if (p.KV * p.head_chunks > sms) return Tensor();
  int max_splits = 1;
  for (size_t li = 0; li < layers.size(); ++li) {
    const DecodeLayer& L = layers[li];
    const bool norm_f32 = L.attn_norm.dtype() == DType::F32;
    const auto norm_ok = [&](const Tensor& w) {
      return w.defined() && w.numel() == d && w.device() == dev && (w.dtype() == DType::F32 || w.dtype() == DType::BF16) &&
             (w.dtype() == DType::F32) == norm_f32;
    };
    if (!norm_ok(L.attn_norm) || !norm_ok(L.mlp_norm) || !bf16_matrix(L.q, qn, d, dev) || !bf16_matrix(L.k, kvn, d, dev) ||
        !bf16_matrix(L.v, kvn, d, dev) || !bf16_matrix(L.o, d, qn, dev) || !bf16_matrix(L.gate, I, d, dev) ||
        !bf16_matrix(L.up, I, d, dev) || !bf16_matrix(L.down, d, I, dev) || !optional_bias(L.q_bias, qn, dev) ||
        !optional_bias(L.k_bias, kvn, dev) || !optional_bias(L.v_bias, kvn, dev))
      return Tensor();
    const int64_t ns[7] = {qn, kvn, kvn, d, I, I, d}, ks[7] = {d, d, d, qn, d, d, I};
    for (int t = 0; t < 7; ++t)
      if (!lora_fits(L.lora[t], ns[t], ks[t], dev)) return Tensor();
    if (L.cos.dtype() != DType::F32 || L.cos.rank() != 2 || L.cos.dim(1) * 2 != hd || L.sin.shape() != L.cos.shape() ||
        L.sin.dtype() != DType::F32 || L.cos.device() != dev || L.sin.device() != dev)
      return Tensor();
    if (li > 0 && L.cos.dim(0) != layers[0].cos.dim(0)) return Tensor();
    if (!bf16_matrix(L.k_pool, L.k_pool.defined() ? L.k_pool.dim(0) : 0, kvn, dev) ||
        L.v_pool.shape() != L.k_pool.shape() || L.v_pool.dtype() != DType::BF16 || L.v_pool.device() != dev)
      return Tensor();
    LayerParams& P = p.L[li];
    P.attn_norm = L.attn_norm.raw();
    P.mlp_norm = L.mlp_norm.raw();
    P.norm_f32 = norm_f32;
    P.q = L.q.data<bf16>();
    P.k = L.k.data<bf16>();
    P.v = L.v.data<bf16>();
    P.o = L.o.data<bf16>();
    P.gate = L.gate.data<bf16>();
    P.up = L.up.data<bf16>();
    P.down = L.down.data<bf16>();
    P.q_bias = bf16_or_null(L.q_bias);
    P.k_bias = bf16_or_null(L.k_bias);
    P.v_bias = bf16_or_null(L.v_bias);
    for (int t = 0; t < 7; ++t) P.lora[t] = lora_of(L.lora[t]);
    P.cos = L.cos.data<float>();
    P.sin = L.sin.data<float>();
    P.k_pool = const_cast<bf16*>(L.k_pool.data<bf16>());
    P.v_pool = const_cast<bf16*>(L.v_pool.data<bf16>());
    // Key splits as paged_attention sizes them, within the blocks of the grid.
    P.window = L.window > 0 && L.window < row.max_len ? int(L.window) : 0;
    const int64_t visible = P.window > 0 ? P.window : row.max_len;
    const int64_t tiles = (visible + kTile - 1) / kTile;
    // (At most as many splits as the merge can stage: a head's partial outputs in half the staging.)
    const int64_t want = std::clamp<int64_t>(sms / (KV * p.head_chunks), 1, (kStagingBytes / 2) / (hd * 4));
    const int64_t per = (tiles + std::min(tiles, want) - 1) / std::min(tiles, want);
    P.split_len = int(per * kTile);
    P.splits = int((tiles + per - 1) / per);
    max_splits = std::max(max_splits, P.splits);
  }
  p.P = layers[0].cos.dim(0);
  p.max_splits = max_splits;

  const int64_t att_floats = int64_t(p.heads_per_block) * hd + kTile * (hd + 1) + kTile * hd;
  // Merging the splits stages lse [H, max splits] and at least one head's partial outputs.
  if (align16(H * max_splits * 4) + max_splits * hd * 4 > kStagingBytes) return Tensor();
  p.att_floats = att_floats;
  p.stage_bytes = kMaxStageBytes;  // 8 and 16 KB stages measured no different (Qwen-0.5B, Llama-3-8B shapes)
  const int64_t widest = std::max(d, std::max(qn, I));
  const int64_t fixed = smem_layout(d, widest, att_floats, 0, p.stage_bytes).total;
  const int stages = static_cast<int>(std::min<int64_t>(kMaxStages, (kMaxSharedBytes - fixed) / p.stage_bytes));
  if (stages < 2) return Tensor();
  p.stages = stages;
  const int64_t smem = smem_layout(d, widest, att_floats, stages, p.stage_bytes).total;

  // Scratch: bf16 rows, then f32 splits, then the barrier counter.
  const int64_t bf16_elems = qn + 2 * kvn + 2 * d + 3 * I + 7 * kMaxRank;
  const int64_t f32_elems = int64_t(H) * max_splits * hd + int64_t(H) * max_splits;
  const int64_t bytes = (bf16_elems * 2 + 15) / 16 * 16 + f32_elems * 4 + 16;
  Tensor scratch = Tensor::empty({bytes}, DType::U8, dev);
  unsigned char* s = static_cast<unsigned char*>(scratch.raw());
  bf16* b = reinterpret_cast<bf16*>(s);
  p.q_pre = b;
  p.k_pre = b += qn;
  p.v_pre = b += kvn;
  p.y_o = b += kvn;
  p.y_d = b += d;
  p.g_pre = b += d;
  p.u_pre = b += I;
  p.act = b += I;
  p.h = b += I;
  float* f = reinterpret_cast<float*>(s + (bf16_elems * 2 + 15) / 16 * 16);
  p.part_o = f;
  p.part_lse = f + int64_t(H) * max_splits * hd;
  p.counter = reinterpret_cast<unsigned*>(p.part_lse + int64_t(H) * max_splits);

  Tensor y = Tensor::empty({1, d}, DType::BF16, dev);
  p.x_in = x.data<bf16>();
  p.x_out = y.data<bf16>();
  p.pos = row.pos.data<int32_t>();
  p.slot = row.slot.data<int32_t>();
  p.table = row.table.data<int32_t>();
  p.len = row.len.data<int32_t>();

  cudaStream_t st = stream_for(dev);
  LR_CUDA(cudaFuncSetAttribute(decode_stack_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  LR_CUDA(cudaMemsetAsync(p.counter, 0, sizeof(unsigned), st));
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(unsigned(sms));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = size_t(smem);
  cfg.stream = st;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;  // every block resident at once: the barriers need it
  attr[0].val.cooperative = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  static const bool trace = std::getenv("LOWRANK_DECODE_STACK_TRACE") != nullptr;
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  LR_CUDA(cudaStreamIsCapturing(st, &capturing));
  std::vector<std::string> labels;
  Tensor trace_buf;
  if (trace && capturing == cudaStreamCaptureStatusNone) {
    for (size_t li = 0; li < layers.size(); ++li) {
      for (const char* l : {"qkv", "attention", "o", "gate/up"}) labels.push_back(l);
      if (p.L[li].lora[kGate].a || p.L[li].lora[kUp].a) labels.push_back("act");
      labels.push_back("down");
    }
    trace_buf = Tensor::zeros({int64_t(labels.size()) * sms * 8}, DType::I64, dev);
    p.trace = reinterpret_cast<unsigned long long*>(trace_buf.raw());
  }
  LR_CUDA(cudaLaunchKernelEx(&cfg, decode_stack_kernel, p));
  LR_CUDA_LAUNCHED();
  if (p.trace) print_trace(trace_buf, labels, sms, st);
  return y;
}

}  // namespace lowrank::cuda
