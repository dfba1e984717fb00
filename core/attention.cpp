// Causal multi-head self-attention (forward keeps the softmax probabilities; backward writes dqkv).
//
// Work is split over (batch, head) pairs, which write disjoint parts of out / att / dqkv, so any thread count gives
// the same bits. Within a head the products are small register-tiled kernels over kRows rows at a time (no gemm:
// at T=128, head_dim=64 the causal mask halves the work and per-call overhead would dominate):
//   tile_dots:       S[r][j]  = sum_d X[r][d] * Yt[d][j]      scores Q·K^T and dP = dO·V^T (K, V transposed)
//   tile_accumulate: Y[r][d] += sum_i A[r][i] * X[i][d]        P·V, dS·K, dS^T·Q and P^T·dO
// Rows of a tile run to the longest row's causal length; the shorter rows read zeros there (att and dS are zero
// above the diagonal), so they gain exact zeros and no masking is needed inside the kernels.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <vector>

#include "core/ops.hpp"

namespace zt::cpu {
namespace {

// The per-head functions are compiled twice, for AVX2+FMA and for the baseline ISA, and picked at load time, so a
// default (portable) build still runs the attention at AVX2 speed where the CPU has it. Results then depend on
// the CPU model (FMA rounding), never on the thread count. flatten inlines the kernels into each clone.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__AVX2__)
#define ZT_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default"), flatten))
#else
#define ZT_CPU_CLONES
#endif

// 32-byte vectors as GCC vector types: the accumulators of a tile must live in registers across the whole
// reduction loop, which a plain T[] array does not (GCC keeps it in memory). The baseline clone splits each into
// two SSE registers.
template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct Simd<double> {
  typedef double type __attribute__((vector_size(32)));
};
template <typename T>
constexpr int kLanes = int(32 / sizeof(T));

// A tile is kRows rows by kVecs vectors: 8 accumulators + 2 operands + 1 broadcast fit the 16 AVX registers, and
// each loaded vector feeds kRows FMAs.
constexpr int kRows = 4;
constexpr int kVecs = 2;
template <typename T>
constexpr int kTileCols = kVecs* kLanes<T>;
// Score rows (and the transposed K / V) are padded to a multiple of kPad >= kTileCols columns.
constexpr int kPad = 16;

int round_up(int n, int m) { return (n + m - 1) / m * m; }

template <typename T>
inline void load(typename Simd<T>::type& v, const T* p) {
  std::memcpy(&v, p, sizeof(v));
}

// S[r][j0 + j] = sum_d X[r][d] * Yt[d][j0 + j] for r < R, j < kTileCols; rows at strides s_stride, x_stride.
template <int R, typename T>
inline void dots_tile(T* s, size_t s_stride, const T* x, size_t x_stride, const T* yt, int ld, int j0, int hs) {
  typedef typename Simd<T>::type V;
  V acc[R][kVecs] = {};
  for (int d = 0; d < hs; ++d) {
    V y[kVecs];
    for (int k = 0; k < kVecs; ++k) load(y[k], yt + size_t(d) * ld + j0 + k * kLanes<T>);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const T xr = x[r * x_stride + d];
      for (int k = 0; k < kVecs; ++k) acc[r][k] += xr * y[k];
    }
  }
  for (int r = 0; r < R; ++r) std::memcpy(s + r * s_stride + j0, acc[r], sizeof(acc[r]));
}

// S[r][j] for j in [0, round_up(n, kTileCols<T>)), which yt (ld columns) must hold.
template <int R, typename T>
inline void tile_dots(T* s, size_t s_stride, const T* x, size_t x_stride, const T* yt, int ld, int n, int hs) {
  for (int j0 = 0; j0 < n; j0 += kTileCols<T>) dots_tile<R>(s, s_stride, x, x_stride, yt, ld, j0, hs);
}

// Y[r][d0 + d] += sum_{i<n} A[r][i] * X[i][d0 + d] for d < NV * kLanes<T>; A[r][i] = a[r * a_row + i * a_col].
template <int R, int NV, typename T>
inline void accumulate_tile(T* y, size_t y_stride, const T* a, size_t a_row, size_t a_col, const T* x, size_t ldx,
                            int n, int d0) {
  typedef typename Simd<T>::type V;
  V acc[R][NV] = {};
  for (int i = 0; i < n; ++i) {
    V xv[NV];
    for (int k = 0; k < NV; ++k) load(xv[k], x + i * ldx + d0 + k * kLanes<T>);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const T ar = a[r * a_row + i * a_col];
      for (int k = 0; k < NV; ++k) acc[r][k] += ar * xv[k];
    }
  }
  for (int r = 0; r < R; ++r) {
    T* yr = y + r * y_stride + d0;
    for (int k = 0; k < NV; ++k) {
      V v;
      load(v, yr + k * kLanes<T>);
      v += acc[r][k];
      std::memcpy(yr + k * kLanes<T>, &v, sizeof(v));
    }
  }
}

