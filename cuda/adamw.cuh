// Fused AdamW on the GPU: one pass updates the fp32 master range, its m, v and its bf16 copy.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace zt::cuda {

/// One AdamW step on n elements, operation by operation the CPU reference (core/adamw.cpp), so the same inputs
/// give the same bits; step is 1-based. param_copy (may be null): the bf16 copy of param, rewritten in the same pass
/// with the new values rounded to nearest even (what cast_to_bf16 would give).
void adamw_update(float* param, const float* grad, float* m, float* v, size_t n, float lr, float beta1, float beta2,
                  float eps, float weight_decay, float grad_scale, int64_t step, __nv_bfloat16* param_copy,
                  cudaStream_t stream);

}  // namespace zt::cuda
