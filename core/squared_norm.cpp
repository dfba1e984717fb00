// Sum of squares of a float range in double, with a summation order fixed by the length alone.
#include <cstddef>
#include <vector>

#include "core/ops.hpp"

namespace zt::cpu {
namespace {

// Each block is summed on its own into a partial, then the partials in block order: the grouping depends only
// on n, never on the thread count.
constexpr size_t kBlock = 8192;

}  // namespace

double squared_norm(const float* x, size_t n) {
  const size_t n_blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(n_blocks);
#pragma omp parallel for schedule(static)
  for (size_t blk = 0; blk < n_blocks; ++blk) {
    const size_t i0 = blk * kBlock;
    const size_t i1 = i0 + kBlock < n ? i0 + kBlock : n;
    double sum = 0;
#pragma omp simd reduction(+ : sum)
    for (size_t i = i0; i < i1; ++i) sum += double(x[i]) * double(x[i]);
    partial[blk] = sum;
  }
  double total = 0;
  for (size_t blk = 0; blk < n_blocks; ++blk) total += partial[blk];
  return total;
}

}  // namespace zt::cpu
