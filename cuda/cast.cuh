// fp32 <-> bf16 casts on the GPU: the bf16 operand copies that bf16-mode matmuls read, and held activations.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>

namespace zt::cuda {

/// dst[i] = bf16(src[i]), round to nearest even.
void cast_to_bf16(__nv_bfloat16* dst, const float* src, size_t n, cudaStream_t stream);
/// dst[i] = float(src[i]), exact.
void cast_to_fp32(float* dst, const __nv_bfloat16* src, size_t n, cudaStream_t stream);

}  // namespace zt::cuda
