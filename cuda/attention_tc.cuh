// Causal attention on the tensor cores (bf16 mode): the flash-style kernels of attention.cu with every product on
// mma.sync m16n8k16 (bf16 operands, fp32 accumulation). Internal to cuda/: attention.cu decides when they run.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace zt::cuda {

/// Whether the tensor-core kernels take this head size (GPT-2 and all its sizes use 64).
bool attention_tc_supports(int hs);

/// As attention.cu's forward: out (and its bf16 copy when out16 is given), optionally out_copy, and lse[bh * T + i]
/// (log-sum-exp of the scaled scores), from qkv16, qkv [B,T,3C] rounded to bf16 (16-byte aligned).
void attention_forward_tc(float* out, __nv_bfloat16* out16, float* out_copy, float* lse, const __nv_bfloat16* qkv16,
                          int B, int T, int C, int NH, cudaStream_t stream);
/// Writes dQ, dK, dV into dqkv (and, when dqkv16 is given, their bf16 copy) from dout16 and qkv16 (dout [B,T,C] and
/// qkv rounded to bf16, 16-byte aligned), lse and dsum[bh * T + i] = sum_d dO * O of the forward's rows.
/// dkv_capped: the dK/dV kernel built for 3 blocks an SM (fewer registers) instead of the compiler's choice; the
/// same source, so the same values (to the ulp where ptxas contracts a multiply-add differently).
void attention_backward_tc(float* dqkv, __nv_bfloat16* dqkv16, const __nv_bfloat16* dout16, const __nv_bfloat16* qkv16,
                           const float* lse, const float* dsum, int B, int T, int C, int NH, bool dkv_capped,
                           cudaStream_t stream);

}  // namespace zt::cuda
