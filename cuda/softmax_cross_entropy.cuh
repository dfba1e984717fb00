// Fused softmax + cross-entropy on the GPU: losses, then the logits overwritten with their gradient.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace zt::cuda {

/// losses[i] = -log softmax(logits[i, :V])[targets[i]]; logits[i] becomes dloss * (softmax - onehot) with the
/// padded columns [V, Vp) zero. A target outside [0, V) makes that row's loss NaN and sets *error_flag to 1
/// (a kernel cannot throw; the backend checks the flag when it next synchronizes). logits16 (may be null) receives
/// the gradient rounded to bf16 (the kept copy the LM head's backward products read); with write_fp32 false the
/// fp32 logits are only read (only the copy is wanted).
void softmax_cross_entropy(float* logits, bool write_fp32, __nv_bfloat16* logits16, float* losses,
                           const int32_t* targets, int N, int V, int Vp, float dloss, int* error_flag,
                           cudaStream_t stream);

}  // namespace zt::cuda
