// Fused AdamW on the GPU: the fp32 master range, m, v and the bf16 copy in one pass, bitwise the CPU reference.
//
// The scalars are formed on the host exactly as core/adamw.cpp forms them, and the element math uses the
// round-to-nearest intrinsics so that nvcc cannot contract a*b+c into an FMA: every operation rounds as the CPU's
// (plain IEEE single, no contraction in ISO C++ mode), so a GPU step and a CPU step give the same master weights.
#include <cmath>

#include "cuda/adamw.cuh"
#include "cuda/cuda_common.cuh"

namespace zt::cuda {
namespace {

constexpr int kBlock = 256;

struct AdamwScalars {
  float beta1, beta2, eps, grad_scale, decay, one_minus_b1, one_minus_b2, neg_step_size, bias_correction2_sqrt;
};

__global__ void adamw_update_kernel(float* param, const float* grad, float* m, float* v, size_t n, AdamwScalars k,
                                    __nv_bfloat16* param_copy) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const float g = __fmul_rn(grad[i], k.grad_scale);
    const float p = __fmul_rn(param[i], k.decay);
    const float mi = __fadd_rn(__fmul_rn(m[i], k.beta1), __fmul_rn(k.one_minus_b1, g));
    const float vi = __fadd_rn(__fmul_rn(v[i], k.beta2), __fmul_rn(__fmul_rn(k.one_minus_b2, g), g));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), k.bias_correction2_sqrt), k.eps);
    m[i] = mi;
    v[i] = vi;
    const float updated = __fadd_rn(p, __fdiv_rn(__fmul_rn(k.neg_step_size, mi), denom));
    param[i] = updated;
    if (param_copy != nullptr) param_copy[i] = __float2bfloat16_rn(updated);
  }
}

}  // namespace

void adamw_update(float* param, const float* grad, float* m, float* v, size_t n, float lr, float beta1, float beta2,
                  float eps, float weight_decay, float grad_scale, int64_t step, __nv_bfloat16* param_copy,
                  cudaStream_t stream) {
  ZT_CHECK(step >= 1, "adamw_update: step is 1-based (bias correction divides by 1 - beta^step), got {}", step);
  if (n == 0) return;
  // Scalars in double as PyTorch forms them, rounded to float where it passes them to a float kernel.
  const double t = double(step);
  AdamwScalars k;
  k.beta1 = beta1;
  k.beta2 = beta2;
  k.eps = eps;
  k.grad_scale = grad_scale;
  k.decay = float(1.0 - double(lr) * double(weight_decay));
  k.one_minus_b1 = float(1.0 - double(beta1));
  k.one_minus_b2 = float(1.0 - double(beta2));
  const double bias_correction1 = 1.0 - std::pow(double(beta1), t);
  const double bias_correction2 = 1.0 - std::pow(double(beta2), t);
  k.neg_step_size = float(-(double(lr) / bias_correction1));
  k.bias_correction2_sqrt = float(std::sqrt(bias_correction2));
  ZT_LAUNCH(adamw_update_kernel, grid_for(n, kBlock), kBlock, 0, stream)(param, grad, m, v, n, k, param_copy);
  ZT_CUDA_LAUNCH_CHECK();
}

}  // namespace zt::cuda
