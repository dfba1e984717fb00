// Fused softmax + cross-entropy over the (padded) vocabulary; overwrites the logits with their gradient.
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "core/errors.hpp"
#include "core/ops.hpp"

namespace zt::cpu {

template <typename T>
void softmax_cross_entropy(T* logits, T* losses, const int32_t* targets, int N, int V, int Vp, T dloss) {
  ZT_CHECK(V > 0 && V <= Vp, "softmax_cross_entropy: need 0 < V <= Vp, got V={} Vp={}", V, Vp);
  // Validated before the parallel loop: an exception cannot leave an OpenMP region.
  for (int i = 0; i < N; ++i)
    ZT_CHECK(targets[i] >= 0 && targets[i] < V, "softmax_cross_entropy: target {} at row {} is outside [0, {})",
             targets[i], i, V);
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i) {
    T* row = logits + size_t(i) * Vp;
    const int target = targets[i];
    T mx = row[0];
    for (int j = 1; j < V; ++j) mx = row[j] > mx ? row[j] : mx;
    const T target_shifted = row[target] - mx;
    // exp(x - max) is kept in the row; the sum is accumulated in double so that a 50k-entry vocabulary in float
    // loses nothing to the order of addition.
    double sum = 0;
    for (int j = 0; j < V; ++j) {
      const T e = std::exp(row[j] - mx);
      row[j] = e;
      sum += double(e);
    }
    // loss = -log(exp(target_shifted) / sum)
    losses[i] = T(std::log(sum) - double(target_shifted));
    const T scale = T(double(dloss) / sum);
    for (int j = 0; j < V; ++j) row[j] *= scale;
    row[target] -= dloss;
    for (int j = V; j < Vp; ++j) row[j] = T(0);  // padded columns never receive probability
  }
}

template void softmax_cross_entropy<float>(float*, float*, const int32_t*, int, int, int, float);
template void softmax_cross_entropy<double>(double*, double*, const int32_t*, int, int, int, double);

}  // namespace zt::cpu
