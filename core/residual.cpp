// Residual connection out = a + b (its backward is the identity, done by the model's gradient routing).
#include <cstddef>

#include "core/ops.hpp"

namespace zt::cpu {

template <typename T>
void residual_forward(T* out, const T* a, const T* b, size_t n) {
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

template void residual_forward<float>(float*, const float*, const float*, size_t);
template void residual_forward<double>(double*, const double*, const double*, size_t);

}  // namespace zt::cpu
