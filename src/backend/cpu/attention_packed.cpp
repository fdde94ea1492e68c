// Attention over q, k, v held side by side in one matrix (ops::attention_packed and its backward):
// on the CPU the column blocks are copied apart, attended as usual and the gradients copied back
// side by side; the values are attention()'s.
#include "backend/cpu/cpu_ops.h"

namespace lowrank::cpu {
namespace {

struct Split {
  Tensor q, k, v;
};

Split split(const Tensor& qkv, const AttentionShape& s) {
  const int64_t rows = qkv.dim(0), wq = s.heads * s.head_dim, wk = s.kv_heads * s.head_dim;
  Split out{Tensor::empty({rows, wq}, qkv.dtype()), Tensor::empty({rows, wk}, qkv.dtype()),
            Tensor::empty({rows, wk}, qkv.dtype())};
  copy_columns_(out.q, 0, qkv, 0, wq);
  copy_columns_(out.k, 0, qkv, wq, wk);
  copy_columns_(out.v, 0, qkv, wq + wk, wk);
  return out;
}

}  // namespace

Tensor attention_packed(const Tensor& qkv, const AttentionShape& s, Tensor* lse) {
  const Split p = split(qkv, s);
  return attention(p.q, p.k, p.v, s, lse);
}

void attention_backward_packed(const Tensor& dout, const Tensor& qkv, const Tensor& out, const Tensor& lse,
                               const AttentionShape& s, Tensor& dqkv) {
  const Split p = split(qkv, s);
  Tensor dq, dk, dv;
  attention_backward(dout, p.q, p.k, p.v, out, lse, s, dq, dk, dv);
  dqkv = Tensor::empty(qkv.shape(), qkv.dtype());
  int64_t col = 0;
  for (const Tensor* t : {&dq, &dk, &dv}) {
    copy_columns_(dqkv, col, *t, 0, t->dim(1));
    col += t->dim(1);
  }
}

}  // namespace lowrank::cpu
