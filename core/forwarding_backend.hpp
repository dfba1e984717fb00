// A Backend that passes every call to another: the base of decorators that change or observe a few calls.
#pragma once

#include <string>

#include "core/backend.hpp"

namespace zt {

/// Forwards every call to `inner` (which must outlive it); a decorator overrides what it changes.
class ForwardingBackend : public Backend {
 public:
  explicit ForwardingBackend(Backend& inner) : inner_(inner) {}

  std::string name() const override { return inner_.name(); }
  bool host_memory() const override { return inner_.host_memory(); }
  float* alloc(size_t n) override { return inner_.alloc(n); }
  int32_t* alloc_int(size_t n) override { return inner_.alloc_int(n); }
  void release(void* p) override { inner_.release(p); }
  void zero(float* p, size_t n) override { inner_.zero(p, n); }
  void copy(float* dst, const float* src, size_t n) override { inner_.copy(dst, src, n); }
  void to_host(float* host_dst, const float* src, size_t n) override { inner_.to_host(host_dst, src, n); }
  void from_host(float* dst, const float* host_src, size_t n) override { inner_.from_host(dst, host_src, n); }
  void tokens_from_host(int32_t* dst, const int32_t* host_src, size_t n) override {
    inner_.tokens_from_host(dst, host_src, n);
  }
  void synchronize() override { inner_.synchronize(); }
  bool records_graphs() const override { return inner_.records_graphs(); }
  void begin_graph() override { inner_.begin_graph(); }
  void end_graph() override { inner_.end_graph(); }
  size_t param_copy_bytes() const override { return inner_.param_copy_bytes(); }
  void keep_param_copy(const float* params, size_t n) override { inner_.keep_param_copy(params, n); }
  void keep_activation_copy(const float* act, size_t n, bool fp32_read) override {
    inner_.keep_activation_copy(act, n, fp32_read);
  }
  bool keep_activation_bf16(const float* act, size_t n) override { return inner_.keep_activation_bf16(act, n); }
  float* alloc_held_bf16(size_t n) override { return inner_.alloc_held_bf16(n); }
  bool holds_residual_bf16() const override { return inner_.holds_residual_bf16(); }
  void refresh_param_copy(const float* params, size_t n) override { inner_.refresh_param_copy(params, n); }

  void embedding_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B, int T,
                         int C) override {
    inner_.embedding_forward(out, tokens, wte, wpe, B, T, C);
  }
  void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B, int T,
                          int C) override {
    inner_.embedding_backward(dwte, dwpe, dout, tokens, B, T, C);
  }
  void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias,
                         int N, int C) override {
    inner_.layernorm_forward(out, mean, rstd, inp, weight, bias, N, C);
  }
  void residual_layernorm_forward(float* res, float* out, float* mean, float* rstd, const float* a, const float* b,
                                  const float* weight, const float* bias, int N, int C) override {
    inner_.residual_layernorm_forward(res, out, mean, rstd, a, b, weight, bias, N, C);
  }
  void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                          const float* weight, const float* mean, const float* rstd, int N, int C) override {
    inner_.layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
  }
  void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int C, int OC,
                      bool weight_transposed) override {
    inner_.matmul_forward(out, inp, weight, bias, N, C, OC, weight_transposed);
  }
  void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                       const float* weight, int N, int C, int OC, bool weight_transposed) override {
    inner_.matmul_backward(dinp, dweight, dbias, dout, inp, weight, N, C, OC, weight_transposed);
  }
  size_t attention_state_elems(int B, int T, int C, int NH) const override {
    return inner_.attention_state_elems(B, T, C, NH);
  }
  void attention_forward(float* out, float* att, const float* qkv, int B, int T, int C, int NH) override {
    inner_.attention_forward(out, att, qkv, B, T, C, NH);
  }
  void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att, int B, int T, int C,
                          int NH) override {
    inner_.attention_backward(dqkv, dout, qkv, att, B, T, C, NH);
  }
  bool supports_attention_cached() const override { return inner_.supports_attention_cached(); }
  void attention_cached(float* out, float* k_cache, float* v_cache, const float* qkv, int B, int n_new, int pos,
                        int max_T, int C, int NH) override {
    inner_.attention_cached(out, k_cache, v_cache, qkv, B, n_new, pos, max_T, C, NH);
  }
  void matmul_gelu_forward(float* pre, float* out, const float* inp, const float* weight, const float* bias, int N,
                           int C, int OC) override {
    inner_.matmul_gelu_forward(pre, out, inp, weight, bias, N, C, OC);
  }
  void matmul_gelu_backward(float* dpre, float* dact, float* dweight, float* dbias, const float* dout, const float* inp,
                            const float* weight, const float* pre, int N, int C, int OC) override {
    inner_.matmul_gelu_backward(dpre, dact, dweight, dbias, dout, inp, weight, pre, N, C, OC);
  }
  void gelu_forward(float* out, const float* inp, size_t n) override { inner_.gelu_forward(out, inp, n); }
  void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) override {
    inner_.gelu_backward(dinp, inp, dout, n);
  }
  void residual_forward(float* out, const float* a, const float* b, size_t n) override {
    inner_.residual_forward(out, a, b, n);
  }
  void softmax_cross_entropy(float* logits, float* losses, const int32_t* targets, int N, int V, int Vp,
                             float dloss) override {
    inner_.softmax_cross_entropy(logits, losses, targets, N, V, Vp, dloss);
  }
  void adamw_update(float* param, const float* grad, float* m, float* v, size_t n, float lr, float beta1, float beta2,
                    float eps, float weight_decay, float grad_scale, int64_t step) override {
    inner_.adamw_update(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, grad_scale, step);
  }
  double squared_norm(const float* x, size_t n) override { return inner_.squared_norm(x, n); }
  void accumulate(float* x, const float* y, size_t n) override { inner_.accumulate(x, y, n); }

 protected:
  Backend& inner_;
};

}  // namespace zt
