// LayerNorm over the last dimension (forward saves mean and rstd, alone or fused after a residual add; backward
// accumulates dinp, dweight, dbias).
#include <cmath>
#include <cstddef>

#include "core/ops.hpp"

namespace zt::cpu {
namespace {

constexpr double kLayerNormEps = 1e-5;

// dweight/dbias are sums over rows: each work item owns a slice of channels and walks the rows in order, so the
// sum has one fixed order for any thread count (no per-thread partials, no atomics).
constexpr int kChannelSlice = 32;

// One row: mean, then the variance about it (two passes: no cancellation when |mean| >> std), then the output.
// layernorm_forward and residual_layernorm_forward share it, so the two give the same bits.
template <typename T>
inline void layernorm_row(T* o, T& mean, T& rstd, const T* x, const T* weight, const T* bias, int C) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int c = 0; c < C; ++c) sum += x[c];
  const T m = sum / T(C);
  T sq = 0;
#pragma omp simd reduction(+ : sq)
  for (int c = 0; c < C; ++c) sq += (x[c] - m) * (x[c] - m);
  const T s = T(1) / std::sqrt(sq / T(C) + T(kLayerNormEps));
#pragma omp simd
  for (int c = 0; c < C; ++c) o[c] = (x[c] - m) * s * weight[c] + bias[c];
  mean = m;
  rstd = s;
}

}  // namespace

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias, int N, int C) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i)
    layernorm_row(out + size_t(i) * C, mean[i], rstd[i], inp + size_t(i) * C, weight, bias, C);
}

template <typename T>
void residual_layernorm_forward(T* res, T* out, T* mean, T* rstd, const T* a, const T* b, const T* weight,
                                const T* bias, int N, int C) {
  // Row by row, so the row just summed is still in cache when it is normalised: one pass over memory, not two.
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i) {
    const size_t off = size_t(i) * C;
    T* r = res + off;
#pragma omp simd
    for (int c = 0; c < C; ++c) r[c] = a[off + c] + b[off + c];
    layernorm_row(out + off, mean[i], rstd[i], static_cast<const T*>(r), weight, bias, C);
  }
}

template <typename T>
void layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight, const T* mean,
                        const T* rstd, int N, int C) {
  // dinp: rows are independent.
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i) {
    const T* x = inp + size_t(i) * C;
    const T* d = dout + size_t(i) * C;
    T* dx = dinp + size_t(i) * C;
    const T m = mean[i], s = rstd[i];
    T dnorm_sum = 0, dnorm_norm_sum = 0;
#pragma omp simd reduction(+ : dnorm_sum, dnorm_norm_sum)
    for (int c = 0; c < C; ++c) {
      const T dnorm = weight[c] * d[c];
      dnorm_sum += dnorm;
      dnorm_norm_sum += dnorm * ((x[c] - m) * s);
    }
    const T dnorm_mean = dnorm_sum / T(C), dnorm_norm_mean = dnorm_norm_sum / T(C);
#pragma omp simd
    for (int c = 0; c < C; ++c) {
      const T norm = (x[c] - m) * s;
      dx[c] += (weight[c] * d[c] - dnorm_mean - norm * dnorm_norm_mean) * s;
    }
  }
  // dweight, dbias: column slices, rows in order.
  const int n_slices = (C + kChannelSlice - 1) / kChannelSlice;
#pragma omp parallel for schedule(static)
  for (int sl = 0; sl < n_slices; ++sl) {
    const int c0 = sl * kChannelSlice;
    const int c1 = c0 + kChannelSlice < C ? c0 + kChannelSlice : C;
    for (int i = 0; i < N; ++i) {
      const T* x = inp + size_t(i) * C;
      const T* d = dout + size_t(i) * C;
      const T m = mean[i], s = rstd[i];
#pragma omp simd
      for (int c = c0; c < c1; ++c) {
        dbias[c] += d[c];
        dweight[c] += d[c] * ((x[c] - m) * s);
      }
    }
  }
}

template void layernorm_forward<float>(float*, float*, float*, const float*, const float*, const float*, int, int);
template void layernorm_forward<double>(double*, double*, double*, const double*, const double*, const double*, int,
                                        int);
template void residual_layernorm_forward<float>(float*, float*, float*, float*, const float*, const float*,
                                                const float*, const float*, int, int);
template void residual_layernorm_forward<double>(double*, double*, double*, double*, const double*, const double*,
                                                 const double*, const double*, int, int);
template void layernorm_backward<float>(float*, float*, float*, const float*, const float*, const float*, const float*,
                                        const float*, int, int);
template void layernorm_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                         const double*, const double*, int, int);

}  // namespace zt::cpu
