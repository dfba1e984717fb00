// Causal multi-head self-attention (forward keeps the softmax probabilities; backward accumulates dqkv).
//
// Work is split over (batch, head) pairs, which write disjoint parts of out / att / dqkv, so any thread count gives
// the same bits. Within a head, the two product shapes that occur are written as small register-blocked kernels
// (no gemm: at T=128 and head_dim=64 the causal mask halves the work and the call overhead would dominate):
//   row_dots:       s[j]  = sum_d x[d] * Yt[d][j]        (scores Q·K^T and dP = dO·V^T, with K, V transposed)
//   row_accumulate: y[d] += sum_i a[i] * X[i][d]         (P·V, dS·K, dS^T·Q, P^T·dO)
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "core/ops.hpp"

namespace zt::cpu {
namespace {

// Scores are produced in blocks of this many columns held in registers across the head_dim loop.
constexpr int kBlock = 16;

int round_up(int n, int m) { return (n + m - 1) / m * m; }

// s[j] = sum_d x[d] * yt[d * ld + j] for j in [0, round_up(n, kBlock)); yt must hold that many columns.
template <typename T>
void row_dots(T* s, const T* x, const T* yt, int ld, int n, int hs) {
  for (int j0 = 0; j0 < n; j0 += kBlock) {
    T acc[kBlock] = {};
    for (int d = 0; d < hs; ++d) {
      const T xd = x[d];
      const T* y = yt + size_t(d) * ld + j0;
#pragma omp simd
      for (int j = 0; j < kBlock; ++j) acc[j] += xd * y[j];
    }
#pragma omp simd
    for (int j = 0; j < kBlock; ++j) s[j0 + j] = acc[j];
  }
}

// y[d] += sum_{i<n} a[i * a_stride] * x[i * ldx + d] for d in [0, hs); i walked in order, four rows at a time.
template <typename T>
void row_accumulate(T* y, const T* a, int a_stride, const T* x, int ldx, int n, int hs) {
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    const T a0 = a[size_t(i) * a_stride], a1 = a[size_t(i + 1) * a_stride];
    const T a2 = a[size_t(i + 2) * a_stride], a3 = a[size_t(i + 3) * a_stride];
    const T* x0 = x + size_t(i) * ldx;
    const T* x1 = x0 + ldx;
    const T* x2 = x1 + ldx;
    const T* x3 = x2 + ldx;
#pragma omp simd
    for (int d = 0; d < hs; ++d) y[d] += (a0 * x0[d] + a1 * x1[d]) + (a2 * x2[d] + a3 * x3[d]);
  }
  for (; i < n; ++i) {
    const T ai = a[size_t(i) * a_stride];
    const T* xi = x + size_t(i) * ldx;
#pragma omp simd
    for (int d = 0; d < hs; ++d) y[d] += ai * xi[d];
  }
}

// dst[d * ld + t] = src[t * src_stride + d]: one head's K or V rows as columns, padding columns zeroed.
template <typename T>
void transpose_head(T* dst, int ld, const T* src, size_t src_stride, int T_, int hs) {
  for (int t = 0; t < T_; ++t) {
    const T* r = src + t * src_stride;
    for (int d = 0; d < hs; ++d) dst[size_t(d) * ld + t] = r[d];
  }
  for (int d = 0; d < hs; ++d)
    for (int t = T_; t < ld; ++t) dst[size_t(d) * ld + t] = T(0);
}

}  // namespace

