// Fused AdamW on the GPU: one pass updates the fp32 master range and its m, v.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace zt::cuda {

/// One AdamW step on n elements, operation by operation the CPU reference (core/adamw.cpp), so the same inputs
/// give the same bits; step is 1-based.
void adamw_update(float* param, const float* grad, float* m, float* v, size_t n, float lr, float beta1, float beta2,
                  float eps, float weight_decay, float grad_scale, int64_t step, cudaStream_t stream);

}  // namespace zt::cuda
