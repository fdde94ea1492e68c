// One table of the ops in lowrank/ops/ops.h, run on every backend this machine has (the idea of
// llama.cpp's test-backend-ops): each case makes random f32 inputs, runs the op through lowrank::ops
// on the CPU (the reference) and, with a GPU, on CUDA with f32 and with bf16 data, and compares the
// outputs; each op with a backward op gets a finite-difference check of that backward on the CPU
// (loss = Σ w ⊙ output for a fixed random w).
// Tolerances (relative Frobenius error): f32 1e-5, bf16 1e-2 (the CPU gets the same bf16-rounded
// inputs, so the difference is the rounding of outputs and intermediates); exact ops 0.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "lowrank/core/device_memory.h"
#include "lowrank/core/rng.h"
#include "lowrank/model/nf4.h"
#include "lowrank/ops/ops.h"

using namespace lowrank;

namespace {

using Inputs = std::vector<Tensor>;
using Outputs = std::vector<Tensor>;

struct OpCase {
  std::string name;
  std::vector<Shape> inputs;  // random f32 inputs, uniform in [-1, 1]
  // Runs the op on `in` (already on the backend's device and dtype); returns what it computed (an
  // in-place op returns the tensor it changed).
  std::function<Outputs(Inputs& in, Device d)> run;
  // The backward op: d(loss)/d(in[i]) for the differentiable inputs `grad_of`, given the inputs
  // and dout = d(loss)/d(first output). Empty: no gradient check.
  std::function<Outputs(const Inputs& in, const Tensor& dout)> grad;
  std::vector<int> grad_of;
  bool bf16 = true;    // the op takes bf16 data on CUDA
  bool exact = false;  // the backends must agree bit for bit (gathers, copies, casts)
  double fd_eps = 1e-2;
};

Tensor random_f32(const Shape& s, uint64_t seed) {
  Tensor t = Tensor::empty(s);
  Rng rng(seed * 7919 + 3);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = rng.uniform(-1.0f, 1.0f);
  return t;
}

Tensor host_f32(const Tensor& t) { return t.to(Device::cpu()).to(DType::F32); }

double rel_err(const Tensor& got, const Tensor& ref) {
  const Tensor g = host_f32(got), r = host_f32(ref);
  EXPECT_EQ(g.numel(), r.numel());
  double num = 0, den = 0;
  for (int64_t i = 0; i < std::min(g.numel(), r.numel()); ++i) {
    const double d = static_cast<double>(g.f32()[i]) - r.f32()[i];
    num += d * d;
    den += static_cast<double>(r.f32()[i]) * r.f32()[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

// A U8 mask (any device) as f32 values on the CPU.
Tensor mask_f32(const Tensor& mask) {
  const Tensor h = mask.to(Device::cpu());
  Tensor f = Tensor::empty({h.numel()});
  for (int64_t i = 0; i < h.numel(); ++i) f.f32()[i] = h.data<uint8_t>()[i];
  return f;
}

Tensor clone_to(const Tensor& cpu_f32, Device d, DType t) {
  Tensor c = cpu_f32.to(t);
  return d.is_cpu() ? c.clone() : c.to(d);
}

// Σ w ⊙ y in double (CPU f32 tensors).
double weighted_sum(const Tensor& y, const Tensor& w) {
  double s = 0;
  for (int64_t i = 0; i < y.numel(); ++i) s += static_cast<double>(y.f32()[i]) * w.f32()[i];
  return s;
}

// Central differences of Σ w ⊙ run(in)[0] against the case's backward op, every element.
void check_gradient(const OpCase& c, uint64_t seed) {
  SCOPED_TRACE("gradient of " + c.name);
  Inputs base;
  for (size_t i = 0; i < c.inputs.size(); ++i) base.push_back(random_f32(c.inputs[i], seed + i));
  auto loss = [&](const Inputs& in, Tensor* out = nullptr) {
    Inputs copy;
    for (const Tensor& t : in) copy.push_back(t.clone());
    Outputs y = c.run(copy, Device::cpu());
    if (out) *out = y[0];
    return y;
  };
  Tensor y0;
  loss(base, &y0);
  const Tensor w = random_f32(y0.shape(), seed + 99);
  Inputs copy;
  for (const Tensor& t : base) copy.push_back(t.clone());
  const Outputs analytic = c.grad(copy, w);
  ASSERT_EQ(analytic.size(), c.grad_of.size());
  for (size_t k = 0; k < c.grad_of.size(); ++k) {
    const int i = c.grad_of[k];
    const Tensor& a = analytic[k];
    ASSERT_EQ(a.numel(), base[i].numel()) << "input " << i;
    double err = 0, scale = 0;
    for (int64_t e = 0; e < base[i].numel(); ++e) {
      Inputs plus = base, minus = base;
      plus[i] = base[i].clone();
      minus[i] = base[i].clone();
      plus[i].f32()[e] += static_cast<float>(c.fd_eps);
      minus[i].f32()[e] -= static_cast<float>(c.fd_eps);
      const double numeric =
          (weighted_sum(loss(plus)[0], w) - weighted_sum(loss(minus)[0], w)) / (2 * c.fd_eps);
      err = std::max(err, std::abs(numeric - a.f32()[e]));
      scale = std::max(scale, std::abs(numeric));
    }
    EXPECT_LE(err, 2e-3 * std::max(1.0, scale)) << "input " << i << " (max |grad| " << scale << ")";
  }
}

// The op on `d` with data of type `t` against the CPU on the same (rounded) inputs.
void check_backend(const OpCase& c, Device d, DType t, uint64_t seed) {
  SCOPED_TRACE(c.name + " on " + d.str() + (t == DType::BF16 ? " bf16" : " f32"));
  Inputs ref_in, dev_in;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    const Tensor x = random_f32(c.inputs[i], seed + i).to(t).to(DType::F32);  // values t can hold
    ref_in.push_back(x.clone());
    dev_in.push_back(clone_to(x, d, t));
  }
  const Outputs ref = c.run(ref_in, Device::cpu());
  const Outputs got = c.run(dev_in, d);
  ASSERT_EQ(got.size(), ref.size());
  const double tol = c.exact ? 0.0 : t == DType::BF16 ? 1e-2 : 1e-5;
  for (size_t k = 0; k < ref.size(); ++k) {
    EXPECT_LE(rel_err(got[k], ref[k]), tol) << "output " << k;
  }
}

ops::AttentionShape attention_shape(int64_t window, float softcap) {
  return {1, 5, 2, 1, 4, window, 0.5f, softcap};  // B=1 T=5 H=2 KV=1 hd=4
}

// cos/sin of random angles [P, half]: a true rotation, so that the inverse is the transpose.
std::pair<Tensor, Tensor> rope_table(int64_t positions, int64_t half) {
  Tensor cos = Tensor::empty({positions, half}), sin = Tensor::empty({positions, half});
  Rng rng(5);
  for (int64_t i = 0; i < cos.numel(); ++i) {
    const float a = rng.uniform(-3.0f, 3.0f);
    cos.f32()[i] = std::cos(a);
    sin.f32()[i] = std::sin(a);
  }
  return {cos, sin};
}

// RoPE of norm_linears' rows in the op table: 5 rows at positions up to 11, f32 tables [12, 8]
// (head_dim 16), 4 and 2 heads rotated on the first two outputs, the third not.
ops::RotaryRows decode_rope(Device d) {
  Tensor cos = Tensor::empty({12, 8}), sin = Tensor::empty({12, 8});
  for (int64_t p = 0; p < 12; ++p)
    for (int64_t i = 0; i < 8; ++i) {
      cos.f32()[p * 8 + i] = std::cos(0.7f * p / (1 + i));
      sin.f32()[p * 8 + i] = std::sin(0.7f * p / (1 + i));
    }
  return {Tensor::from_ints({0, 3, 11, 5, 7}, d), d.is_cpu() ? cos : cos.to(d), d.is_cpu() ? sin : sin.to(d), {4, 2, 0}};
}

// decode_stack's inputs: x [1, 64], then per layer (two) 13 tensors: norms, q [64, 64] (4 heads of
// 16), k and v [32, 64] (2 KV heads), o, gate/up [96, 64], down, q's and v's biases and the pools
// [96, 32] (6 blocks of 16 rows; their random rows are the cached positions); with `lora`, 14 more:
// A/B of q, v, o, gate and down on layer 0, of k and up on layer 1. The row sits at position 69 of a
// sequence in blocks 5, 2, 0, 4, 1 (key splits on CUDA); layer 1 has a sliding window of 40.
constexpr int64_t kStackInputs = 1 + 2 * 13;
std::vector<Shape> decode_stack_inputs(bool lora) {
  std::vector<Shape> s{{1, 64}};
  for (int l = 0; l < 2; ++l)
    for (const Shape& t : std::vector<Shape>{{64}, {64}, {64, 64}, {32, 64}, {32, 64}, {64, 64}, {96, 64}, {96, 64},
                                             {64, 96}, {64}, {32}, {96, 32}, {96, 32}})
      s.push_back(t);
  if (lora)
    for (const Shape& t : std::vector<Shape>{{4, 64}, {64, 4}, {4, 64}, {32, 4}, {4, 64}, {64, 4}, {8, 64}, {96, 8},
                                             {4, 96}, {64, 4}, {4, 64}, {32, 4}, {8, 64}, {96, 8}})
      s.push_back(t);
  return s;
}

// ops::decode_stack, or where the backend has no one-launch path (the CPU; f32) or with
// `layer_ops`, the layer ops it equals: the row after both layers and every pool.
Outputs decode_stack_run(Inputs& in, Device d, bool layer_ops) {
  auto [cos, sin] = rope_table(96, 8);
  if (d.is_cuda()) cos = cos.to(d), sin = sin.to(d);
  const bool lora = static_cast<int64_t>(in.size()) > kStackInputs;
  auto update = [&](int64_t i, float scale) { return ops::LowRankUpdate{in[i], in[i + 1], scale}; };
  std::vector<ops::DecodeLayer> layers(2);
  for (int l = 0; l < 2; ++l) {
    const Tensor* t = &in[1 + 13 * l];
    ops::DecodeLayer& L = layers[l];
    L.attn_norm = t[0], L.mlp_norm = t[1], L.q = t[2], L.k = t[3], L.v = t[4], L.o = t[5], L.gate = t[6];
    L.up = t[7], L.down = t[8], L.q_bias = t[9], L.v_bias = t[10], L.k_pool = t[11], L.v_pool = t[12];
    L.cos = cos, L.sin = sin;
    L.window = l == 1 ? 40 : 0;
  }
  if (lora) {
    const int64_t u = kStackInputs;
    layers[0].lora[0] = update(u, 0.5f), layers[0].lora[2] = update(u + 2, 0.25f), layers[0].lora[3] = update(u + 4, 0.5f);
    layers[0].lora[4] = update(u + 6, 0.25f), layers[0].lora[6] = update(u + 8, -0.25f);
    layers[1].lora[1] = update(u + 10, 0.5f), layers[1].lora[5] = update(u + 12, 0.25f);
  }
  ops::DecodeRow row;
  row.pos = Tensor::from_ints({69}, d);
  row.slot = Tensor::from_ints({21}, d);  // block 1 (table entry 4), row 5
  row.table = Tensor::from_ints({5, 2, 0, 4, 1}, d).reshape({1, 5});
  row.len = Tensor::from_ints({70}, d);
  row.block_size = 16, row.max_len = 80, row.heads = 4, row.kv_heads = 2, row.head_dim = 16;
  row.eps = 1e-5f, row.scale = 0.25f;
  Tensor x = layer_ops ? Tensor() : ops::decode_stack(in[0], layers, row);
  if (!layer_ops && d.is_cuda() && in[0].dtype() == DType::BF16) EXPECT_TRUE(x.defined()) << "CUDA took the layer ops";
  if (!x.defined()) {
    x = in[0];
    for (ops::DecodeLayer& L : layers) {
      const ops::RotaryRows rope{row.pos, L.cos, L.sin, {4, 2, 0}};
      const std::vector<Tensor> qkv = ops::norm_linears(x, L.attn_norm, row.eps, {L.q, L.k, L.v},
                                                        {L.q_bias, L.k_bias, L.v_bias}, &rope,
                                                        {L.lora[0], L.lora[1], L.lora[2]});
      ops::paged_kv_write_(L.k_pool, L.v_pool, qkv[1], qkv[2], row.slot);
      const Tensor att = ops::paged_attention(qkv[0], L.k_pool, L.v_pool, row.table, row.len, row.block_size,
                                              row.max_len, {1, 1, 4, 2, 16, L.window, row.scale, 0.0f});
      const Tensor x_mid = ops::linear_residual(att, L.o, x, {L.lora[3]});
      const Tensor act = ops::norm_swiglu(x_mid, L.mlp_norm, row.eps, L.gate, L.up, {L.lora[4], L.lora[5]});
      x = ops::linear_residual(act, L.down, x_mid, {L.lora[6]});
    }
  }
  return {x, layers[0].k_pool, layers[0].v_pool, layers[1].k_pool, layers[1].v_pool};
}
Outputs decode_stack_case(Inputs& in, Device d) { return decode_stack_run(in, d, false); }

// A row of dropout_shrink_backward over x [n, in], A [r, in], g [n, r], dA [da_rows (r when 0), in],
// dx [n, in]: dx added, then written, then dA alone (no dx); dA accumulates over the three.
OpCase dropout_backward_case(std::string name, int64_t n, int64_t in, int64_t r, ops::DropoutDraws draws,
                             int64_t da_rows = 0) {
  return {std::move(name), {{n, in}, {r, in}, {n, r}, {da_rows ? da_rows : r, in}, {n, in}}, [draws](Inputs& in, Device) {
            Tensor dA = ops::cast(in[3], DType::F32).clone(), dx_added = in[4].clone(), dx_written;
            ops::dropout_shrink_backward(in[0], draws, in[2], in[1], dA, 0.5f, &dx_added, true);
            ops::dropout_shrink_backward(in[0], draws, in[2], in[1], dA, 0.5f, &dx_written, false);
            ops::dropout_shrink_backward(in[0], draws, in[2], in[1], dA, 0.5f, nullptr, true);
            return Outputs{dA, dx_added, dx_written};
          }};
}

// A decode row's attention with o and the residual (ops::paged_attention_residual): H query heads
// over KV heads of hd, o's n rows, `keys` keys in blocks of 16 (the block table reversed), a
// rank-r update (0: none).
OpCase paged_o_case(std::string name, int64_t H, int64_t KV, int64_t hd, int64_t n, int keys, int64_t r) {
  const int64_t blocks = (keys + 15) / 16;
  std::vector<Shape> inputs = {{1, H * hd}, {blocks * 16, KV * hd}, {blocks * 16, KV * hd}, {n, H * hd}, {1, n}};
  if (r > 0) inputs.insert(inputs.end(), {{r, H * hd}, {n, r}});
  return {std::move(name), inputs, [=](Inputs& in, Device d) {
            std::vector<int32_t> table(blocks);
            for (int64_t i = 0; i < blocks; ++i) table[i] = int32_t(blocks - 1 - i);
            const Tensor tables = Tensor::from_ints(table, d).reshape({1, blocks});
            std::vector<ops::LowRankUpdate> updates;
            if (r > 0) updates.push_back({in[5], in[6], 0.75f});
            return Outputs{ops::paged_attention_residual(in[0], in[1], in[2], tables, Tensor::from_ints({keys}, d), 16,
                                                         keys, {1, 1, H, KV, hd, 0, 1.0f / std::sqrt(float(hd)), 0.0f},
                                                         in[3], in[4], updates)};
          }};
}

std::vector<OpCase> op_table() {
  using ops::Gemm;
  std::vector<OpCase> t;
  // ---- GEMMs: dy·w and dyᵀ·x are the gradients of x·wᵀ.
  t.push_back({"matmul_nt", {{7, 9}, {5, 9}},
               [](Inputs& in, Device) { Tensor y; ops::matmul_nt(in[0], in[1], y); return Outputs{y}; },
               [](const Inputs& in, const Tensor& dy) {
                 Tensor dx, dw;
                 ops::matmul_nn(dy, in[1], dx);
                 ops::matmul_tn(dy, in[0], dw);
                 return Outputs{dx, dw};
               },
               {0, 1}});
  t.push_back({"matmul_nn (alpha, beta)", {{7, 9}, {9, 5}, {7, 5}},
               [](Inputs& in, Device) { ops::matmul_nn(in[0], in[1], in[2], 0.5f, 2.0f); return Outputs{in[2]}; },
               [](const Inputs& in, const Tensor& dy) {
                 Tensor dx, dw, dc = dy.clone();
                 ops::matmul_nt(dy, in[1], dx, 0.5f);
                 ops::matmul_tn(in[0], dy, dw, 0.5f);
                 ops::scale_(dc, 2.0f);
                 return Outputs{dx, dw, dc};
               },
               {0, 1, 2}});
  t.push_back({"matmul_tn", {{9, 7}, {9, 5}},
               [](Inputs& in, Device) { Tensor y; ops::matmul_tn(in[0], in[1], y); return Outputs{y}; }});
  t.push_back({"matmul_blocks (nt, tn, nn into blocks)", {{6, 12}, {5, 4}, {6, 5}, {6, 12}},
               [](Inputs& in, Device) {
                 ops::matmul_blocks(Gemm::NT, {in[0], 8, 4}, ops::ColumnBlock::all(in[1]), ops::ColumnBlock::all(in[2]),
                                    0.5f, 1.0f);
                 Tensor db = Tensor::zeros({5, 4}, DType::F32, in[0].device());
                 ops::matmul_blocks(Gemm::TN, ops::ColumnBlock::all(in[2]), {in[0], 4, 4}, ops::ColumnBlock::all(db));
                 ops::matmul_blocks(Gemm::NN, ops::ColumnBlock::all(in[2]), ops::ColumnBlock::all(in[1]), {in[3], 0, 4},
                                    2.0f, 0.0f);
                 return Outputs{in[2], db, in[3]};
               }});
  t.push_back({"linear", {{7, 9}, {5, 9}, {5}},
               [](Inputs& in, Device) { return Outputs{ops::linear(in[0], in[1], in[2])}; },
               [](const Inputs& in, const Tensor& dy) {
                 Tensor dx, dw, db = Tensor::zeros({5});
                 ops::matmul_nn(dy, in[1], dx);
                 ops::matmul_tn(dy, in[0], dw);
                 ops::bias_grad_(db, dy);
                 return Outputs{dx, dw, db};
               },
               {0, 1, 2}});
  t.push_back({"matmul_nt_add", {{7, 9}, {5, 9}, {7, 5}},
               [](Inputs& in, Device) { return Outputs{ops::matmul_nt_add(in[0], in[1], in[2], 0.5f)}; },
               [](const Inputs& in, const Tensor& dy) {
                 Tensor dx, dw;
                 ops::matmul_nn(dy, in[1], dx, 0.5f);
                 ops::matmul_tn(dy, in[0], dw, 0.5f);
                 return Outputs{dx, dw, dy.clone()};
               },
               {0, 1, 2}});
  // ---- element-wise (odd and 16-byte-vectorisable widths)
  for (int64_t cols : {67, 40}) {
    const std::string w = " [33, " + std::to_string(cols) + "]";
    t.push_back({"add_ add_scaled_ add_bias_" + w, {{33, cols}, {33, cols}, {cols}},
                 [](Inputs& in, Device) {
                   ops::add_scaled_(in[0], in[1], -0.75f);
                   ops::add_bias_(in[0], in[2]);
                   ops::add_(in[0], in[1]);
                   return Outputs{in[0]};
                 },
                 [](const Inputs& in, const Tensor& dy) {
                   Tensor dx = dy.clone(), dx1 = dy.clone(), db = Tensor::zeros({in[2].numel()});
                   ops::scale_(dx1, 0.25f);  // -0.75 + 1
                   ops::bias_grad_(db, dy);
                   return Outputs{dx, dx1, db};
                 },
                 {0, 1, 2}});
    t.push_back({"mul_ scale_" + w, {{33, cols}, {33, cols}},
                 [](Inputs& in, Device) {
                   ops::mul_(in[0], in[1]);
                   ops::scale_(in[0], 1.5f);
                   return Outputs{in[0]};
                 },
                 [](const Inputs& in, const Tensor& dy) {
                   Tensor da = dy.clone(), db = dy.clone();
                   ops::mul_(da, in[1]);
                   ops::mul_(db, in[0]);
                   ops::scale_(da, 1.5f);
                   ops::scale_(db, 1.5f);
                   return Outputs{da, db};
                 },
                 {0, 1}});
    for (ops::Act a : {ops::Act::SiLU, ops::Act::GeluTanh, ops::Act::GeluErf, ops::Act::ReLU}) {
      OpCase c{"activation " + std::to_string(int(a)) + w, {{33, cols}},
               [a](Inputs& in, Device) { return Outputs{ops::activation(in[0], a)}; },
               [a](const Inputs& in, const Tensor& dy) { return Outputs{ops::activation_backward(dy, in[0], a)}; },
               {0}};
      if (a == ops::Act::ReLU) c.grad = nullptr;  // central differences straddle the kink at 0
      t.push_back(c);
    }
    t.push_back({"swiglu" + w, {{33, cols}, {33, cols}},
                 [](Inputs& in, Device) { return Outputs{ops::swiglu(in[0], in[1])}; },
                 [](const Inputs& in, const Tensor& dy) {
                   Tensor dg, du;
                   ops::swiglu_backward(dy, in[0], in[1], dg, du);
                   return Outputs{dg, du};
                 },
                 {0, 1}});
    t.push_back({"softcap_" + w, {{33, cols}},
                 [](Inputs& in, Device) {
                   ops::scale_(in[0], 40.0f);  // reach the cap's curved part
                   ops::softcap_(in[0], 30.0f);
                   return Outputs{in[0]};
                 },
                 [](const Inputs& in, const Tensor& dy) {
                   Tensor y = in[0].clone(), d = dy.clone();
                   ops::scale_(y, 40.0f);
                   ops::softcap_(y, 30.0f);
                   ops::softcap_backward_(d, y, 30.0f);
                   ops::scale_(d, 40.0f);
                   return Outputs{d};
                 },
                 {0}, true, false, 1e-3});
  }
  t.push_back({"transpose2d", {{13, 7}},
               [](Inputs& in, Device) { return Outputs{ops::transpose2d(in[0])}; }, {}, {}, true, true});
  t.push_back({"copy_columns_", {{5, 12}, {5, 4}},
               [](Inputs& in, Device) {
                 ops::copy_columns_(in[0], 6, in[1], 1, 3);
                 return Outputs{in[0]};
               },
               {}, {}, true, true});
  t.push_back({"fill_ cast cast_into_", {{9, 6}},
               [](Inputs& in, Device) {
                 Tensor f = in[0].clone();
                 ops::fill_(f, 0.375f);
                 Tensor c = ops::cast(in[0], DType::F32), back = Tensor::empty_like(in[0]);
                 ops::cast_into_(back, c);
                 return Outputs{f, c, back};
               },
               {}, {}, true, true});
  // ---- norms: RMSNorm and LayerNorm with their weight (and bias) gradients
  t.push_back({"rmsnorm", {{6, 40}, {40}},
               [](Inputs& in, Device) { return Outputs{ops::rmsnorm(in[0], in[1], 1e-5f)}; },
               [](const Inputs& in, const Tensor& dy) {
                 Tensor rstd, dw = Tensor::zeros({40});
                 ops::rmsnorm(in[0], in[1], 1e-5f, &rstd);
                 return Outputs{ops::rmsnorm_backward(dy, in[0], in[1], rstd, &dw), dw};
               },
               {0, 1}, true, false, 1e-3});
  t.push_back({"layernorm", {{6, 33}, {33}, {33}},
               [](Inputs& in, Device) { return Outputs{ops::layernorm(in[0], in[1], in[2], 1e-5f)}; },
               [](const Inputs& in, const Tensor& dy) {
                 Tensor mean, rstd, dw = Tensor::zeros({33}), db = Tensor::zeros({33});
                 ops::layernorm(in[0], in[1], in[2], 1e-5f, &mean, &rstd);
                 return Outputs{ops::layernorm_backward(dy, in[0], in[1], mean, rstd, &dw, &db), dw, db};
               },
               {0, 1, 2}, true, false, 1e-3});
  // The residual stream's gradient added inside the norms' backward (the decoder layers' dx).
  t.push_back({"rmsnorm_backward, layernorm_backward (+ dres)", {{6, 40}, {40}, {6, 40}, {6, 40}},
               [](Inputs& in, Device) {
                 Tensor rstd, mean, ln_rstd;
                 ops::rmsnorm(in[0], in[1], 1e-5f, &rstd);
                 ops::layernorm(in[0], in[1], in[1], 1e-5f, &mean, &ln_rstd);
                 return Outputs{ops::rmsnorm_backward(in[2], in[0], in[1], rstd, nullptr, &in[3]),
                                ops::layernorm_backward(in[2], in[0], in[1], mean, ln_rstd, nullptr, nullptr, &in[3])};
               }});
  // ---- gathers and RoPE (vector and device-tensor forms of ids / positions)
  const std::vector<int32_t> ids{3, 0, 7, 3, 5};
  t.push_back({"embedding", {{8, 6}},
               [ids](Inputs& in, Device d) {
                 return Outputs{ops::embedding(in[0], ids), ops::embedding(in[0], Tensor::from_ints(ids, d))};
               },
               [ids](const Inputs&, const Tensor& dy) {
                 Tensor g = Tensor::zeros({8, 6});
                 ops::embedding_backward_(g, ids, dy);
                 return Outputs{g};
               },
               {0}, true, true});
  t.push_back({"embedding_backward_ (tensor ids)", {{5, 6}},
               [ids](Inputs& in, Device d) {
                 Tensor g = Tensor::zeros({8, 6}, DType::F32, d);
                 ops::embedding_backward_(g, Tensor::from_ints(ids, d), in[0]);
                 return Outputs{g};
               }});
  const std::vector<int32_t> pos{0, 4, 2, 9, 1};
  for (bool inverse : {false, true})
    t.push_back({std::string("rope_") + (inverse ? " inverse" : ""), {{5, 2 * 8}},
                 [pos, inverse](Inputs& in, Device d) {
                   auto [cos, sin] = rope_table(10, 4);
                   Tensor a = in[0].clone(), b = in[0];
                   ops::rope_(a, 2, pos, cos.to(d), sin.to(d), inverse);
                   ops::rope_(b, 2, Tensor::from_ints(pos, d), cos.to(d), sin.to(d), inverse);
                   return Outputs{a, b};
                 },
                 [pos, inverse](const Inputs&, const Tensor& dy) {
                   auto [cos, sin] = rope_table(10, 4);
                   Tensor d = dy.clone();
                   ops::rope_(d, 2, pos, cos, sin, !inverse);  // a rotation's gradient is its inverse
                   return Outputs{d};
                 },
                 {0}});
  // ---- attention (GQA 2:1; full causal, a window, soft-capping) with its backward
  // (window, softcap) as named copies: clang 14 (the sanitizer build) cannot capture structured bindings.
  for (const auto& ws : {std::pair{int64_t{0}, 0.0f}, std::pair{int64_t{2}, 0.0f}, std::pair{int64_t{0}, 1.5f}}) {
    const int64_t window = ws.first;
    const float softcap = ws.second;
    t.push_back({"attention window " + std::to_string(window) + " softcap " + std::to_string(softcap),
                 {{5, 8}, {5, 4}, {5, 4}},
                 [=](Inputs& in, Device) { return Outputs{ops::attention(in[0], in[1], in[2], attention_shape(window, softcap))}; },
                 [=](const Inputs& in, const Tensor& dout) {
                   Tensor lse, dq, dk, dv;
                   const auto s = attention_shape(window, softcap);
                   Tensor out = ops::attention(in[0], in[1], in[2], s, &lse);
                   ops::attention_backward(dout, in[0], in[1], in[2], out, lse, s, dq, dk, dv);
                   return Outputs{dq, dk, dv};
                 },
                 {0, 1, 2}, true, false, 1e-3});
  }
  // ---- losses: the cross-entropy sum and its backward; the fused device chunk
  const std::vector<int32_t> targets{2, -100, 0, 6, 6};
  t.push_back({"cross_entropy_sum / _backward", {{5, 7}},
               [targets](Inputs& in, Device d) {
                 int64_t n = 0;
                 Tensor loss = Tensor::full({1}, static_cast<float>(ops::cross_entropy_sum(in[0], targets, &n)));
                 EXPECT_EQ(n, 4);
                 return Outputs{loss.to(d)};
               },
               [targets](const Inputs& in, const Tensor& dout) {
                 Tensor dl = Tensor::zeros({5, 7});
                 ops::cross_entropy_backward(in[0], targets, dout.f32()[0], dl);
                 return Outputs{dl};
               },
               {0}, true, false, 1e-3});
  t.push_back({"cross_entropy_chunk", {{5, 7}},
               [targets](Inputs& in, Device d) {
                 Tensor sum = Tensor::zeros({1}, DType::F64, d), dl;
                 ops::cross_entropy_chunk(in[0], Tensor::from_ints(targets, d), 0.5f, dl, sum);
                 return Outputs{dl, sum.to(Device::cpu()).to(DType::F32)};
               }});
  // The scale read on the device (a recorded step's): 0.25 there, not the 0.5 argument.
  t.push_back({"cross_entropy_chunk (device scale)", {{5, 7}},
               [targets](Inputs& in, Device d) {
                 Tensor sum = Tensor::zeros({1}, DType::F64, d), dl;
                 const Tensor scale = Tensor::full({1}, 0.25f).to(d);
                 ops::cross_entropy_chunk(in[0], Tensor::from_ints(targets, d), 0.5f, dl, sum, scale);
                 Tensor want;
                 ops::cross_entropy_chunk(in[0], Tensor::from_ints(targets, d), 0.25f, want, sum);
                 ops::add_scaled_(want, dl, -1.0f);  // zero when the device's scale was used
                 return Outputs{dl, want};
               }});
  t.push_back({"bias_grad_", {{9, 5}},
               [](Inputs& in, Device d) {
                 Tensor db = Tensor::zeros({5}, DType::F32, d);
                 ops::bias_grad_(db, in[0]);
                 return Outputs{db};
               }});
  // ---- training ops (f32 masters and gradients)
  t.push_back({"dropout / dropout_backward_add_", {{13, 29}, {13, 29}},
               [](Inputs& in, Device) {
                 Tensor mask, dx = ops::cast(in[1], DType::F32).clone();
                 Tensor y = ops::dropout(in[0], 0.25, 42, 1000, &mask);
                 ops::dropout_backward_add_(dx, y, mask, 0.25);
                 return Outputs{y, mask_f32(mask), dx};
               },
               {}, {}, false});
  t.push_back({"dropout (device offset)", {{13, 29}},
               [](Inputs& in, Device d) {
                 Tensor delta = Tensor::empty({1}, DType::I64);
                 delta.data<int64_t>()[0] = 517;
                 Tensor mask, want_mask;
                 Tensor y = ops::dropout(in[0], 0.25, 42, 1000, &mask, delta.to(d));
                 Tensor want = ops::dropout(in[0], 0.25, 42, 1517, &want_mask);
                 ops::add_scaled_(want, y, -1.0f);  // zero when the device's offset was added
                 return Outputs{y, mask_f32(mask), want};
               },
               {}, {}, false});
  ops::AdamWScalars s;
  s.decay = 0.99f;
  s.apply_decay = true;
  s.neg_step = -1e-2f;
  s.bc2_sqrt = 0.3f;
  t.push_back({"adamw_update_ / _all_", {{7, 5}, {7, 5}, {7, 5}, {7, 5}, {3}},
               [s](Inputs& in, Device) {
                 Tensor v = in[3].clone();
                 ops::mul_(v, in[3]);  // second moments are non-negative
                 Tensor p2 = in[0].clone(), m2 = in[2].clone(), v2 = v.clone();
                 Tensor p4 = in[0].clone(), m4 = in[2].clone(), v4 = v.clone();
                 ops::adamw_update_(in[0], in[1], in[2], v, s);
                 Tensor p3 = in[4].clone(), g3 = in[4].clone(), m3 = in[4].clone(), v3 = Tensor::zeros_like(in[4]);
                 // bf16 working copies: one of p2's size, one wider than p4 (LoRA at a padded rank),
                 // and p4's second home in columns [3, 8) of a wider one (the K-extension's W_ext)
                 Tensor w2 = Tensor::zeros({7, 5}, DType::BF16, p2.device());
                 Tensor w4 = Tensor::zeros({9, 8}, DType::BF16, p4.device());
                 Tensor w4b = Tensor::zeros({8, 11}, DType::BF16, p4.device());
                 ops::adamw_update_all_({p2, p3, p4}, {in[1], g3, in[1]}, {m2, m3, m4}, {v2, v3, v4}, {1, 0, 1}, s,
                                        {w2, Tensor(), w4}, {{}, {}, {w4b, 3, 5}});
                 return Outputs{in[0], in[2], v, p2, p3, p4, w2, w4, w4b};
               },
               {}, {}, false, true});
  t.push_back({"sum_squares_ clip_by_total_ and _all_", {{7, 5}, {3}},
               [](Inputs& in, Device d) {
                 Tensor acc = Tensor::zeros({1}, DType::F64, d), acc_all = Tensor::zeros({1}, DType::F64, d);
                 ops::sum_squares_(in[0], acc);
                 Tensor a = in[0].clone(), b = in[1].clone(), z = in[1].clone();
                 ops::sum_squares_all_({a, b}, acc_all);
                 ops::clip_by_total_(in[0], acc, 0.5);
                 ops::clip_by_total_all_({a, b}, acc_all, 0.5);
                 ops::zero_all_({z});
                 return Outputs{acc.to(Device::cpu()).to(DType::F32), acc_all.to(Device::cpu()).to(DType::F32), in[0], a,
                                b, z};
               },
               {}, {}, false});
  // ---- LoRA of mixed-adapter batches: rows of two adapters (ranks 3 and 2, interleaved), rows
  // without one, and an adapter that does not adapt this projection
  t.push_back({"lora_rows_", {{5, 7}, {5, 6}, {3, 7}, {6, 3}, {2, 7}, {6, 2}},
               [](Inputs& in, Device d) {
                 ops::LoraRows rows{{in[2], Tensor(), in[4]}, {in[3], Tensor(), in[5]}, {0.5f, 2.0f, -1.5f},
                                    Tensor::from_ints({2, -1, 0, 2, 1}, d)};
                 ops::lora_rows_(in[1], in[0], rows);
                 return Outputs{in[1]};
               }});
  // ---- quantized weights: NF4 (quantized on the host, dequantized by the backend)
  t.push_back({"nf4_dequantize", {{7, 100}},
               [](Inputs& in, Device d) {
                 const model::Nf4Weight w = model::nf4_quantize(host_f32(in[0]), in[0].dtype(), d);
                 Tensor out = Tensor::empty(w.shape, in[0].dtype(), d);
                 ops::nf4_dequantize(w.codes, w.absmax_codes, w.absmax_scale, w.absmax_map, w.offset, out);
                 return Outputs{out};
               }});
  // ---- decoding: the paged KV cache (two sequences of 5 and 3 positions in blocks of 4) and greedy argmax
  t.push_back({"paged_kv_write_ paged_attention", {{2, 8}, {8, 4}, {8, 4}},
               [](Inputs& in, Device d) {
                 const DType dt = in[1].dtype();
                 Tensor k_pool = Tensor::zeros({16, 4}, DType::F32).to(dt), v_pool = k_pool.clone();
                 if (d.is_cuda()) k_pool = k_pool.to(d), v_pool = v_pool.to(d);
                 ops::paged_kv_write_(k_pool, v_pool, in[1], in[2], Tensor::from_ints({8, 9, 10, 11, 0, 12, 13, 14}, d));
                 const Tensor tables = Tensor::from_ints({2, 0, 3, 0}, d).reshape({2, 2});
                 Tensor out = ops::paged_attention(in[0], k_pool, v_pool, tables, Tensor::from_ints({5, 3}, d), 4, 5,
                                                   attention_shape(0, 0.0f));
                 return Outputs{out, k_pool, v_pool};
               }});
  // Contexts of 70 and 33 keys in blocks of 16: CUDA splits each key range over blocks and merges them.
  t.push_back({"paged_attention over split key ranges", {{2, 8}, {128, 4}, {128, 4}},
               [](Inputs& in, Device d) {
                 const Tensor tables = Tensor::from_ints({7, 2, 5, 0, 1, 3, 6, 4, 0, 0}, d).reshape({2, 5});
                 return Outputs{ops::paged_attention(in[0], in[1], in[2], tables, Tensor::from_ints({70, 33}, d), 16, 70,
                                                     attention_shape(0, 0.0f))};
               }});
  // ---- fused decode projections (CUDA: the fused kernels for bf16, the unfused ops for f32): 5 rows
  // through q/k/v-like weights with biases on two, one row through gate/up, 3 rows with a residual
  t.push_back({"norm_linears", {{5, 96}, {96}, {70, 96}, {70}, {23, 96}, {24, 96}, {24}},
               [](Inputs& in, Device) {
                 return ops::norm_linears(in[0], in[1], 1e-5f, {in[2], in[4], in[5]}, {in[3], Tensor(), in[6]});
               }});
  t.push_back({"norm_linears with RoPE", {{5, 96}, {96}, {64, 96}, {64}, {32, 96}, {32, 96}},
               [](Inputs& in, Device d) {
                 const ops::RotaryRows rope = decode_rope(d);
                 return ops::norm_linears(in[0], in[1], 1e-5f, {in[2], in[4], in[5]}, {in[3], Tensor(), Tensor()},
                                          &rope);
               }});
  t.push_back({"norm_swiglu", {{1, 64}, {64}, {40, 64}, {40, 64}},
               [](Inputs& in, Device) { return Outputs{ops::norm_swiglu(in[0], in[1], 1e-5f, in[2], in[3])}; }});
  t.push_back({"linear_residual", {{3, 48}, {37, 48}, {3, 37}},
               [](Inputs& in, Device) { return Outputs{ops::linear_residual(in[0], in[1], in[2])}; }});
  // The same with LoRA's updates (ops::LowRankUpdate: A [r, d], B [N, r]) on some outputs: before
  // RoPE, SwiGLU, the residual. Odd ranks leave a shrink row without a partner.
  t.push_back({"norm_linears with low-rank updates and RoPE",
               {{5, 96}, {96}, {64, 96}, {64}, {32, 96}, {32, 96}, {8, 96}, {64, 8}, {4, 96}, {32, 4}},
               [](Inputs& in, Device d) {
                 const ops::RotaryRows rope = decode_rope(d);
                 return ops::norm_linears(in[0], in[1], 1e-5f, {in[2], in[4], in[5]}, {in[3], Tensor(), Tensor()},
                                          &rope, {{in[6], in[7], 0.5f}, {}, {in[8], in[9], 2.0f}});
               }});
  t.push_back({"norm_linears with three low-rank updates",
               {{1, 96}, {96}, {64, 96}, {32, 96}, {32, 96}, {8, 96}, {64, 8}, {3, 96}, {32, 3}, {5, 96}, {32, 5}},
               [](Inputs& in, Device) {
                 return ops::norm_linears(in[0], in[1], 1e-5f, {in[2], in[3], in[4]}, {Tensor(), Tensor(), Tensor()},
                                          nullptr, {{in[5], in[6], 0.5f}, {in[7], in[8], -1.0f}, {in[9], in[10], 2.0f}});
               }});
  t.push_back({"norm_swiglu with low-rank updates", {{1, 64}, {64}, {40, 64}, {40, 64}, {8, 64}, {40, 8}, {4, 64}, {40, 4}},
               [](Inputs& in, Device) {
                 return Outputs{ops::norm_swiglu(in[0], in[1], 1e-5f, in[2], in[3],
                                                 {{in[4], in[5], 0.25f}, {in[6], in[7], 1.5f}})};
               }});
  t.push_back({"linear_residual with a low-rank update", {{3, 48}, {37, 48}, {3, 37}, {16, 48}, {37, 16}},
               [](Inputs& in, Device) {
                 return Outputs{ops::linear_residual(in[0], in[1], in[2], {{in[3], in[4], 0.75f}})};
               }});
  t.push_back({"linear_residual with an odd-rank update", {{1, 48}, {37, 48}, {1, 37}, {5, 48}, {37, 5}},
               [](Inputs& in, Device) {
                 return Outputs{ops::linear_residual(in[0], in[1], in[2], {{in[3], in[4], -0.5f}})};
               }});
  // Every layer of a decode row in one launch (CUDA, bf16): without and with LoRA's updates.
  t.push_back({"decode_stack", decode_stack_inputs(false), decode_stack_case});
  // With LoRA the layer ops' bf16 roundings already take CUDA ~1.3% from the CPU on these random
  // inputs: f32 here; DecodeStackEqualsItsLayerOpsOnTheSameGpu checks the bf16 kernel.
  t.push_back({"decode_stack with low-rank updates", decode_stack_inputs(true), decode_stack_case, {}, {}, false});
  // Wide inputs with few outputs: CUDA splits K over 2 or 4 warps a row pair and sums the parts.
  t.push_back({"linear_residual over a wide input", {{1, 4096}, {37, 4096}, {1, 37}, {5, 4096}, {37, 5}},
               [](Inputs& in, Device) {
                 return Outputs{ops::linear_residual(in[0], in[1], in[2], {{in[3], in[4], 0.5f}})};
               }});
  t.push_back({"norm_swiglu over a wide input", {{2, 2048}, {2048}, {24, 2048}, {24, 2048}},
               [](Inputs& in, Device) { return Outputs{ops::norm_swiglu(in[0], in[1], 1e-5f, in[2], in[3])}; }});
  t.push_back({"norm_linears with RoPE over a wide input", {{5, 4096}, {4096}, {64, 4096}, {64}, {32, 4096}, {32, 4096}},
               [](Inputs& in, Device d) {
                 const ops::RotaryRows rope = decode_rope(d);
                 return ops::norm_linears(in[0], in[1], 1e-5f, {in[2], in[4], in[5]}, {in[3], Tensor(), Tensor()},
                                          &rope);
               }});
  t.push_back({"argmax_rows", {{5, 37}},
               [](Inputs& in, Device) {
                 const Tensor idx = ops::argmax_rows(in[0]).to(Device::cpu());
                 Tensor f = Tensor::empty({idx.numel()});
                 for (int64_t i = 0; i < idx.numel(); ++i) f.f32()[i] = static_cast<float>(idx.data<int32_t>()[i]);
                 return Outputs{f};
               },
               {}, {}, false, true});
  // Rows of 10000 split into chunks on CUDA: the maximum appears twice, in two chunks (the first wins).
  t.push_back({"argmax_rows over chunks", {{3, 10000}},
               [](Inputs& in, Device) {
                 Tensor x = in[0].to(Device::cpu());
                 for (int64_t r = 0; r < 3; ++r) x.f32()[r * 10000 + 5000 + r] = x.f32()[r * 10000 + 9000] = 2.0f;
                 const Tensor idx = ops::argmax_rows(x.to(in[0].device())).to(Device::cpu());
                 Tensor f = Tensor::empty({idx.numel()});
                 for (int64_t i = 0; i < idx.numel(); ++i) f.f32()[i] = static_cast<float>(idx.data<int32_t>()[i]);
                 return Outputs{f};
               },
               {}, {}, false, true});
  // norm_linears writing k and v into their pool rows too (as paged_kv_write_ after it; slot -1: a
  // padding row). Last: a row inserted earlier would shift the later rows' random inputs.
  t.push_back({"norm_linears writing k and v into pools",
               {{5, 96}, {96}, {64, 96}, {64}, {32, 96}, {32, 96}, {20, 32}, {20, 32}},
               [](Inputs& in, Device d) {
                 const ops::RotaryRows rope = decode_rope(d);
                 const ops::KVWrite kv{in[6], in[7], Tensor::from_ints({3, -1, 17, 0, 9}, d)};
                 Outputs ys = ops::norm_linears(in[0], in[1], 1e-5f, {in[2], in[4], in[5]}, {in[3], Tensor(), Tensor()},
                                                &rope, {}, &kv);
                 ys.push_back(in[6]);
                 ys.push_back(in[7]);
                 return ys;
               }});
  // A context past the short kernels' 512 keys: CUDA splits the key range over blocks and merges
  // the splits in a second kernel (shorter ones, as in the rows above, take a block per query head).
  t.push_back({"paged_attention over a long context", {{1, 8}, {640, 4}, {640, 4}},
               [](Inputs& in, Device d) {
                 std::vector<int32_t> blocks(40);
                 for (int i = 0; i < 40; ++i) blocks[i] = (i * 17) % 40;  // a permutation of the pool's blocks
                 const Tensor tables = Tensor::from_ints(blocks, d).reshape({1, 40});
                 return Outputs{ops::paged_attention(in[0], in[1], in[2], tables, Tensor::from_ints({600}, d), 16, 600,
                                                     attention_shape(0, 0.0f))};
               }});
  // LoRA's shrink through its dropout (the CPU fuses the draws into its GEMMs; CUDA composes
  // dropout and the GEMMs): the gradient check holds the mask fixed (same seed and offset).
  t.push_back({"dropout_shrink", {{37, 45}, {5, 45}},
               [](Inputs& in, Device) {
                 Tensor h;
                 ops::dropout_shrink(in[0], {0.25, 42, 1001, Tensor()}, in[1], h);
                 return Outputs{h};
               },
               [](const Inputs& in, const Tensor& dout) {
                 Tensor dA = Tensor::zeros(in[1].shape()), dx;
                 ops::dropout_shrink_backward(in[0], {0.25, 42, 1001, Tensor()}, dout, in[1], dA, 1.0f, &dx, false);
                 return Outputs{dx, dA};
               },
               {0, 1}});
  // Many CPU blocks (16 384 elements each), the last one partial, over threads; dx added and written.
  t.push_back(dropout_backward_case("dropout_shrink_backward", 1500, 97, 16, {0.1, 42, 1001, Tensor()}));
  // Last (rows added before others would shift their random inputs). A decode row's attention (4 query heads over 2 KV heads of 16, 70 keys in blocks of 16) and o
  // plus the residual: CUDA's one launch for bf16 (blocks a head each, o's partial sums added by a
  // part's last block), the two ops for f32.
  t.push_back({"paged_attention_residual", {{1, 64}, {128, 32}, {128, 32}, {40, 64}, {1, 40}},
               [](Inputs& in, Device d) {
                 const Tensor tables = Tensor::from_ints({7, 2, 5, 0, 1, 3, 6, 4}, d).reshape({1, 8});
                 return Outputs{ops::paged_attention_residual(in[0], in[1], in[2], tables, Tensor::from_ints({70}, d),
                                                              16, 70, {1, 1, 4, 2, 16, 0, 0.25f, 0.0f}, in[3], in[4])};
               }});
  t.push_back({"paged_attention_residual with a low-rank update and a window",
               {{1, 64}, {128, 32}, {128, 32}, {40, 64}, {1, 40}, {8, 64}, {40, 8}},
               [](Inputs& in, Device d) {
                 const Tensor tables = Tensor::from_ints({7, 2, 5, 0, 1, 3, 6, 4}, d).reshape({1, 8});
                 return Outputs{ops::paged_attention_residual(in[0], in[1], in[2], tables, Tensor::from_ints({70}, d),
                                                              16, 70, {1, 1, 4, 2, 16, 40, 0.25f, 0.0f}, in[3], in[4],
                                                              {{in[5], in[6], 0.75f}})};
               }});
  // LoRA's shrink through its dropout where CUDA fuses it for bf16 (forward in % 8 == 0, backward
  // in % 32 == 0, r <= 16): a rank padded to the mma's 8 columns, a partial 32-column chunk and a
  // draw offset off a Philox block; a rank of 40 (eight column tiles); the backward over chunks of
  // rows, the last one partial, a partial block of warps, dx added and written; a graph replay's
  // device offset.
  t.push_back({"dropout_shrink fused, r = 13", {{301, 200}, {13, 200}},
               [](Inputs& in, Device) {
                 Tensor h;
                 ops::dropout_shrink(in[0], {0.25, 42, 1001, Tensor()}, in[1], h);
                 return Outputs{h};
               }});
  t.push_back({"dropout_shrink fused, r = 40", {{40, 64}, {40, 64}},
               [](Inputs& in, Device) {
                 Tensor h;
                 ops::dropout_shrink(in[0], {0.5, 3, 4096, Tensor()}, in[1], h);
                 return Outputs{h};
               }});
  t.push_back(dropout_backward_case("dropout_shrink_backward fused, r = 16", 701, 160, 16, {0.1, 42, 1003, Tensor()}));
  t.push_back({"dropout_shrink and its backward fused, r = 5, device offset", {{130, 512}, {5, 512}, {130, 5}},
               [](Inputs& in, Device d) {
                 Tensor delta = Tensor::empty({1}, DType::I64);
                 delta.data<int64_t>()[0] = 517;
                 const ops::DropoutDraws draws{0.3, 9, 1000, delta.to(d)};
                 Tensor h, dA = Tensor::zeros({5, 512}, DType::F32, d), dx;
                 ops::dropout_shrink(in[0], draws, in[1], h);
                 ops::dropout_shrink_backward(in[0], draws, in[2], in[1], dA, 2.0f, &dx, false);
                 return Outputs{h, dA, dx};
               }});
  t.push_back(
      dropout_backward_case("dropout_shrink_backward fused, tensor cores, r = 16", 301, 96, 16, {0.2, 5, 2050, Tensor()}));
  t.push_back(
      dropout_backward_case("dropout_shrink_backward, r = 40 (composed on CUDA)", 70, 64, 40, {0.5, 3, 4096, Tensor()}));
  // dA taking the first rows of the gradient (LoRA at a padded rank), fused and composed on CUDA.
  t.push_back(dropout_backward_case("dropout_shrink_backward into dA's 5 of 8 rows", 301, 96, 8,
                                    {0.2, 5, 2050, Tensor()}, 5));
  t.push_back(dropout_backward_case("dropout_shrink_backward into dA's 33 of 40 rows (composed on CUDA)", 70, 64, 40,
                                    {0.5, 3, 4096, Tensor()}, 33));
  // The norm's output written into a block of a wider matrix (LoRA's K-extended input): rows of
  // 16-byte multiples (the vector kernel) and not (the scalar one); the other columns untouched.
  t.push_back({"rmsnorm into a column block", {{6, 40}, {40}},
               [](Inputs& in, Device d) {
                 Tensor wide = Tensor::zeros({6, 56}, in[0].dtype(), d), odd = Tensor::zeros({6, 52}, in[0].dtype(), d);
                 ops::fill_(wide, 3.0f);
                 ops::fill_(odd, -2.0f);
                 const ops::ColumnBlock at8{wide, 8, 40}, at5{odd, 5, 40};
                 Tensor rstd, rstd2;
                 const Tensor y = ops::rmsnorm(in[0], in[1], 1e-5f, &rstd, &at8);
                 const Tensor y2 = ops::rmsnorm(in[0], in[1], 1e-5f, &rstd2, &at5);
                 LR_CHECK(y.raw() == wide.raw() && y2.raw() == odd.raw(), "rmsnorm into a block returns its matrix");
                 // and its backward from a wider dy (the first 40 columns of each)
                 Tensor dw = Tensor::zeros({40}, DType::F32, d), dw2 = Tensor::zeros({40}, DType::F32, d);
                 const Tensor dx = ops::rmsnorm_backward(wide, in[0], in[1], rstd, &dw);
                 const Tensor dx2 = ops::rmsnorm_backward(odd, in[0], in[1], rstd2, &dw2);
                 return Outputs{wide, odd, rstd, rstd2, ops::rmsnorm(in[0], in[1], 1e-5f), dx, dw, dx2, dw2};
               },
               {}, {}, true, false, 1e-3});
  // The fused backward with draws that start on a Philox block (offset % 8 == 0, as training's
  // are): lanes g and g ^ 1 draw two rows' blocks each and swap halves; a partial last step.
  t.push_back(dropout_backward_case("dropout_shrink_backward fused, draws on a Philox block", 301, 96, 16,
                                    {0.2, 5, 4096, Tensor()}));
  // LoRA's K-extension with dropout: three members' shrinks (ranks 8, 16, 16) read x out of the
  // first 96 columns of x_ext [301, 136] and write 0.75 · h into their blocks of it; their
  // backwards read g out of [dx | g] and add into dx's columns. Draws on a Philox block and off it.
  t.push_back({"dropout_shrink and its backward on column blocks", {{301, 136}, {40, 96}, {301, 136}, {40, 96}},
               [](Inputs& in, Device) {
                 const int64_t cols[] = {0, 8, 24, 40};
                 const uint64_t offsets[] = {4096, 1003, 4096 + 2 * 301 * 96};
                 Tensor x_ext = in[0].clone(), dx_ext = in[2].clone(), dA = ops::cast(in[3], DType::F32).clone();
                 for (int i = 0; i < 3; ++i) {
                   const ops::DropoutDraws draws{0.25, 9, offsets[i], Tensor()};
                   const int64_t c = cols[i], w = cols[i + 1] - cols[i];
                   const Tensor A = in[1].slice_rows(c, c + w);
                   ops::dropout_shrink({x_ext, 0, 96}, draws, A, {x_ext, 96 + c, w}, 0.75f);
                   Tensor dA_i = dA.slice_rows(c, c + w);
                   const ops::ColumnBlock dx{dx_ext, 0, 96};
                   ops::dropout_shrink_backward({in[0], 0, 96}, draws, {in[2], 96 + c, w}, A, dA_i, 0.75f, &dx, true);
                 }
                 return Outputs{x_ext, dx_ext, dA};
               }});
  // lora_rows_'s adapters over runs of rows (a prefill's sequences): rows 2 and 5 in no run, the
  // last run's adapter skips the projection. Appended, so that the rows above keep their seeds
  // (decode_stack's bf16 check, 1.6% against its 1% on the seed one row later, is near its limit).
  t.push_back({"lora_runs_", {{7, 7}, {7, 6}, {3, 7}, {6, 3}, {2, 7}, {6, 2}},
               [](Inputs& in, Device) {
                 ops::LoraRows rows{{in[2], Tensor(), in[4]}, {in[3], Tensor(), in[5]}, {0.5f, 2.0f, -1.5f}, {}};
                 ops::lora_runs_(in[1], in[0], rows, {{0, 2, 2}, {3, 5, 0}, {6, 7, 1}});
                 return Outputs{in[1]};
               }});
  // Appended too (the seeds above stay; decode_stack's bf16 check was 5.7% off the CPU with these two
  // rows inserted before it):
  // RoPE on a column block of a wider matrix (q's and k's heads side by side in attention's packed
  // gradient): the block's rows rotate as rope_ rotates them alone, the other columns stay.
  t.push_back({"rope_columns_ on a block of a wider matrix", {{5, 7 * 8}},
               [pos](Inputs& in, Device d) {
                 auto [cos, sin] = rope_table(10, 4);
                 Tensor wide = in[0].clone(), alone = Tensor::empty({5, 3 * 8}, in[0].dtype(), d);
                 ops::copy_columns_(alone, 0, in[0], 8, 3 * 8);
                 ops::rope_columns_({wide, 8, 3 * 8}, 3, Tensor::from_ints(pos, d), cos.to(d), sin.to(d), true);
                 ops::rope_(alone, 3, Tensor::from_ints(pos, d), cos.to(d), sin.to(d), true);
                 Tensor back = Tensor::empty({5, 3 * 8}, in[0].dtype(), d);
                 ops::copy_columns_(back, 0, wide, 8, 3 * 8);
                 const Tensor b = host_f32(back), a = host_f32(alone), w = host_f32(wide), x = host_f32(in[0]);
                 for (int64_t i = 0; i < a.numel(); ++i) EXPECT_EQ(b.f32()[i], a.f32()[i]) << "element " << i;
                 for (int64_t r = 0; r < 5; ++r)  // columns outside the block untouched
                   for (int64_t j : {0, 7, 32, 55}) EXPECT_EQ(w.f32()[r * 56 + j], x.f32()[r * 56 + j]);
                 return Outputs{wide, alone};
               }});
  // attention over q, k, v side by side in one matrix, and its backward into one packed gradient
  t.push_back({"attention_packed and attention_backward_packed", {{5, 16}, {5, 8}},
               [](Inputs& in, Device) {
                 Tensor lse, dqkv;
                 const auto s = attention_shape(0, 0.0f);
                 const Tensor out = ops::attention_packed(in[0], s, &lse);
                 ops::attention_backward_packed(in[1], in[0], out, lse, s, dqkv);
                 return Outputs{out, lse, dqkv};
               },
               {}, {}, true, false, 1e-3});
  // One mask over a shared-input group's stacked A (LoraConfig::dropout_per_input): a backward at
  // rank 40 on column blocks of the wide matrices, composed on CUDA without copying the blocks out;
  // dx added, then written; draws on a Philox block and off it; then dx alone (no dA), both ways.
  t.push_back({"dropout_shrink_backward composed on column blocks", {{301, 136}, {40, 96}, {301, 136}, {40, 96}},
               [](Inputs& in, Device) {
                 Tensor dA = ops::cast(in[3], DType::F32).clone(), added = in[2].clone(), written = in[2].clone();
                 const ops::ColumnBlock x{in[0], 0, 96}, g{in[2], 96, 40}, dx_added{added, 0, 96},
                     dx_written{written, 0, 96};
                 ops::dropout_shrink_backward(x, {0.25, 9, 4096, Tensor()}, g, in[1], dA, 0.75f, &dx_added, true);
                 ops::dropout_shrink_backward(x, {0.25, 9, 1003, Tensor()}, g, in[1], dA, 0.75f, &dx_written, false);
                 // dx alone (no dA): the mask drawn as dx is added to and written
                 Tensor no_dA, alone_added = in[2].clone(), alone_written = in[2].clone();
                 const ops::ColumnBlock a_added{alone_added, 0, 96}, a_written{alone_written, 0, 96};
                 ops::dropout_shrink_backward(x, {0.25, 9, 4096, Tensor()}, g, in[1], no_dA, 0.75f, &a_added, true);
                 ops::dropout_shrink_backward(x, {0.25, 9, 1003, Tensor()}, g, in[1], no_dA, 0.75f, &a_written, false);
                 return Outputs{dA, added, written, alone_added, alone_written};
               }});
  // The attention with o at the Qwen2.5-0.5B shape (14 query heads over 2 KV heads of 64, 896 rows
  // of o in 7 parts; on Hopper a part's 14 blocks are one cluster summing in shared memory) with a
  // rank-16 update; over 600 keys (a warp takes three tiles); and 18 heads, more than a cluster
  // may hold (o's sums through global memory).
  t.push_back(paged_o_case("paged_attention_residual, 14 heads of 64, 896 rows, rank 16", 14, 2, 64, 896, 200, 16));
  t.push_back(paged_o_case("paged_attention_residual over 600 keys (three tiles a warp)", 4, 2, 16, 40, 600, 8));
  t.push_back(paged_o_case("paged_attention_residual, 18 heads", 18, 2, 16, 40, 70, 0));
  // The lm_head with its pick: one row (on CUDA in bf16 its own kernel, 25 packs of K: fewer than a
  // warp's lanes) and three (the two ops); the picks as floats.
  for (const int64_t m : {1, 3})
    t.push_back({"project_argmax of " + std::to_string(m) + " rows", {{m, 200}, {333, 200}},
                 [](Inputs& in, Device d) {
                   Tensor ids = Tensor::empty({in[0].dim(0)}, DType::I32, d);
                   const Tensor y = ops::project_argmax(in[0], in[1], ids);
                   const Tensor host = ids.to(Device::cpu());
                   Tensor f = Tensor::empty({host.numel()});
                   for (int64_t i = 0; i < host.numel(); ++i) f.f32()[i] = static_cast<float>(host.data<int32_t>()[i]);
                   return Outputs{y, f};
                 }});
  // Down's shape of one row (K = 4,864: Qwen2.5-0.5B's intermediate size): on CUDA in bf16 its
  // input staged in one batch of loads, each warp's part of K (four warps a pair) in one batch of
  // five loads a lane.
  t.push_back({"linear_residual of one row over 4,864 inputs", {{1, 4864}, {70, 4864}, {1, 70}},
               [](Inputs& in, Device) { return Outputs{ops::linear_residual(in[0], in[1], in[2])}; }});
  return t;
}

std::vector<Device> device_backends() {
  std::vector<Device> out;
  for (int i = 0; i < std::min(cuda_device_count(), 1); ++i) out.push_back(Device::cuda(i));
  return out;
}

}  // namespace

TEST(OpTable, EveryOpWithABackwardPassesAFiniteDifferenceCheck) {
  uint64_t seed = 1;
  int checked = 0;
  for (const OpCase& c : op_table()) {
    seed += 10;
    if (!c.grad) continue;
    check_gradient(c, seed);
    ++checked;
  }
  EXPECT_GE(checked, 20);
}

TEST(OpTable, EveryOpOnEveryBackendEqualsTheCpu) {
  const std::vector<Device> devices = device_backends();
  if (devices.empty()) GTEST_SKIP() << "no CUDA GPU: the CPU is the only backend";
  uint64_t seed = 1;
  for (const OpCase& c : op_table()) {
    seed += 10;
    for (Device d : devices) {
      check_backend(c, d, DType::F32, seed);
      if (c.bf16) check_backend(c, d, DType::BF16, seed);
    }
  }
}

// decode_stack's one launch against the layer ops on the same GPU and the same bf16 inputs: only
// the orders of the sums differ.
TEST(OpTable, DecodeStackEqualsItsLayerOpsOnTheSameGpu) {
  const std::vector<Device> devices = device_backends();
  if (devices.empty()) GTEST_SKIP() << "no CUDA GPU";
  for (const bool lora : {false, true}) {
    const std::vector<Shape> shapes = decode_stack_inputs(lora);
    Inputs a, b;
    for (size_t i = 0; i < shapes.size(); ++i) {
      const Tensor x = random_f32(shapes[i], 900 + i).to(DType::BF16).to(DType::F32);
      a.push_back(clone_to(x, devices[0], DType::BF16));
      b.push_back(clone_to(x, devices[0], DType::BF16));
    }
    const Outputs got = decode_stack_run(a, devices[0], false), ref = decode_stack_run(b, devices[0], true);
    for (size_t k = 0; k < ref.size(); ++k) {
      const double e = rel_err(got[k], ref[k]);
      std::printf("decode_stack%s output %zu: relative error %.2e\n", lora ? " with LoRA" : "", k, e);
      EXPECT_LE(e, 5e-3) << (lora ? "with LoRA, " : "") << "output " << k;
    }
  }
}

// The dispatch checks an NF4 state against the output it is to fill, for every backend.
TEST(OpTable, Nf4StateThatDoesNotFitItsOutputIsRefused) {
  const model::Nf4Weight w = model::nf4_quantize(random_f32({7, 100}, 3), DType::F32, Device::cpu());
  Tensor wrong = Tensor::empty({7, 101});
  EXPECT_THROW(ops::nf4_dequantize(w.codes, w.absmax_codes, w.absmax_scale, w.absmax_map, w.offset, wrong),
               InternalError);
  Tensor right = Tensor::empty({7, 100});
  EXPECT_THROW(ops::nf4_dequantize(w.absmax_codes, w.codes, w.absmax_scale, w.absmax_map, w.offset, right),
               InternalError);
  EXPECT_NO_THROW(ops::nf4_dequantize(w.codes, w.absmax_codes, w.absmax_scale, w.absmax_map, w.offset, right));
}
