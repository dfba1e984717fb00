// AdamW step on a flat fp32 range (an optimizer shard), elementwise so any sharding gives the same bits.
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "core/errors.hpp"
#include "core/ops.hpp"

namespace zt::cpu {

// Follows torch.optim.AdamW (foreach=False, torch 1.13 _single_tensor_adamw) operation by operation so that a
// run can be compared with PyTorch to float rounding: scalars are formed in double as Python does and rounded
// to float where PyTorch passes them into a float kernel; the element math is float in the same order:
//   p *= 1 - lr*wd;  m = m*b1 + (1-b1)*g;  v = v*b2 + (1-b2)*g*g;
//   p += -step_size * m / (sqrt(v) / sqrt(1 - b2^t) + eps),  step_size = lr / (1 - b1^t).
void adamw_update(float* param, const float* grad, float* m, float* v, size_t n, float lr, float beta1, float beta2,
                  float eps, float weight_decay, float grad_scale, int64_t step) {
  ZT_CHECK(step >= 1, "adamw_update: step is 1-based (bias correction divides by 1 - beta^step), got {}", step);
  const double t = double(step);
  const float decay = float(1.0 - double(lr) * double(weight_decay));
  const float one_minus_b1 = float(1.0 - double(beta1));
  const float one_minus_b2 = float(1.0 - double(beta2));
  const double bias_correction1 = 1.0 - std::pow(double(beta1), t);
  const double bias_correction2 = 1.0 - std::pow(double(beta2), t);
  const float neg_step_size = float(-(double(lr) / bias_correction1));
  const float bias_correction2_sqrt = float(std::sqrt(bias_correction2));
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < n; ++i) {
    const float g = grad[i] * grad_scale;
    const float p = param[i] * decay;
    const float mi = m[i] * beta1 + one_minus_b1 * g;
    const float vi = v[i] * beta2 + one_minus_b2 * g * g;
    const float denom = std::sqrt(vi) / bias_correction2_sqrt + eps;
    m[i] = mi;
    v[i] = vi;
    param[i] = p + neg_step_size * mi / denom;
  }
}

}  // namespace zt::cpu
