// The CPU reference ops, templated on the scalar (float for training, double for finite-difference tests).
// Layouts are row-major. Backward ops ACCUMULATE (+=) into parameter gradients (dweight, dbias, dwte, dwpe: they
// sum over micro-steps) and into layernorm_backward's dinp (the residual stream's gradient, which the skip path
// also feeds); the other activation gradients (matmul_backward's dinp, gelu_backward's dinp, attention_backward's
// dqkv) are WRITTEN, so nobody zeroes them first (a pass over memory that would only be read back).
// Each op has a CUDA twin of the same name in cuda/.
#pragma once

#include <cstddef>
#include <cstdint>

namespace zt::cpu {

/// out[B,T,C] = wte[tokens[b,t], :] + wpe[t, :].
template <typename T>
void embedding_forward(T* out, const int32_t* tokens, const T* wte, const T* wpe, int B, int T_, int C);
/// dwte[tok] += dout, dwpe[t] += dout; deterministic (no races, fixed order).
template <typename T>
void embedding_backward(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, int B, int T_, int C);

/// Normalises each of N rows of C: out = (x - mean) * rstd * weight + bias, eps = 1e-5; saves mean, rstd.
template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias, int N, int C);
/// Fused residual + LayerNorm: res = a + b, then out, mean, rstd = layernorm_forward(res): the same bits as
/// residual_forward then layernorm_forward, in one pass over memory.
template <typename T>
void residual_layernorm_forward(T* res, T* out, T* mean, T* rstd, const T* a, const T* b, const T* weight,
                                const T* bias, int N, int C);
/// Accumulates dinp, dweight, dbias.
template <typename T>
void layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight, const T* mean,
                        const T* rstd, int N, int C);

/// out[N,OC] = inp[N,C] · W + bias, W stored [C,OC] (GPT-2 Conv1D) or, when weight_transposed, [OC,C]
/// (the tied LM head uses wte [Vp,C]). bias may be null.
template <typename T>
void matmul_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int C, int OC, bool weight_transposed);
/// Writes dinp; accumulates dweight, dbias. Each may be null (that product is skipped): weight is read for dinp only,
/// inp for dweight only (the tied LM head's two products run at different times).
template <typename T>
void matmul_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight, int N, int C, int OC,
                     bool weight_transposed);

/// Causal multi-head attention. qkv[B,T,3C] holds q|k|v; out[B,T,C]; att[B,NH,T,T] receives the softmax
/// probabilities (needed by the backward; entries above the diagonal are zero).
template <typename T>
void attention_forward(T* out, T* att, const T* qkv, int B, int T_, int C, int NH);
/// Writes dqkv.
template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* att, int B, int T_, int C, int NH);

/// Causal attention of n_new query rows at positions [pos, pos + n_new) against a K/V cache (generation): first
/// copies the rows' k and v out of qkv[B, n_new, 3C] into k_cache, v_cache [B, max_T, C] at rows
/// [pos, pos + n_new), then writes out[B, n_new, C]: for each head, softmax(q · K[0 .. pos + t]^T / sqrt(C / NH))
/// · V[0 .. pos + t], the rows attention_forward gives those positions. pos + n_new <= max_T.
void attention_cached(float* out, float* k_cache, float* v_cache, const float* qkv, int B, int n_new, int pos,
                      int max_T, int C, int NH);

/// GELU, tanh approximation (as GPT-2).
template <typename T>
void gelu_forward(T* out, const T* inp, size_t n);
/// Writes dinp.
template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, size_t n);

/// out = a + b.
template <typename T>
void residual_forward(T* out, const T* a, const T* b, size_t n);

/// Fused softmax + cross-entropy over N rows of Vp logits of which the first V are real: losses[i] =
/// -log softmax(logits[i])[targets[i]]; then logits are overwritten with dloss * (softmax - onehot), padded
/// columns set to 0 (they never receive probability).
template <typename T>
void softmax_cross_entropy(T* logits, T* losses, const int32_t* targets, int N, int V, int Vp, T dloss);

/// One AdamW step on n elements. grad is multiplied by grad_scale first (clipping); weight_decay applies
/// decoupled (p -= lr * wd * p); step is 1-based for bias correction.
void adamw_update(float* param, const float* grad, float* m, float* v, size_t n, float lr, float beta1, float beta2,
                  float eps, float weight_decay, float grad_scale, int64_t step);

/// Sum of squares in double, fixed summation order (deterministic for any thread count).
double squared_norm(const float* x, size_t n);

}  // namespace zt::cpu
