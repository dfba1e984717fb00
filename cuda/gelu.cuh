// GELU (tanh approximation, as GPT-2) on the GPU: forward, and backward writing dinp.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "cuda/cuda_common.cuh"

namespace zt::cuda {

/// out = gelu(inp), evaluated as x * sigmoid(2u) like the CPU reference; out16 (may be null) also receives it
/// rounded to bf16 (the kept copy a bf16 matmul reads); out may be null when out16 is given. inp may be held in bf16.
void gelu_forward(float* out, __nv_bfloat16* out16, ActIn inp, size_t n, cudaStream_t stream);
/// dinp = gelu'(inp) * dout; dinp16 (may be null) also receives it rounded to bf16; dinp may be null when dinp16 is
/// given (dinp held in bf16 only). inp and dout may be held in bf16.
void gelu_backward(float* dinp, __nv_bfloat16* dinp16, ActIn inp, ActIn dout, size_t n, cudaStream_t stream);

}  // namespace zt::cuda
