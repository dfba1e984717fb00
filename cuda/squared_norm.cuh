// Sum of squares on the GPU in double, two-stage and deterministic.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace zt::cuda {

/// Doubles of scratch squared_norm needs for n elements (the stage-1 partials and the result).
size_t squared_norm_scratch_elems(size_t n);
/// Writes sum of double(x[i])^2 to scratch[0]: fixed-size blocks into partials, then the partials in a fixed
/// order; the grouping depends on n alone, so the bits do not depend on the GPU.
void squared_norm(const float* x, size_t n, double* scratch, cudaStream_t stream);

}  // namespace zt::cuda
