// ProfilingBackend: times every op of a wrapped backend and estimates what each must compute and move.
#include "core/profiling_backend.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <utility>
#include <vector>

namespace zt {
namespace {

constexpr double kF32 = 4.0;  // bytes per element of every interface buffer

}  // namespace

template <class Op>
void ProfilingBackend::timed(const char* name, double flops, double bytes, Op&& op) {
  if (!enabled_) {
    std::forward<Op>(op)();
    return;
  }
  inner_.synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  std::forward<Op>(op)();
  inner_.synchronize();
  OpProfile& p = ops_[name];
  p.calls += 1;
  p.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  p.flops += flops;
  p.bytes += bytes;
}

void ProfilingBackend::zero(float* p, size_t n) {
  timed("zero", 0, kF32 * double(n), [&] { inner_.zero(p, n); });
}
void ProfilingBackend::copy(float* dst, const float* src, size_t n) {
  timed("copy", 0, 2 * kF32 * double(n), [&] { inner_.copy(dst, src, n); });
}

void ProfilingBackend::refresh_param_copy(const float* params, size_t n) {
  const double cb = double(inner_.param_copy_bytes());
  timed("refresh_param_copy", 0, (kF32 + cb) * double(n), [&] { inner_.refresh_param_copy(params, n); });
}

void ProfilingBackend::embedding_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                                         int T, int C) {
  const double btc = double(B) * T * C;
  timed("embedding_forward", btc, kF32 * (2 * btc + double(T) * C + double(B) * T),
        [&] { inner_.embedding_forward(out, tokens, wte, wpe, B, T, C); });
}
void ProfilingBackend::embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                                          int T, int C) {
  // dout read once, a dwte row read and written per token, dwpe read and written once.
  const double btc = double(B) * T * C;
  timed("embedding_backward", 2 * btc, kF32 * (3 * btc + 2.0 * T * C + double(B) * T),
        [&] { inner_.embedding_backward(dwte, dwpe, dout, tokens, B, T, C); });
}
void ProfilingBackend::layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                                         const float* bias, int N, int C) {
  const double nc = double(N) * C;
  timed("layernorm_forward", 8 * nc, kF32 * (2 * nc + 2.0 * C + 2.0 * N),
        [&] { inner_.layernorm_forward(out, mean, rstd, inp, weight, bias, N, C); });
}
void ProfilingBackend::residual_layernorm_forward(float* res, float* out, float* mean, float* rstd, const float* a,
                                                  const float* b, const float* weight, const float* bias, int N,
                                                  int C) {
  // a and b read, res and out written: one pass, against three reads and two writes for the two ops apart.
  const double nc = double(N) * C;
  timed("residual_layernorm_forward", 9 * nc, kF32 * (4 * nc + 2.0 * C + 2.0 * N),
        [&] { inner_.residual_layernorm_forward(res, out, mean, rstd, a, b, weight, bias, N, C); });
}
void ProfilingBackend::layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                                          const float* inp, const float* weight, const float* mean, const float* rstd,
                                          int N, int C) {
  const double nc = double(N) * C;
  timed("layernorm_backward", 12 * nc, kF32 * (4 * nc + 5.0 * C + 2.0 * N),
        [&] { inner_.layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C); });
}
void ProfilingBackend::matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                                      int C, int OC, bool weight_transposed) {
  const double n = N, c = C, oc = OC;
  timed("matmul_forward", 2 * n * c * oc, kF32 * (n * c + c * oc + n * oc + (bias ? oc : 0)),
        [&] { inner_.matmul_forward(out, inp, weight, bias, N, C, OC, weight_transposed); });
}
void ProfilingBackend::matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                                       const float* weight, int N, int C, int OC, bool weight_transposed) {
  const double n = N, c = C, oc = OC;
  const double products = (dinp != nullptr ? 1 : 0) + (dweight != nullptr ? 1 : 0);  // each when asked for
  // dout read; for dW the input read and dW read and written; for dX the weight read and dX written (and read by
  // the product's accumulation); dbias read and written.
  const double elems =
      n * oc + (dweight ? n * c + 2 * c * oc : 0) + (dinp ? c * oc + 2 * n * c : 0) + (dbias ? 2 * oc : 0);
  timed("matmul_backward", products * 2 * n * c * oc, kF32 * elems,
        [&] { inner_.matmul_backward(dinp, dweight, dbias, dout, inp, weight, N, C, OC, weight_transposed); });
}
void ProfilingBackend::matmul_gelu_forward(float* pre, float* out, const float* inp, const float* weight,
                                           const float* bias, int N, int C, int OC) {
  // The product's operands and bias read, the pre-activation and GELU's output written: the least either way
  // (the two ops apart also read the pre-activation back).
  const double n = N, c = C, oc = OC;
  timed("matmul_gelu_forward", 2 * n * c * oc, kF32 * (n * c + c * oc + oc + 2 * n * oc),
        [&] { inner_.matmul_gelu_forward(pre, out, inp, weight, bias, N, C, OC); });
}
void ProfilingBackend::matmul_gelu_backward(float* dpre, float* dact, float* dweight, float* dbias, const float* dout,
                                            const float* inp, const float* weight, const float* pre, int N, int C,
                                            int OC) {
  // matmul_backward's least bytes with dinp, plus the pre-activation read (dact never needs to exist).
  const double n = N, c = C, oc = OC;
  const double products = dweight != nullptr ? 2 : 1;
  const double elems = n * oc + (dweight ? n * c + 2 * c * oc : 0) + c * oc + 2 * n * c + (dbias ? 2 * oc : 0);
  timed("matmul_gelu_backward", products * 2 * n * c * oc, kF32 * elems,
        [&] { inner_.matmul_gelu_backward(dpre, dact, dweight, dbias, dout, inp, weight, pre, N, C, OC); });
}
void ProfilingBackend::attention_forward(float* out, float* att, const float* qkv, int B, int T, int C, int NH) {
  // Q K^T and P V, 2 T^2 hs flops each per (batch, head), halved by the causal mask.
  const double flops = 2.0 * B * NH * double(T) * T * (double(C) / NH);
  const double btc = double(B) * T * C;
  timed("attention_forward", flops, kF32 * 4 * btc, [&] { inner_.attention_forward(out, att, qkv, B, T, C, NH); });
}
void ProfilingBackend::attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att, int B,
                                          int T, int C, int NH) {
  // dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q: twice the forward's products (recomputing S not counted).
  const double flops = 4.0 * B * NH * double(T) * T * (double(C) / NH);
  const double btc = double(B) * T * C;
  timed("attention_backward", flops, kF32 * (btc + 3 * btc + 6 * btc),
        [&] { inner_.attention_backward(dqkv, dout, qkv, att, B, T, C, NH); });
}
void ProfilingBackend::attention_cached(float* out, float* k_cache, float* v_cache, const float* qkv, int B, int n_new,
                                        int pos, int max_T, int C, int NH) {
  // Each new row against pos + t + 1 cached rows, for Q K^T and P V: 4 C flops a pair; the cache read once per row.
  const double pairs = double(B) * n_new * (pos + (n_new + 1) / 2.0);
  const double bnc = double(B) * n_new * C;
  timed("attention_cached", 4.0 * pairs * C, kF32 * (5 * bnc + 2 * pairs * C),
        [&] { inner_.attention_cached(out, k_cache, v_cache, qkv, B, n_new, pos, max_T, C, NH); });
}
void ProfilingBackend::gelu_forward(float* out, const float* inp, size_t n) {
  timed("gelu_forward", 0, 2 * kF32 * double(n), [&] { inner_.gelu_forward(out, inp, n); });
}
void ProfilingBackend::gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) {
  timed("gelu_backward", 0, 4 * kF32 * double(n), [&] { inner_.gelu_backward(dinp, inp, dout, n); });
}
void ProfilingBackend::residual_forward(float* out, const float* a, const float* b, size_t n) {
  timed("residual_forward", double(n), 3 * kF32 * double(n), [&] { inner_.residual_forward(out, a, b, n); });
}
void ProfilingBackend::softmax_cross_entropy(float* logits, float* losses, const int32_t* targets, int N, int V, int Vp,
                                             float dloss) {
  const double nv = double(N) * V;
  timed("softmax_cross_entropy", 4 * nv, kF32 * (2 * nv + 2.0 * N),
        [&] { inner_.softmax_cross_entropy(logits, losses, targets, N, V, Vp, dloss); });
}
void ProfilingBackend::adamw_update(float* param, const float* grad, float* m, float* v, size_t n, float lr,
                                    float beta1, float beta2, float eps, float weight_decay, float grad_scale,
                                    int64_t step) {
  // param, m, v read and written, grad read.
  timed("adamw_update", 12 * double(n), 7 * kF32 * double(n),
        [&] { inner_.adamw_update(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, grad_scale, step); });
}
double ProfilingBackend::squared_norm(const float* x, size_t n) {
  double result = 0;
  timed("squared_norm", 2 * double(n), kF32 * double(n), [&] { result = inner_.squared_norm(x, n); });
  return result;
}
void ProfilingBackend::accumulate(float* x, const float* y, size_t n) {
  timed("accumulate", double(n), 3 * kF32 * double(n), [&] { inner_.accumulate(x, y, n); });
}

