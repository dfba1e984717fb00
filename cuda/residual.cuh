// Residual connection out = a + b on the GPU (also the backend's gradient accumulation x += y).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace zt::cuda {

/// out = a + b elementwise; out may alias a or b.
void residual_forward(float* out, const float* a, const float* b, size_t n, cudaStream_t stream);

}  // namespace zt::cuda