// Y[r][d] += sum_{i<n} A[r][i] * X[i][d] for r < R, d < hs, each sum in i order.
template <int R, typename T>
inline void tile_accumulate(T* y, size_t y_stride, const T* a, size_t a_row, size_t a_col, const T* x, size_t ldx,
                            int n, int hs) {
  int d0 = 0;
  for (; d0 + kTileCols<T> <= hs; d0 += kTileCols<T>)
    accumulate_tile<R, kVecs>(y, y_stride, a, a_row, a_col, x, ldx, n, d0);
  for (; d0 + kLanes<T> <= hs; d0 += kLanes<T>) accumulate_tile<R, 1>(y, y_stride, a, a_row, a_col, x, ldx, n, d0);
  for (; d0 < hs; ++d0)  // head sizes that are not a multiple of the vector width
    for (int r = 0; r < R; ++r) {
      T acc = 0;
      for (int i = 0; i < n; ++i) acc += a[r * a_row + i * a_col] * x[i * ldx + d0];
      y[r * y_stride + d0] += acc;
    }
}

// dst[d * ld + t] = src[t * src_stride + d]: one head's K or V rows as columns, padding columns zeroed.
template <typename T>
inline void transpose_head(T* dst, int ld, const T* src, size_t src_stride, int T_, int hs) {
  for (int t = 0; t < T_; ++t) {
    const T* r = src + t * src_stride;
    for (int d = 0; d < hs; ++d) dst[size_t(d) * ld + t] = r[d];
  }
  for (int d = 0; d < hs; ++d)
    for (int t = T_; t < ld; ++t) dst[size_t(d) * ld + t] = T(0);
}

// Forward rows t0 .. t0+R-1 of one head: scores into s (R rows of ld), softmax into att, then out = P·V.
template <int R, typename T>
inline void forward_rows(T* out, size_t out_stride, T* att, const T* q, const T* kt, const T* v, size_t row3, int t0,
                         int T_, int hs, int ld, T scale, T* s) {
  const int n_tile = t0 + R;  // causal length of the tile's last row
  tile_dots<R>(s, size_t(ld), q + t0 * row3, row3, kt, ld, n_tile, hs);
  for (int r = 0; r < R; ++r) {
    const int n = t0 + r + 1;
    T* sr = s + size_t(r) * ld;
    T mx = sr[0];
    for (int j = 1; j < n; ++j) mx = sr[j] > mx ? sr[j] : mx;
    T sum = 0;
    for (int j = 0; j < n; ++j) {
      const T e = std::exp((sr[j] - mx) * scale);  // scale > 0: the max of the scaled scores is mx * scale
      sr[j] = e;
      sum += e;
    }
    const T inv = T(1) / sum;
    T* a = att + size_t(t0 + r) * T_;
    for (int j = 0; j < n; ++j) a[j] = sr[j] * inv;
    for (int j = n; j < T_; ++j) a[j] = T(0);
    T* o = out + (t0 + r) * out_stride;
    for (int d = 0; d < hs; ++d) o[d] = T(0);
  }
  tile_accumulate<R>(out + t0 * out_stride, out_stride, att + size_t(t0) * T_, size_t(T_), 1, v, row3, n_tile, hs);
}

// One (batch, head) pair of the forward: out rows t, att rows t, from q, k, v rows at stride row3.
template <typename T>
ZT_CPU_CLONES void head_forward(T* out, size_t out_stride, T* att, const T* q, const T* k, const T* v, size_t row3,
                                int T_, int hs, T* kt, T* s) {
  const T scale = T(1) / std::sqrt(T(hs));
  const int ld = round_up(T_, kPad);
  transpose_head(kt, ld, k, row3, T_, hs);
  int t0 = 0;
  for (; t0 + kRows <= T_; t0 += kRows)
    forward_rows<kRows>(out, out_stride, att, q, kt, v, row3, t0, T_, hs, ld, scale, s);
  for (; t0 < T_; ++t0) forward_rows<1>(out, out_stride, att, q, kt, v, row3, t0, T_, hs, ld, scale, s);
}

// Backward rows t0 .. t0+R-1 of one head: dS rows (zero above the diagonal) into ds, then dQ += dS·K.
template <int R, typename T>
inline void backward_rows(T* dq, const T* dout, size_t dout_stride, const T* k, const T* vt, size_t row3, const T* att,
                          int t0, int T_, int hs, int ld, T scale, T* ds) {
  const int n_tile = t0 + R;
  T* ds0 = ds + size_t(t0) * ld;
  tile_dots<R>(ds0, size_t(ld), dout + t0 * dout_stride, dout_stride, vt, ld, n_tile, hs);  // dP = dO·V^T
  for (int r = 0; r < R; ++r) {
    const int n = t0 + r + 1;
    const T* p = att + size_t(t0 + r) * T_;
    T* dsr = ds0 + size_t(r) * ld;
    T dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int j = 0; j < n; ++j) dot += p[j] * dsr[j];
    for (int j = 0; j < n; ++j) dsr[j] = p[j] * (dsr[j] - dot) * scale;  // softmax backward, then 1/sqrt(hs)
    for (int j = n; j < ld; ++j) dsr[j] = T(0);
  }
  tile_accumulate<R>(dq + t0 * row3, row3, ds0, size_t(ld), 1, k, row3, n_tile, hs);  // dQ += dS·K
}

