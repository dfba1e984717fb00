// The backend contract: memory and every op the model needs. CpuBackend is the reference; cuda/ has the twin.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace zt {

/// Every op of the model over buffers in the backend's memory space. Backward ops accumulate (+=) into parameter
/// gradients and layernorm_backward's dinp, and write matmul_backward's dinp, gelu_backward's dinp and
/// attention_backward's dqkv (core/ops.hpp says why).
class Backend {
 public:
  virtual ~Backend() = default;
  /// "cpu" or "cuda".
  virtual std::string name() const = 0;
  /// Whether buffers live in host memory (the comm and checkpoint code then use them directly).
  virtual bool host_memory() const = 0;

  virtual float* alloc(size_t n_elems) = 0;
  virtual int32_t* alloc_int(size_t n_elems) = 0;
  virtual void release(void* p) = 0;
  virtual void zero(float* p, size_t n_elems) = 0;
  virtual void copy(float* dst, const float* src, size_t n_elems) = 0;
  virtual void to_host(float* host_dst, const float* src, size_t n_elems) = 0;
  virtual void from_host(float* dst, const float* host_src, size_t n_elems) = 0;
  virtual void tokens_from_host(int32_t* dst, const int32_t* host_src, size_t n_elems) = 0;
  /// Waits until every op issued so far has finished.
  virtual void synchronize() = 0;

  /// Bytes per element of the low-precision copy of the parameters that this backend's matmuls read (2: the CUDA
  /// backend in bf16 mode), or 0 when they read the fp32 parameters themselves (then the two calls below do
  /// nothing).
  virtual size_t param_copy_bytes() const { return 0; }
  /// Keeps a low-precision copy of the fp32 parameters [params, params + n), made now; params is memory from
  /// alloc, and the copy goes when it is released. Matmuls whose weight lies in a kept range read the copy instead
  /// of rounding the weight per call, and adamw_update on part of a kept range rewrites that part of the copy in
  /// the same pass. Whoever writes the parameters any other way (a collective, a checkpoint load) calls
  /// refresh_param_copy afterwards.
  virtual void keep_param_copy(const float* params, size_t n) {
    (void)params;
    (void)n;
  }
  /// Keeps a low-precision copy of the activation (or activation-gradient) buffer [act, act + n), memory from
  /// alloc, for a matmul to read instead of rounding it per call: matmul_forward's and matmul_backward's inp, and
  /// matmul_backward's dout. These writes of a kept range write its copy too: zero; layernorm_forward's and
  /// residual_layernorm_forward's out; attention_forward's out; gelu_forward's and matmul_gelu_forward's out;
  /// layernorm_backward's dinp; gelu_backward's and matmul_gelu_backward's dpre; attention_backward's dqkv;
  /// softmax_cross_entropy's logits (their gradient). Any other write (a matmul's output, copy, from_host) leaves the
  /// copy stale, so a kept range that a matmul reads must have been written last by one of those. With `fp32_read`
  /// false, nothing but matmuls reads the range after those writes, and a backend that keeps the copy may skip the
  /// forward ops' and softmax_cross_entropy's fp32 writes into it (its fp32 contents are then unspecified; a backend
  /// without a copy writes them as always).
  virtual void keep_activation_copy(const float* act, size_t n, bool fp32_read) {
    (void)act;
    (void)n;
    (void)fp32_read;
  }
  /// Asks the backend to hold the activation (or activation-gradient) buffer [act, act + n), memory from alloc, in
  /// bf16 only; returns whether it does (then keep_activation_copy is not called for it). A held range's fp32
  /// memory is the backend's: every op that writes the range rounds what it writes (once, to nearest even), every op
  /// that reads it (to_host and copy included) reads the rounded values, and its contents are kept rounded when it is
  /// asked for. A backend that computes in fp32 returns false (the CPU reference: rounding is allowed, not required).
  virtual bool keep_activation_bf16(const float* act, size_t n) {
    (void)act;
    (void)n;
    return false;
  }
  /// n floats of activation (or activation-gradient) memory held in bf16 only from the start, zero: what
  /// keep_activation_bf16 makes of a range, over all of it and any part of it, backed by n bf16 values alone. Its
  /// fp32 addresses are the range's names, with no memory behind them (no op touches them as fp32); release() frees
  /// it. Null where the backend does not hold activations in bf16 (then take alloc memory, and ask
  /// keep_activation_bf16 per buffer).
  virtual float* alloc_held_bf16(size_t n) {
    (void)n;
    return nullptr;
  }
  /// Whether the model may hold the residual stream and its gradient in bf16 too (alloc_held_bf16): sums over every
  /// block, which a backend holds only when asked to (--cuda_activations bf16_residual).
  virtual bool holds_residual_bf16() const { return false; }
  /// Rounds [params, params + n), inside a kept range, into its copy again.
  virtual void refresh_param_copy(const float* params, size_t n) {
    (void)params;
    (void)n;
  }

