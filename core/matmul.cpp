// Dense layer out = inp · W (+ bias) and its backward, on OpenBLAS gemm (W as [C,OC] or, transposed, [OC,C]).
#include <cblas.h>

#include <cstddef>

#include "core/ops.hpp"

namespace zt::cpu {
namespace {

// Column slice for the bias-gradient reduction: each work item owns whole columns and walks rows in order, so the
// sum has one order for any thread count.
constexpr int kColumnSlice = 64;

// gemm: C[M,N] = alpha * op(A) op(B) + beta * C, row-major, dispatched to sgemm / dgemm by type.
void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
          int ldb, float beta, float* C, int ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K,
              alpha, A, lda, B, ldb, beta, C, ldc);
}
void gemm(bool trans_a, bool trans_b, int M, int N, int K, double alpha, const double* A, int lda, const double* B,
          int ldb, double beta, double* C, int ldc) {
  cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K,
              alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace

template <typename T>
void matmul_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int C, int OC,
                    bool weight_transposed) {
  if (N <= 0 || OC <= 0) return;
  // Seed out with the bias rows and let gemm accumulate (beta = 1): one pass over out instead of two.
  if (bias != nullptr) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; ++i) {
      T* o = out + size_t(i) * OC;
#pragma omp simd
      for (int j = 0; j < OC; ++j) o[j] = bias[j];
    }
  }
  const T beta = bias != nullptr ? T(1) : T(0);
  if (weight_transposed)  // W [OC,C]: out = inp · W^T
    gemm(false, true, N, OC, C, T(1), inp, C, weight, C, beta, out, OC);
  else  // W [C,OC]: out = inp · W
    gemm(false, false, N, OC, C, T(1), inp, C, weight, OC, beta, out, OC);
}

template <typename T>
void matmul_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight, int N, int C,
                     int OC, bool weight_transposed) {
  if (N <= 0) return;
  if (weight_transposed) {
    if (dinp != nullptr)  // dinp[N,C] += dout[N,OC] · W[OC,C]
      gemm(false, false, N, C, OC, T(1), dout, OC, weight, C, T(1), dinp, C);
    // dweight[OC,C] += dout^T · inp
    gemm(true, false, OC, C, N, T(1), dout, OC, inp, C, T(1), dweight, C);
  } else {
    if (dinp != nullptr)  // dinp[N,C] += dout[N,OC] · W[C,OC]^T
      gemm(false, true, N, C, OC, T(1), dout, OC, weight, OC, T(1), dinp, C);
    // dweight[C,OC] += inp^T · dout
    gemm(true, false, C, OC, N, T(1), inp, C, dout, OC, T(1), dweight, OC);
  }
  if (dbias != nullptr) {
    const int n_slices = (OC + kColumnSlice - 1) / kColumnSlice;
#pragma omp parallel for schedule(static)
    for (int s = 0; s < n_slices; ++s) {
      const int j0 = s * kColumnSlice;
      const int j1 = j0 + kColumnSlice < OC ? j0 + kColumnSlice : OC;
      for (int i = 0; i < N; ++i) {
        const T* d = dout + size_t(i) * OC;
#pragma omp simd
        for (int j = j0; j < j1; ++j) dbias[j] += d[j];
      }
    }
  }
}

template void matmul_forward<float>(float*, const float*, const float*, const float*, int, int, int, bool);
template void matmul_forward<double>(double*, const double*, const double*, const double*, int, int, int, bool);
template void matmul_backward<float>(float*, float*, float*, const float*, const float*, const float*, int, int, int,
                                     bool);
template void matmul_backward<double>(double*, double*, double*, const double*, const double*, const double*, int,
                                      int, int, bool);

}  // namespace zt::cpu
