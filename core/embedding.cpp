// Token + position embedding (forward and its deterministic scatter-add backward), CPU reference.
#include <cstddef>
#include <cstdint>

#include "core/ops.hpp"

namespace zt::cpu {
namespace {

// Channels per work item in the backward: each thread owns whole channel slices of dwte, so repeated tokens
// never race and every element of dwte is summed over tokens in the same (b, t) order for any thread count.
constexpr int kChannelSlice = 32;

}  // namespace

template <typename T>
void embedding_forward(T* out, const int32_t* tokens, const T* wte, const T* wpe, int B, int T_, int C) {
  const long n_rows = long(B) * T_;
#pragma omp parallel for schedule(static)
  for (long row = 0; row < n_rows; ++row) {
    const int t = int(row % T_);
    const T* w_tok = wte + size_t(tokens[row]) * C;
    const T* w_pos = wpe + size_t(t) * C;
    T* o = out + size_t(row) * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) o[c] = w_tok[c] + w_pos[c];
  }
}

template <typename T>
void embedding_backward(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, int B, int T_, int C) {
  // dwpe[t] += sum over b, in b order; rows t are independent.
#pragma omp parallel for schedule(static)
  for (int t = 0; t < T_; ++t) {
    T* dp = dwpe + size_t(t) * C;
    for (int b = 0; b < B; ++b) {
      const T* d = dout + (size_t(b) * T_ + t) * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) dp[c] += d[c];
    }
  }
  // dwte[token] += dout row, parallel over channel slices, tokens walked in order.
  const long n_rows = long(B) * T_;
  const int n_slices = (C + kChannelSlice - 1) / kChannelSlice;
#pragma omp parallel for schedule(static)
  for (int s = 0; s < n_slices; ++s) {
    const int c0 = s * kChannelSlice;
    const int c1 = c0 + kChannelSlice < C ? c0 + kChannelSlice : C;
    for (long row = 0; row < n_rows; ++row) {
      T* dw = dwte + size_t(tokens[row]) * C;
      const T* d = dout + size_t(row) * C;
#pragma omp simd
      for (int c = c0; c < c1; ++c) dw[c] += d[c];
    }
  }
}

template void embedding_forward<float>(float*, const int32_t*, const float*, const float*, int, int, int);
template void embedding_forward<double>(double*, const int32_t*, const double*, const double*, int, int, int);
template void embedding_backward<float>(float*, float*, const float*, const int32_t*, int, int, int);
template void embedding_backward<double>(double*, double*, const double*, const int32_t*, int, int, int);

}  // namespace zt::cpu
