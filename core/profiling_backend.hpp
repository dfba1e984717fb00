// A Backend that forwards every call to another and times each op: where a training step's time goes, per op.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "core/forwarding_backend.hpp"

namespace zt {

/// The totals of one op name over the calls profiled so far.
struct OpProfile {
  long calls = 0;
  double seconds = 0;
  double flops = 0;  ///< useful floating-point operations (the causal half of attention, no recomputation)
  double bytes = 0;  ///< the bytes an op must move at least (each operand read or written once, fp32)
};

/// Wraps `inner` (which must outlive it). Each op is timed from a synchronized backend to a synchronized backend,
/// so the per-op times add the launch and synchronization latency (some microseconds) that an unprofiled step
/// overlaps: profile a few steps for the shares, time unprofiled steps for the throughput. Memory management
/// (alloc, copies to and from the host) passes through untimed; zero, copy, accumulate and the refresh of
/// parameter copies are timed.
class ProfilingBackend final : public ForwardingBackend {
 public:
  explicit ProfilingBackend(Backend& inner, bool enabled = true) : ForwardingBackend(inner), enabled_(enabled) {}

  /// While disabled, calls only forward (no synchronization, nothing counted).
  void set_enabled(bool enabled) { enabled_ = enabled; }
  bool enabled() const { return enabled_; }

  /// Totals per op name since construction or the last reset().
  const std::map<std::string, OpProfile>& ops() const { return ops_; }
  void reset() { ops_.clear(); }
  /// A table, one line per op, slowest first: calls and milliseconds per step, share of the profiled time,
  /// TFLOP/s and GB/s achieved. `n_steps` divides the totals. With a card's peak rates (both > 0), two more
  /// columns: the milliseconds per step the op's flops and bytes would take at those rates (the slower of the
  /// two, a roofline), and measured over predicted.
  std::string report(int n_steps, double peak_tflops = 0, double peak_gbs = 0) const;

  void zero(float* p, size_t n) override;
  void copy(float* dst, const float* src, size_t n) override;
  void refresh_param_copy(const float* params, size_t n) override;

  void embedding_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B, int T,
                         int C) override;
  void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B, int T,
                          int C) override;
  void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias,
                         int N, int C) override;
  void residual_layernorm_forward(float* res, float* out, float* mean, float* rstd, const float* a, const float* b,
                                  const float* weight, const float* bias, int N, int C) override;
  void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                          const float* weight, const float* mean, const float* rstd, int N, int C) override;
  void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int C, int OC,
                      bool weight_transposed) override;
  void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                       const float* weight, int N, int C, int OC, bool weight_transposed) override;
  void attention_forward(float* out, float* att, const float* qkv, int B, int T, int C, int NH) override;
  void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att, int B, int T, int C,
                          int NH) override;
  void attention_cached(float* out, float* k_cache, float* v_cache, const float* qkv, int B, int n_new, int pos,
                        int max_T, int C, int NH) override;
  void matmul_gelu_forward(float* pre, float* out, const float* inp, const float* weight, const float* bias, int N,
                           int C, int OC) override;
  void matmul_gelu_backward(float* dpre, float* dact, float* dweight, float* dbias, const float* dout, const float* inp,
                            const float* weight, const float* pre, int N, int C, int OC) override;
  void gelu_forward(float* out, const float* inp, size_t n) override;
  void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) override;
  void residual_forward(float* out, const float* a, const float* b, size_t n) override;
  void softmax_cross_entropy(float* logits, float* losses, const int32_t* targets, int N, int V, int Vp,
                             float dloss) override;
  void adamw_update(float* param, const float* grad, float* m, float* v, size_t n, float lr, float beta1, float beta2,
                    float eps, float weight_decay, float grad_scale, int64_t step) override;
  double squared_norm(const float* x, size_t n) override;
  void accumulate(float* x, const float* y, size_t n) override;

 private:
  // Runs `op` between two synchronizations and adds its time, flops and bytes to `name`'s totals.
  template <class Op>
  void timed(const char* name, double flops, double bytes, Op&& op);

  bool enabled_;
  std::map<std::string, OpProfile> ops_;
};

}  // namespace zt
