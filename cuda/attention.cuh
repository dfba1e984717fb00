// Causal multi-head attention on the GPU: flash-style fused forward and backward (the T×T matrix is never stored).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "cuda/cuda_common.cuh"

namespace zt::cuda {

/// Largest head size (C / NH) the kernels take: GPT-2 and all its sizes use 64.
constexpr int kAttentionMaxHeadDim = 128;

/// out[B,T,C] = causal softmax(Q K^T / sqrt(hs)) V per head, qkv[B,T,3C] holding q|k|v. The contract's att buffer
/// [B,NH,T,T] is used as the backward's memory instead of probabilities (attention_state_elems floats): the per-row
/// log-sum-exp at att[0, B*NH*T), when hs + 1 <= T a copy of out at att[B*NH*T, +B*T*C), and for the tensor cores
/// qkv in bf16 after them (256-byte aligned).
/// `tensor_cores`: bf16 products on the tensor cores (attention_tc.cu) where the head size allows (32, 64), else
/// the fp32 kernels. out16 (may be null) receives out rounded to bf16 (the kept copy the c_proj products read); out
/// may be null when out16 is given. fa2: the tensor cores run attention_fa2.cu's kernels (head size 64; the same
/// results and att contents), else attention_tc.cu's. qkv_held (may be null): qkv held in bf16 only
/// (--cuda_activations bf16), read instead of qkv and not copied into att; only where attention_reads_bf16.
void attention_forward(float* out, __nv_bfloat16* out16, float* att, const float* qkv, const __nv_bfloat16* qkv_held,
                       int B, int T, int C, int NH, bool tensor_cores, bool fa2, cudaStream_t stream);
/// Whether the kernels for these sizes read qkv and dout in bf16 (the tensor cores), so they may be held in bf16.
bool attention_reads_bf16(int C, int NH, bool tensor_cores);
/// Floats of att attention_forward writes and attention_backward reads: the row statistics, the output copy when
/// hs + 1 <= T, and, when the tensor cores run, qkv rounded to bf16. Callers allocate att this size (it can exceed
/// B*NH*T*T when T is small).
size_t attention_state_elems(int B, int T, int C, int NH, bool tensor_cores);
/// Floats of scratch attention_backward needs (row sums D; room to recompute out when att could not hold it; dout
/// rounded to bf16 when the tensor cores run).
size_t attention_backward_scratch_elems(int B, int T, int C, int NH, bool tensor_cores);
/// Writes dqkv from dout, qkv and what attention_forward left in att; deterministic (no atomics). dqkv16 (may be
/// null) receives dqkv rounded to bf16 (the kept copy the c_attn backward products read). On the tensor cores it
/// reads the forward's bf16 qkv from att, not qkv: att and qkv must be the forward's, unchanged since. dqkv may be
/// null when dqkv16 is given (dqkv held in bf16 only). dkv_capped: see attention_backward_tc. fa2: as
/// attention_forward's (it must match the forward's). dout, and qkv as qkv_held, may be held in bf16 where
/// attention_reads_bf16 (qkv_held must then be what the forward read).
void attention_backward(float* dqkv, __nv_bfloat16* dqkv16, ActIn dout, const float* qkv, const __nv_bfloat16* qkv_held,
                        const float* att, int B, int T, int C, int NH, bool tensor_cores, bool dkv_capped, bool fa2,
                        float* scratch, cudaStream_t stream);

}  // namespace zt::cuda
