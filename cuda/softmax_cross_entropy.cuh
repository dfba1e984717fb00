// Fused softmax + cross-entropy on the GPU: losses, then the logits overwritten with their gradient.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/cuda_common.cuh"

namespace zt::cuda {

/// losses[i] = -log softmax(logits[i, :V])[targets[i]]; logits[i] becomes dloss * (softmax - onehot) with the
/// padded columns [V, Vp) zero. A target outside [0, V) makes that row's loss NaN and sets *error_flag to 1
/// (a kernel cannot throw; the backend checks the flag when it next synchronizes). The logits are read from `in`
/// (fp32, or bf16 where they are held in bf16 only); the gradient is written to `out` (fp32; may be null) and
/// rounded to bf16 into out16 (may be null: the kept copy the LM head's backward products read, or the held
/// values themselves, in place: each element is read before its own thread overwrites it).
void softmax_cross_entropy(ActIn in, float* out, __nv_bfloat16* out16, float* losses, const int32_t* targets, int N,
                           int V, int Vp, float dloss, int* error_flag, cudaStream_t stream);

}  // namespace zt::cuda