// Keys j0 .. j0+R-1 of one head: dK += dS^T·Q and dV += P^T·dO, walking the queries t >= j0.
template <int R, typename T>
inline void backward_keys(T* dk, T* dv, const T* dout, size_t dout_stride, const T* q, size_t row3, const T* att,
                          const T* ds, int j0, int T_, int hs, int ld) {
  const int n = T_ - j0;
  tile_accumulate<R>(dk + j0 * row3, row3, ds + size_t(j0) * ld + j0, 1, size_t(ld), q + j0 * row3, row3, n, hs);
  tile_accumulate<R>(dv + j0 * row3, row3, att + size_t(j0) * T_ + j0, 1, size_t(T_), dout + j0 * dout_stride,
                     dout_stride, n, hs);
}

// One (batch, head) pair of the backward, writing dq, dk, dv (rows at stride row3).
template <typename T>
ZT_CPU_CLONES void head_backward(T* dq, T* dk, T* dv, const T* dout, size_t dout_stride, const T* q, const T* k,
                                 const T* v, size_t row3, const T* att, int T_, int hs, T* vt, T* ds) {
  const T scale = T(1) / std::sqrt(T(hs));
  const int ld = round_up(T_, kPad);
  // dq, dk, dv are the op's outputs, not accumulators: clear this head's slices, then the tiles add into them.
  for (int t = 0; t < T_; ++t)
    for (T* d : {dq, dk, dv}) std::fill_n(d + size_t(t) * row3, hs, T(0));
  transpose_head(vt, ld, v, row3, T_, hs);
  int t0 = 0;
  for (; t0 + kRows <= T_; t0 += kRows)
    backward_rows<kRows>(dq, dout, dout_stride, k, vt, row3, att, t0, T_, hs, ld, scale, ds);
  for (; t0 < T_; ++t0) backward_rows<1>(dq, dout, dout_stride, k, vt, row3, att, t0, T_, hs, ld, scale, ds);
  int j0 = 0;
  for (; j0 + kRows <= T_; j0 += kRows)
    backward_keys<kRows>(dk, dv, dout, dout_stride, q, row3, att, ds, j0, T_, hs, ld);
  for (; j0 < T_; ++j0) backward_keys<1>(dk, dv, dout, dout_stride, q, row3, att, ds, j0, T_, hs, ld);
}

}  // namespace

template <typename T>
void attention_forward(T* out, T* att, const T* qkv, int B, int T_, int C, int NH) {
  const int hs = C / NH;
  const int ld = round_up(T_, kPad);
  const size_t row3 = size_t(3) * C;
#pragma omp parallel
  {
    std::vector<T> kt(size_t(hs) * ld), s(size_t(kRows) * ld);
#pragma omp for schedule(static)
    for (int bh = 0; bh < B * NH; ++bh) {
      const int b = bh / NH, h = bh % NH;
      const T* q = qkv + size_t(b) * T_ * row3 + size_t(h) * hs;
      head_forward(out + size_t(b) * T_ * C + size_t(h) * hs, size_t(C), att + size_t(bh) * T_ * T_, q, q + C,
                   q + 2 * size_t(C), row3, T_, hs, kt.data(), s.data());
    }
  }
}

template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* att, int B, int T_, int C, int NH) {
  const int hs = C / NH;
  const int ld = round_up(T_, kPad);
  const size_t row3 = size_t(3) * C;
#pragma omp parallel
  {
    // vt: this head's V transposed; ds: the score gradients dS (scaled), one row per query, for dK's column walk.
    std::vector<T> vt(size_t(hs) * ld), ds(size_t(T_) * ld);
#pragma omp for schedule(static)
    for (int bh = 0; bh < B * NH; ++bh) {
      const int b = bh / NH, h = bh % NH;
      const size_t off = size_t(b) * T_ * row3 + size_t(h) * hs;
      const T* q = qkv + off;
      T* dq = dqkv + off;
      head_backward(dq, dq + C, dq + 2 * size_t(C), dout + size_t(b) * T_ * C + size_t(h) * hs, size_t(C), q, q + C,
                    q + 2 * size_t(C), row3, att + size_t(bh) * T_ * T_, T_, hs, vt.data(), ds.data());
    }
  }
}

template void attention_forward<float>(float*, float*, const float*, int, int, int, int);
template void attention_forward<double>(double*, double*, const double*, int, int, int, int);
template void attention_backward<float>(float*, const float*, const float*, const float*, int, int, int, int);
template void attention_backward<double>(double*, const double*, const double*, const double*, int, int, int, int);

}  // namespace zt::cpu
