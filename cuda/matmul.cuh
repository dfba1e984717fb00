// Dense layer out = inp · W (+ bias) and its backward on the GPU, through cuBLASLt.
#pragma once

#include <cuda_runtime.h>

#include <memory>

namespace zt::cuda {

/// What the matmuls of one backend share: the cuBLASLt handle, its workspace, the algorithm cache, the bf16 operand
/// copies and the bias-gradient partials. fp32 mode multiplies in true fp32 (CUBLAS_COMPUTE_32F, no TF32): the mode
/// the tests compare with the CPU. bf16 mode rounds the operands to bf16 copies and accumulates in fp32 into fp32
/// outputs (CUBLAS_COMPUTE_32F again), so accumulation (beta = 1) into fp32 gradients loses nothing.
class MatmulContext {
 public:
  explicit MatmulContext(bool bf16);
  ~MatmulContext();
  MatmulContext(const MatmulContext&) = delete;
  MatmulContext& operator=(const MatmulContext&) = delete;
  bool bf16() const;

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

/// out[N,OC] = inp[N,C] · W + bias; W is [C,OC], or [OC,C] when weight_transposed; bias may be null.
/// inp_bf16, weight_bf16 (bf16 mode; each may be null): inp and W already rounded to bf16 (a kept activation or
/// parameter copy), read instead of rounding them again.
void matmul_forward(MatmulContext& ctx, float* out, const float* inp, const void* inp_bf16, const float* weight,
                    const void* weight_bf16, const float* bias, int N, int C, int OC, bool weight_transposed,
                    cudaStream_t stream);
/// Writes dinp (may be null); accumulates dweight, dbias (may be null; a deterministic two-stage column sum).
/// dout_bf16, inp_bf16, weight_bf16 (bf16 mode; each may be null): kept bf16 copies read instead of rounding.
void matmul_backward(MatmulContext& ctx, float* dinp, float* dweight, float* dbias, const float* dout,
                     const void* dout_bf16, const float* inp, const void* inp_bf16, const float* weight,
                     const void* weight_bf16, int N, int C, int OC, bool weight_transposed, cudaStream_t stream);

}  // namespace zt::cuda