std::string ProfilingBackend::report(int n_steps, double peak_tflops, double peak_gbs) const {
  std::vector<std::pair<std::string, OpProfile>> rows(ops_.begin(), ops_.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
  OpProfile total;
  for (const auto& row : rows) {
    total.calls += row.second.calls;
    total.seconds += row.second.seconds;
    total.flops += row.second.flops;
    total.bytes += row.second.bytes;
  }
  const double total_s = total.seconds;
  const double steps = n_steps > 0 ? n_steps : 1;
  const bool predict = peak_tflops > 0 && peak_gbs > 0;
  size_t width = 24;  // the op column fits the longest name (residual_layernorm_forward is 26)
  for (const auto& row : rows) width = std::max(width, row.first.size());
  std::string out = fmt::format("{:<{}} {:>10} {:>10} {:>7} {:>9} {:>9}", "op", width, "calls/step", "ms/step", "share",
                                "TFLOP/s", "GB/s");
  out += predict ? fmt::format(" {:>9} {:>9}\n", "pred ms", "meas/pred") : "\n";
  auto line = [&](const std::string& name, const OpProfile& p) {
    const double s = p.seconds > 0 ? p.seconds : 1e-30;
    out += fmt::format("{:<{}} {:>10.1f} {:>10.3f} {:>6.1f}% {:>9.2f} {:>9.1f}", name, width, double(p.calls) / steps,
                       p.seconds * 1e3 / steps, total_s > 0 ? 100.0 * p.seconds / total_s : 0.0, p.flops / s / 1e12,
                       p.bytes / s / 1e9);
    if (!predict) {
      out += "\n";
      return;
    }
    const double predicted_s = std::max(p.flops / (peak_tflops * 1e12), p.bytes / (peak_gbs * 1e9));
    out +=
        fmt::format(" {:>9.3f} {:>9.2f}\n", predicted_s * 1e3 / steps, predicted_s > 0 ? p.seconds / predicted_s : 0.0);
  };
  for (const auto& row : rows) line(row.first, row.second);
  line("total", total);
  return out;
}

}  // namespace zt
