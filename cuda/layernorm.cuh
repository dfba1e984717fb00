// LayerNorm on the GPU: forward (saves mean, rstd) and backward (dinp; dweight/dbias by a two-stage column sum).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace zt::cuda {

/// out = (x - mean) * rstd * weight + bias per row of C, eps 1e-5, two-pass variance as the CPU reference.
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias,
                       int N, int C, cudaStream_t stream);
/// Floats of scratch layernorm_backward needs for N rows of C.
size_t layernorm_backward_scratch_elems(int N, int C);
/// Accumulates dinp, dweight, dbias (deterministic: fixed row chunks, then chunks in order).
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, const float* mean, const float* rstd, int N, int C, float* scratch,
                        cudaStream_t stream);

}  // namespace zt::cuda
