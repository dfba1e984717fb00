// Dense layer out = inp · W (+ bias) and its backward on the GPU, through cuBLASLt.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <memory>

namespace zt::cuda {

/// What the matmuls of one backend share: the cuBLASLt handle, its workspace, the algorithm cache, the bf16 operand
/// copies and the bias-gradient partials. fp32 mode multiplies in true fp32 (CUBLAS_COMPUTE_32F, no TF32): the mode
/// the tests compare with the CPU. bf16 mode rounds the operands to bf16 copies and accumulates in fp32 into fp32
/// outputs (CUBLAS_COMPUTE_32F again), so accumulation (beta = 1) into fp32 gradients loses nothing; an output held
/// in bf16 (--cuda_activations bf16) is written by the product rounded once (a bf16 D). epilogues: fold
/// GELU, its derivative and the bias gradients into the products (--cuda_epilogues on; the forward bias always is).
class MatmulContext {
 public:
  MatmulContext(bool bf16, bool epilogues);
  ~MatmulContext();
  MatmulContext(const MatmulContext&) = delete;
  MatmulContext& operator=(const MatmulContext&) = delete;
  bool bf16() const;
  bool epilogues() const;

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

/// out[N,OC] = inp[N,C] · W + bias; W is [C,OC], or [OC,C] when weight_transposed; bias may be null.
/// inp_bf16, weight_bf16 (bf16 mode; each may be null): inp and W already rounded to bf16 (a kept activation or
/// parameter copy), read instead of rounding them again. out16 (may be null): out is held in bf16 only
/// (--cuda_activations bf16): the product is written there instead, rounded once, with the bias rounded to bf16
/// first (bias_bf16, its kept copy, may be given; the bias epilogue takes D's type).
void matmul_forward(MatmulContext& ctx, float* out, __nv_bfloat16* out16, const float* inp, const void* inp_bf16,
                    const float* weight, const void* weight_bf16, const float* bias, const void* bias_bf16, int N,
                    int C, int OC, bool weight_transposed, cudaStream_t stream);
/// Writes dinp (may be null; dinp16, when given, instead: dinp held in bf16 only, written rounded once); accumulates
/// dweight, dbias (may be null; a deterministic two-stage column sum, or with the epilogues the BGRAD epilogue of the
/// dweight product, summing dout as that product reads it: bf16 in bf16 mode). dout_bf16, inp_bf16, weight_bf16
/// (bf16 mode; each may be null): kept bf16 copies read instead of rounding. dout may be null where dout_bf16 is
/// given (a dout held in bf16 only): the bias gradient then sums the bf16 values.
void matmul_backward(MatmulContext& ctx, float* dinp, __nv_bfloat16* dinp16, float* dweight, float* dbias,
                     const float* dout, const void* dout_bf16, const float* inp, const void* inp_bf16,
                     const float* weight, const void* weight_bf16, int N, int C, int OC, bool weight_transposed,
                     cudaStream_t stream);
/// matmul_forward(pre, ...; W [C,OC]), then out = GELU(pre): with the epilogues one product (GELU_AUX_BIAS: with pre
/// and out both held in bf16 (pre16, out16 given, out_fp32 false) both written in bf16; with pre in fp32, out is
/// written in fp32, then rounded into out16 when given), else the two kernels (out written when out_fp32, out16 when
/// given). pre16 (may be null): pre held in bf16 only. out is valid memory for [N,OC] floats unless both are held.
void matmul_gelu_forward(MatmulContext& ctx, float* pre, __nv_bfloat16* pre16, float* out, bool out_fp32,
                         __nv_bfloat16* out16, const float* inp, const void* inp_bf16, const float* weight,
                         const void* weight_bf16, const float* bias, const void* bias_bf16, int N, int C, int OC,
                         cudaStream_t stream);
/// matmul_backward(dact, dweight, dbias, dout, ...; W [C,OC]), then dpre = GELU'(pre) * dact (rounded into dpre16
/// too when given): with the epilogues one product (DGELU; dact is then not written unless dpre is null and dact is
/// fp32), else the two kernels. dpre may be null where dpre16 is given (dpre held in bf16 only); dact16 and pre16
/// (may be null): dact and pre held in bf16 only (read and written there instead).
void matmul_gelu_backward(MatmulContext& ctx, float* dpre, __nv_bfloat16* dpre16, float* dact, __nv_bfloat16* dact16,
                          float* dweight, float* dbias, const float* dout, const void* dout_bf16, const float* inp,
                          const void* inp_bf16, const float* weight, const void* weight_bf16, const float* pre,
                          const __nv_bfloat16* pre16, int N, int C, int OC, cudaStream_t stream);

}  // namespace zt::cuda
