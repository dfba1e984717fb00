// CpuBackend: the Backend contract over host memory, forwarding to the zt::cpu reference ops.
#include <omp.h>

#include <cstdlib>
#include <cstring>
#include <new>

#include "core/backend.hpp"
#include "core/errors.hpp"
#include "core/ops.hpp"

extern "C" void openblas_set_num_threads(int);

namespace zt {
namespace {

void* aligned_alloc_bytes(size_t n_bytes) {
  if (n_bytes == 0) n_bytes = 64;
  void* p = nullptr;
  ZT_CHECK(posix_memalign(&p, 64, (n_bytes + 63) / 64 * 64) == 0, "out of host memory allocating {} bytes", n_bytes);
  return p;
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) {
    if (threads > 0) omp_set_num_threads(threads);
    // Matmuls split into OpenMP tiles of single-threaded sgemm (bitwise stable across thread counts); an OpenBLAS
    // thread pool of its own would only spin against the OpenMP workers.
    openblas_set_num_threads(1);
  }
  std::string name() const override { return "cpu"; }
  bool host_memory() const override { return true; }
  float* alloc(size_t n) override {
    auto* p = static_cast<float*>(aligned_alloc_bytes(n * sizeof(float)));
    std::memset(p, 0, n * sizeof(float));
    return p;
  }
  int32_t* alloc_int(size_t n) override {
    auto* p = static_cast<int32_t*>(aligned_alloc_bytes(n * sizeof(int32_t)));
    std::memset(p, 0, n * sizeof(int32_t));
    return p;
  }
  void release(void* p) override { std::free(p); }
  void zero(float* p, size_t n) override { std::memset(p, 0, n * sizeof(float)); }
  void copy(float* dst, const float* src, size_t n) override {
    if (dst != src && n) std::memcpy(dst, src, n * sizeof(float));
  }
  void to_host(float* dst, const float* src, size_t n) override { copy(dst, src, n); }
  void from_host(float* dst, const float* src, size_t n) override { copy(dst, src, n); }
  void tokens_from_host(int32_t* dst, const int32_t* src, size_t n) override {
    if (n) std::memcpy(dst, src, n * sizeof(int32_t));
  }
  void synchronize() override {}

  void embedding_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B, int T,
                         int C) override {
    cpu::embedding_forward(out, tokens, wte, wpe, B, T, C);
  }
  void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B, int T,
                          int C) override {
    cpu::embedding_backward(dwte, dwpe, dout, tokens, B, T, C);
  }
  void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias,
                         int N, int C) override {
    cpu::layernorm_forward(out, mean, rstd, inp, weight, bias, N, C);
  }
  void residual_layernorm_forward(float* res, float* out, float* mean, float* rstd, const float* a, const float* b,
                                  const float* weight, const float* bias, int N, int C) override {
    cpu::residual_layernorm_forward(res, out, mean, rstd, a, b, weight, bias, N, C);
  }
  void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                          const float* weight, const float* mean, const float* rstd, int N, int C) override {
    cpu::layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
  }
  void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int C, int OC,
                      bool wt) override {
    cpu::matmul_forward(out, inp, weight, bias, N, C, OC, wt);
  }
  void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                       const float* weight, int N, int C, int OC, bool wt) override {
    cpu::matmul_backward(dinp, dweight, dbias, dout, inp, weight, N, C, OC, wt);
  }
  void attention_forward(float* out, float* att, const float* qkv, int B, int T, int C, int NH) override {
    cpu::attention_forward(out, att, qkv, B, T, C, NH);
  }
  void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att, int B, int T, int C,
                          int NH) override {
    cpu::attention_backward(dqkv, dout, qkv, att, B, T, C, NH);
  }
  void attention_cached(float* out, float* k_cache, float* v_cache, const float* qkv, int B, int n_new, int pos,
                        int max_T, int C, int NH) override {
    cpu::attention_cached(out, k_cache, v_cache, qkv, B, n_new, pos, max_T, C, NH);
  }
  void gelu_forward(float* out, const float* inp, size_t n) override { cpu::gelu_forward(out, inp, n); }
  void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) override {
    cpu::gelu_backward(dinp, inp, dout, n);
  }
  void residual_forward(float* out, const float* a, const float* b, size_t n) override {
    cpu::residual_forward(out, a, b, n);
  }
  void softmax_cross_entropy(float* logits, float* losses, const int32_t* targets, int N, int V, int Vp,
                             float dloss) override {
    cpu::softmax_cross_entropy(logits, losses, targets, N, V, Vp, dloss);
  }
  void adamw_update(float* param, const float* grad, float* m, float* v, size_t n, float lr, float beta1, float beta2,
                    float eps, float wd, float grad_scale, int64_t step) override {
    cpu::adamw_update(param, grad, m, v, n, lr, beta1, beta2, eps, wd, grad_scale, step);
  }
  double squared_norm(const float* x, size_t n) override { return cpu::squared_norm(x, n); }
  void accumulate(float* x, const float* y, size_t n) override {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) x[i] += y[i];
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) { return std::make_unique<CpuBackend>(threads); }

}  // namespace zt
