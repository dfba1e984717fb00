// Dense layer out = inp · W (+ bias) and its backward, on OpenBLAS gemm (W as [C,OC] or, transposed, [OC,C]).
//
// Threading is ours, not OpenBLAS's: every product is cut into a grid of output tiles whose shape depends only on
// the matrix shape, OpenMP threads take whole tiles, and each tile is one single-threaded gemm. A tile's bits
// therefore do not depend on the thread count, whereas OpenBLAS 0.3.21's own threading changes a few percent of
// the output bits between 1 and 2 threads (measured for every GPT-2 shape). It also keeps OpenBLAS's spinning
// worker pool from competing with the OpenMP loops of the other ops for the same cores.
#include <cblas.h>

#include <cstddef>

#include "core/ops.hpp"

namespace zt::cpu {
namespace {

// Output tile edge: large enough that re-packing the operands per tile costs ~2% of the multiply at K >= 256,
// small enough that the benchmark shapes (1024 x 256 .. 1024 x 1024) give 16..64 tiles to share out.
constexpr int kTile = 128;

// Column slice for the bias-gradient reduction: each work item owns whole columns and walks rows in order, so the
// sum has one order for any thread count.
constexpr int kColumnSlice = 64;

// One output row (generation feeds one token at a time) is a matrix-vector product: gemv streams the weight once,
// where gemm would first pack it, a copy as large as the product itself. Returns false for any other product.
template <typename T, typename Gemv>
bool row_product(Gemv gemv, bool trans_a, bool trans_b, int M, int N, int K, const T* A, const T* B, int ldb, T beta,
                 T* C) {
  if (M != 1 || trans_a) return false;
  if (trans_b)
    gemv(CblasRowMajor, CblasNoTrans, N, K, T(1), B, ldb, A, 1, beta, C, 1);
  else
    gemv(CblasRowMajor, CblasTrans, K, N, T(1), B, ldb, A, 1, beta, C, 1);
  return true;
}

void gemm_tile(bool trans_a, bool trans_b, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
               float beta, float* C, int ldc) {
  if (row_product(cblas_sgemv, trans_a, trans_b, M, N, K, A, B, ldb, beta, C)) return;
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A,
              lda, B, ldb, beta, C, ldc);
}
void gemm_tile(bool trans_a, bool trans_b, int M, int N, int K, const double* A, int lda, const double* B, int ldb,
               double beta, double* C, int ldc) {
  if (row_product(cblas_dgemv, trans_a, trans_b, M, N, K, A, B, ldb, beta, C)) return;
  cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K, 1.0, A,
              lda, B, ldb, beta, C, ldc);
}

// Keeps OpenBLAS single-threaded while the tiles run (nested threading would oversubscribe and lose
// determinism), restoring the caller's setting afterwards.
class OpenblasSingleThread {
 public:
  OpenblasSingleThread() : saved_(openblas_get_num_threads()) {
    if (saved_ != 1) openblas_set_num_threads(1);
  }
  ~OpenblasSingleThread() {
    if (saved_ != 1) openblas_set_num_threads(saved_);
  }
  OpenblasSingleThread(const OpenblasSingleThread&) = delete;
  OpenblasSingleThread& operator=(const OpenblasSingleThread&) = delete;

 private:
  int saved_;
};

// C[M,N] = op(A) op(B) + beta * C, row-major, as a grid of kTile x kTile output tiles shared among the threads.
// When bias is given, each tile is first filled with the bias row (then beta must be 1).
template <typename T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, const T* A, int lda, const T* B, int ldb, T beta, T* C,
          int ldc, const T* bias = nullptr) {
  if (M <= 0 || N <= 0) return;
  const int tiles_m = (M + kTile - 1) / kTile, tiles_n = (N + kTile - 1) / kTile;
  OpenblasSingleThread single;
#pragma omp parallel for schedule(static)
  for (int tile = 0; tile < tiles_m * tiles_n; ++tile) {
    const int i0 = tile / tiles_n * kTile, j0 = tile % tiles_n * kTile;
    const int m = M - i0 < kTile ? M - i0 : kTile, n = N - j0 < kTile ? N - j0 : kTile;
    T* c = C + size_t(i0) * ldc + j0;
    if (bias != nullptr) {
      for (int i = 0; i < m; ++i) {
        T* row = c + size_t(i) * ldc;
#pragma omp simd
        for (int j = 0; j < n; ++j) row[j] = bias[j0 + j];
      }
    }
    if (K <= 0) {  // an empty product: C = beta * C, and beta = 0 means C is not read (BLAS convention)
      for (int i = 0; i < m; ++i)
        for (int j = 0; j < n; ++j) c[size_t(i) * ldc + j] = beta == T(0) ? T(0) : beta * c[size_t(i) * ldc + j];
      continue;
    }
    const T* a = trans_a ? A + i0 : A + size_t(i0) * lda;  // rows i0.. of op(A)
    const T* b = trans_b ? B + size_t(j0) * ldb : B + j0;  // columns j0.. of op(B)
    gemm_tile(trans_a, trans_b, m, n, K, a, lda, b, ldb, beta, c, ldc);
  }
}

}  // namespace

template <typename T>
void matmul_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int C, int OC,
                    bool weight_transposed) {
  // With a bias, out is seeded with it per tile and gemm accumulates (beta = 1): one pass over out.
  const T beta = bias != nullptr ? T(1) : T(0);
  if (weight_transposed)  // W [OC,C]: out = inp · W^T
    gemm(false, true, N, OC, C, inp, C, weight, C, beta, out, OC, bias);
  else  // W [C,OC]: out = inp · W
    gemm(false, false, N, OC, C, inp, C, weight, OC, beta, out, OC, bias);
}

template <typename T>
void matmul_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight, int N, int C, int OC,
                     bool weight_transposed) {
  if (weight_transposed) {
    if (dinp != nullptr)  // dinp[N,C] = dout[N,OC] · W[OC,C]
      gemm(false, false, N, C, OC, dout, OC, weight, C, T(0), dinp, C);
    if (dweight != nullptr)  // dweight[OC,C] += dout^T · inp
      gemm(true, false, OC, C, N, dout, OC, inp, C, T(1), dweight, C);
  } else {
    if (dinp != nullptr)  // dinp[N,C] = dout[N,OC] · W[C,OC]^T
      gemm(false, true, N, C, OC, dout, OC, weight, OC, T(0), dinp, C);
    if (dweight != nullptr)  // dweight[C,OC] += inp^T · dout
      gemm(true, false, C, OC, N, inp, C, dout, OC, T(1), dweight, OC);
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
template void matmul_backward<double>(double*, double*, double*, const double*, const double*, const double*, int, int,
                                      int, bool);

}  // namespace zt::cpu