template <typename T>
void attention_forward(T* out, T* att, const T* qkv, int B, int T_, int C, int NH) {
  const int hs = C / NH;
  const T scale = T(1) / std::sqrt(T(hs));
  const int ld = round_up(T_, kBlock);
  const size_t row3 = size_t(3) * C;
#pragma omp parallel
  {
    std::vector<T> kt(size_t(hs) * ld), srow(ld);
#pragma omp for schedule(static)
    for (int bh = 0; bh < B * NH; ++bh) {
      const int b = bh / NH, h = bh % NH;
      const T* q_base = qkv + size_t(b) * T_ * row3 + size_t(h) * hs;
      const T* k_base = q_base + C;
      const T* v_base = q_base + 2 * size_t(C);
      transpose_head(kt.data(), ld, k_base, row3, T_, hs);
      for (int t = 0; t < T_; ++t) {
        const int n = t + 1;
        row_dots(srow.data(), q_base + t * row3, kt.data(), ld, n, hs);
        T mx = srow[0] * scale;
        for (int j = 0; j < n; ++j) mx = std::max(mx, srow[j] * scale);
        T sum = 0;
        for (int j = 0; j < n; ++j) {
          const T e = std::exp(srow[j] * scale - mx);
          srow[j] = e;
          sum += e;
        }
        const T inv = T(1) / sum;
        T* a = att + (size_t(bh) * T_ + t) * T_;
        for (int j = 0; j < n; ++j) a[j] = srow[j] * inv;
        for (int j = n; j < T_; ++j) a[j] = T(0);
        T* o = out + (size_t(b) * T_ + t) * C + size_t(h) * hs;
        for (int d = 0; d < hs; ++d) o[d] = T(0);
        row_accumulate(o, a, 1, v_base, int(row3), n, hs);
      }
    }
  }
}

template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* att, int B, int T_, int C, int NH) {
  const int hs = C / NH;
  const T scale = T(1) / std::sqrt(T(hs));
  const int ld = round_up(T_, kBlock);
  const size_t row3 = size_t(3) * C;
#pragma omp parallel
  {
    // vt: this head's V transposed; ds: the score gradients dS (scaled), one row per query, for dK's column walk.
    std::vector<T> vt(size_t(hs) * ld), ds(size_t(T_) * ld);
#pragma omp for schedule(static)
    for (int bh = 0; bh < B * NH; ++bh) {
      const int b = bh / NH, h = bh % NH;
      const size_t head_off = size_t(b) * T_ * row3 + size_t(h) * hs;
      const T* q_base = qkv + head_off;
      const T* k_base = q_base + C;
      const T* v_base = q_base + 2 * size_t(C);
      T* dq_base = dqkv + head_off;
      T* dk_base = dq_base + C;
      T* dv_base = dq_base + 2 * size_t(C);
      const T* do_base = dout + size_t(b) * T_ * C + size_t(h) * hs;
      const T* p_base = att + size_t(bh) * T_ * T_;
      transpose_head(vt.data(), ld, v_base, row3, T_, hs);
      for (int t = 0; t < T_; ++t) {
        const int n = t + 1;
        const T* p = p_base + size_t(t) * T_;
        T* dsr = ds.data() + size_t(t) * ld;
        row_dots(dsr, do_base + size_t(t) * C, vt.data(), ld, n, hs);  // dP[t][j] = dO[t]·V[j]
        T dot = 0;
        for (int j = 0; j < n; ++j) dot += p[j] * dsr[j];
        for (int j = 0; j < n; ++j) dsr[j] = p[j] * (dsr[j] - dot) * scale;  // softmax backward, then 1/sqrt(hs)
        row_accumulate(dq_base + t * row3, dsr, 1, k_base, int(row3), n, hs);  // dQ[t] += dS[t]·K
      }
      for (int j = 0; j < T_; ++j) {
        const int n = T_ - j;  // queries t >= j see key j
        row_accumulate(dk_base + j * row3, ds.data() + size_t(j) * ld + j, ld, q_base + j * row3, int(row3), n,
                       hs);  // dK[j] += sum_t dS[t][j] Q[t]
        row_accumulate(dv_base + j * row3, p_base + size_t(j) * T_ + j, T_, do_base + size_t(j) * C, C, n,
                       hs);  // dV[j] += sum_t P[t][j] dO[t]
      }
    }
  }
}

template void attention_forward<float>(float*, float*, const float*, int, int, int, int);
template void attention_forward<double>(double*, double*, const double*, int, int, int, int);
template void attention_backward<float>(float*, const float*, const float*, const float*, int, int, int, int);
template void attention_backward<double>(double*, const double*, const double*, const double*, int, int, int, int);

}  // namespace zt::cpu
