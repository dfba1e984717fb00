// Causal attention at FlashAttention-2's tile sizes (bf16 mode, --cuda_attention fa2): the tensor-core kernels of
// attention_tc.cu laid out as 128-row tiles with cp.async double buffering. Internal to cuda/: attention.cu decides
// when they run.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace zt::cuda {

/// Whether the fa2 kernels take this head size: 64 only (GPT-2's, every size).
bool attention_fa2_supports(int hs);

/// As attention_forward_tc (same arguments, same results, same att contents); throws zt::Error for a head size
/// attention_fa2_supports refuses.
void attention_forward_fa2(float* out, __nv_bfloat16* out16, float* out_copy, float* lse, const __nv_bfloat16* qkv16,
                           int B, int T, int C, int NH, cudaStream_t stream);
/// As attention_backward_tc (without its register-cap switch: these kernels are built for 2 blocks an SM).
void attention_backward_fa2(float* dqkv, __nv_bfloat16* dqkv16, const __nv_bfloat16* dout16, const __nv_bfloat16* qkv16,
                            const float* lse, const float* dsum, int B, int T, int C, int NH, cudaStream_t stream);

}  // namespace zt::cuda
