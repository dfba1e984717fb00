// GELU (tanh approximation, as GPT-2) on the GPU: forward, and backward accumulating dinp.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace zt::cuda {

/// out = gelu(inp), evaluated as x * sigmoid(2u) like the CPU reference.
void gelu_forward(float* out, const float* inp, size_t n, cudaStream_t stream);
/// dinp += gelu'(inp) * dout.
void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n, cudaStream_t stream);

}  // namespace zt::cuda
