// LayerNorm on the GPU: forward (saves mean, rstd) and backward (dinp; dweight/dbias by a two-stage column sum).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "cuda/cuda_common.cuh"

namespace zt::cuda {

/// out = (x - mean) * rstd * weight + bias per row of C, eps 1e-5, two-pass variance as the CPU reference.
/// out16 (may be null): also written with out rounded to bf16 (the kept copy a bf16 matmul reads); out may be null
/// when out16 is given (only the copy is read). inp may be held in bf16 (ActIn).
void layernorm_forward(float* out, __nv_bfloat16* out16, float* mean, float* rstd, ActIn inp, const float* weight,
                       const float* bias, int N, int C, cudaStream_t stream);
/// res = a + b, then layernorm_forward of res in the same kernel: bitwise residual_forward then layernorm_forward.
/// a and b may be held in bf16 (ActIn); res16 (res then null): res held in bf16, written rounded, and the
/// LayerNorm then of the rounded values.
void residual_layernorm_forward(float* res, __nv_bfloat16* res16, float* out, __nv_bfloat16* out16, float* mean,
                                float* rstd, ActIn a, ActIn b, const float* weight, const float* bias, int N, int C,
                                cudaStream_t stream);
/// Floats of scratch layernorm_backward needs for N rows of C.
size_t layernorm_backward_scratch_elems(int N, int C);
/// Accumulates dinp, dweight, dbias (deterministic: fixed row chunks, then chunks in order); dinp16 (may be
/// null) receives the accumulated dinp rounded to bf16; dinp null: dinp held in bf16 in dinp16, accumulated there
/// (read, added to, rounded). dout and inp may be held in bf16 (ActIn).
void layernorm_backward(float* dinp, __nv_bfloat16* dinp16, float* dweight, float* dbias, ActIn dout, ActIn inp,
                        const float* weight, const float* mean, const float* rstd, int N, int C, float* scratch,
                        cudaStream_t stream);

}  // namespace zt::cuda
