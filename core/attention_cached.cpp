// Causal attention of new query rows against a K/V cache: what generation runs per token instead of recomputing the
// whole prefix (attention_forward is its uncached twin, and the reference in its test).
#include <cmath>
#include <cstring>
#include <vector>

#include "core/ops.hpp"

namespace zt::cpu {

void attention_cached(float* out, float* k_cache, float* v_cache, const float* qkv, int B, int n_new, int pos,
                      int max_T, int C, int NH) {
  const int hs = C / NH;
  const size_t row3 = size_t(3) * C;
  // The new rows' keys and values go into the cache first: a query row attends to the rows fed with it.
#pragma omp parallel for schedule(static)
  for (int bt = 0; bt < B * n_new; ++bt) {
    const int b = bt / n_new, t = bt % n_new;
    const float* src = qkv + size_t(bt) * row3;
    const size_t dst = (size_t(b) * max_T + size_t(pos + t)) * C;
    std::memcpy(k_cache + dst, src + C, size_t(C) * sizeof(float));
    std::memcpy(v_cache + dst, src + 2 * size_t(C), size_t(C) * sizeof(float));
  }
  const float scale = 1.0f / std::sqrt(float(hs));
  // Every (sequence, head, query row) writes its own slice of out: any thread count gives the same bits.
#pragma omp parallel
  {
    std::vector<float> p(size_t(pos + n_new));
#pragma omp for collapse(3) schedule(static)
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < NH; ++h)
        for (int t = 0; t < n_new; ++t) {
          const float* q = qkv + (size_t(b) * n_new + size_t(t)) * row3 + size_t(h) * hs;
          const float* k = k_cache + size_t(b) * max_T * C + size_t(h) * hs;
          const float* v = v_cache + size_t(b) * max_T * C + size_t(h) * hs;
          const int n = pos + t + 1;  // causal: positions 0 .. pos + t
          // The same arithmetic as attention_forward: unscaled dot products in dimension order, the softmax of
          // (s - max) * scale, then the probability-weighted sum of V rows in position order.
          float mx = 0;
          for (int j = 0; j < n; ++j) {
            float s = 0;
            for (int d = 0; d < hs; ++d) s += q[d] * k[size_t(j) * C + d];
            p[size_t(j)] = s;
            mx = j == 0 || s > mx ? s : mx;
          }
          float sum = 0;
          for (int j = 0; j < n; ++j) {
            p[size_t(j)] = std::exp((p[size_t(j)] - mx) * scale);
            sum += p[size_t(j)];
          }
          const float inv = 1.0f / sum;
          float* o = out + (size_t(b) * n_new + size_t(t)) * C + size_t(h) * hs;
          for (int d = 0; d < hs; ++d) o[d] = 0;
          for (int j = 0; j < n; ++j) {
            const float a = p[size_t(j)] * inv;
            for (int d = 0; d < hs; ++d) o[d] += a * v[size_t(j) * C + d];
          }
        }
  }
}

}  // namespace zt::cpu