  virtual void embedding_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B, int T,
                                 int C) = 0;
  virtual void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B, int T,
                                  int C) = 0;
  virtual void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                                 const float* bias, int N, int C) = 0;
  /// res = a + b, then layernorm_forward(out, mean, rstd, res, ...): the residual add and the next LayerNorm in one
  /// pass, with the bits of the two ops in turn.
  virtual void residual_layernorm_forward(float* res, float* out, float* mean, float* rstd, const float* a,
                                          const float* b, const float* weight, const float* bias, int N, int C) = 0;
  virtual void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                                  const float* weight, const float* mean, const float* rstd, int N, int C) = 0;
  virtual void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int C,
                              int OC, bool weight_transposed) = 0;
  /// dinp, dweight and dbias may each be null (that product is skipped); weight is read for dinp only, inp for
  /// dweight only.
  virtual void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                               const float* weight, int N, int C, int OC, bool weight_transposed) = 0;
  /// Floats of the `att` buffer attention_forward fills and attention_backward reads: the probabilities
  /// [B,NH,T,T] by default; a backend that keeps something else (the CUDA backend's row statistics, output copy and
  /// bf16 qkv: far less at long sequences, possibly more at short ones) says so.
  virtual size_t attention_state_elems(int B, int T, int C, int NH) const {
    (void)C;
    return size_t(B) * size_t(NH) * size_t(T) * size_t(T);
  }
  virtual void attention_forward(float* out, float* att, const float* qkv, int B, int T, int C, int NH) = 0;
  virtual void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att, int B, int T,
                                  int C, int NH) = 0;
  /// Generation: attention of n_new query rows at positions [pos, pos + n_new) against the K/V cache of earlier
  /// positions (cpu::attention_cached in core/ops.hpp); stores the new rows' k and v in the cache first.
  virtual void attention_cached(float* out, float* k_cache, float* v_cache, const float* qkv, int B, int n_new, int pos,
                                int max_T, int C, int NH) = 0;
  /// Whether attention_cached runs here; where it does not (the CUDA backend has no kernel yet) it throws zt::Error,
  /// and generation recomputes the whole prefix per token instead.
  virtual bool supports_attention_cached() const { return true; }
  virtual void gelu_forward(float* out, const float* inp, size_t n) = 0;
  virtual void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) = 0;
  /// matmul_forward(pre, inp, weight, bias, N, C, OC, false), then gelu_forward(out, pre, N * OC): the MLP's
  /// expansion, which a backend may run as one product with GELU in its epilogue (the CUDA backend's
  /// --cuda_epilogues on; out is then within its GELU tolerance of the two ops, pre the same product).
  virtual void matmul_gelu_forward(float* pre, float* out, const float* inp, const float* weight, const float* bias,
                                   int N, int C, int OC) {
    matmul_forward(pre, inp, weight, bias, N, C, OC, false);
    gelu_forward(out, pre, size_t(N) * size_t(OC));
  }
  /// matmul_backward(dact, dweight, dbias, dout, inp, weight, N, C, OC, false), then gelu_backward(dpre, pre, dact,
  /// N * C): the gradient through the MLP's projection into its GELU's input. dact [N, C] is scratch: a backend
  /// that folds GELU's derivative into the product does not write it.
  virtual void matmul_gelu_backward(float* dpre, float* dact, float* dweight, float* dbias, const float* dout,
                                    const float* inp, const float* weight, const float* pre, int N, int C, int OC) {
    matmul_backward(dact, dweight, dbias, dout, inp, weight, N, C, OC, false);
    gelu_backward(dpre, pre, dact, size_t(N) * size_t(C));
  }
  virtual void residual_forward(float* out, const float* a, const float* b, size_t n) = 0;
  virtual void softmax_cross_entropy(float* logits, float* losses, const int32_t* targets, int N, int V, int Vp,
                                     float dloss) = 0;
  virtual void adamw_update(float* param, const float* grad, float* m, float* v, size_t n, float lr, float beta1,
                            float beta2, float eps, float weight_decay, float grad_scale, int64_t step) = 0;
  virtual double squared_norm(const float* x, size_t n) = 0;
  /// x += y (gradient accumulation across micro-steps).
  virtual void accumulate(float* x, const float* y, size_t n) = 0;

  /// Whether begin_graph / end_graph record and replay (the CUDA backend's --cuda_graphs on); false: they do nothing.
  virtual bool records_graphs() const { return false; }
  /// Opens a graph region: the ops up to end_graph may be recorded and run later, at end_graph, as one replayable
  /// unit (a CUDA graph), with their pointers and by-value arguments as given. The caller promises that, inside the
  /// region, it reads no op result and issues no device work other than through these ops (no comm); calls that
  /// need results (to_host, synchronize, squared_norm) run what was recorded first. Regions do not nest.
  virtual void begin_graph() {}
  /// Closes the region: its ops have been issued (in order, on the backend's stream) when it returns.
  virtual void end_graph() {}
};

/// The CPU reference backend (OpenBLAS + OpenMP); `threads` 0 keeps the current OpenMP setting.
std::unique_ptr<Backend> make_cpu_backend(int threads);

}  // namespace zt
