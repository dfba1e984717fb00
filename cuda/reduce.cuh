// Deterministic two-stage column sums (bias and LayerNorm weight gradients): fixed row chunks, then chunks in order.
#pragma once

#include <cuda_runtime.h>

namespace zt::cuda {

/// Row chunking for a two-stage column sum over n_rows rows: a function of n_rows alone (never of the device), so
/// the summation order, and with it every bit of the result, is the same on any GPU.
struct RowChunks {
  int rows_per_chunk;
  int n_chunks;
};
RowChunks row_chunks(int n_rows);

/// Stage 2: dst[c] += sum over chunks k = 0, 1, ... in order of partials[k * ld + c], for c < width.
void sum_column_partials(float* dst, const float* partials, int n_chunks, int ld, int width, cudaStream_t stream);

}  // namespace zt::cuda
