// Learning-rate schedule: linear warmup, then cosine decay to min_lr_ratio * peak (as llm.c / nanoGPT).
#pragma once

#include <cmath>

namespace zt {

/// LR for 0-based optimizer step `step` of `max_steps`.
inline double lr_at(int64_t step, double peak, int warmup_steps, int max_steps, double min_lr_ratio) {
  const double min_lr = peak * min_lr_ratio;
  if (step < warmup_steps) return peak * double(step + 1) / double(warmup_steps);
  if (step >= max_steps || max_steps <= warmup_steps) return min_lr;
  const double ratio = double(step - warmup_steps) / double(max_steps - warmup_steps);
  const double coeff = 0.5 * (1.0 + std::cos(M_PI * ratio));
  return min_lr + coeff * (peak - min_lr);
}

}  // namespace zt
