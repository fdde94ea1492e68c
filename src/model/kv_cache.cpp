#include "lowrank/model/kv_cache.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "lowrank/core/error.h"

namespace lowrank::model {

KVCache KVCache::create(const ModelConfig& c, int64_t capacity) {
  KVCache kv;
  kv.capacity = capacity;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    kv.k.push_back(Tensor::empty({capacity, c.kv_dim()}));
    kv.v.push_back(Tensor::empty({capacity, c.kv_dim()}));
  }
  return kv;
}

void KVCache::append(int layer, const Tensor& k_new, const Tensor& v_new) {
  const int64_t n = k_new.dim(0), w = k_new.dim(1);
  LR_CHECK(length + n <= capacity, "KV cache of ", capacity, " positions is full");
  std::memcpy(k[layer].f32() + length * w, k_new.f32(), n * w * sizeof(float));
  std::memcpy(v[layer].f32() + length * w, v_new.f32(), n * w * sizeof(float));
}

Tensor cached_attention(const Tensor& q, const KVCache& cache, int layer, int64_t start, const ops::AttentionShape& s) {
  const int64_t H = s.heads, KV = s.kv_heads, hd = s.head_dim, window = s.window;
  const int64_t n = q.dim(0), group = H / KV;
  Tensor out = Tensor::empty({n, H * hd});
  const float* qp = q.f32();
  const float* kp = cache.k[layer].f32();
  const float* vp = cache.v[layer].f32();
  float* op = out.f32();
#pragma omp parallel if (n * H * (start + n) * hd > 65536)
  {
    std::vector<float> p(start + n);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t pos = start + i, kvh = h / group;
        const int64_t j0 = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
        const float* qi = qp + i * H * hd + h * hd;
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = j0; j <= pos; ++j) {
          const float* kj = kp + j * KV * hd + kvh * hd;
          float dot = 0;
          for (int64_t d = 0; d < hd; ++d) dot += qi[d] * kj[d];
          p[j] = ops::attention_score(dot, s.scale, s.softcap);
          mx = std::max(mx, p[j]);
        }
        double sum = 0;
        for (int64_t j = j0; j <= pos; ++j) {
          p[j] = std::exp(p[j] - mx);
          sum += p[j];
        }
        const float inv = static_cast<float>(1.0 / sum);
        float* oi = op + i * H * hd + h * hd;
        for (int64_t d = 0; d < hd; ++d) oi[d] = 0;
        for (int64_t j = j0; j <= pos; ++j) {
          const float w = p[j] * inv;
          const float* vj = vp + j * KV * hd + kvh * hd;
          for (int64_t d = 0; d < hd; ++d) oi[d] += w * vj[d];
        }
      }
  }
  return out;
}

}  // namespace lowrank::model
