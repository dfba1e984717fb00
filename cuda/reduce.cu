// Deterministic two-stage column sums: the stage-2 kernel shared by the bias and LayerNorm weight gradients.
#include "cuda/cuda_common.cuh"
#include "cuda/reduce.cuh"

namespace zt::cuda {
namespace {

// At least this many rows per chunk (enough work per stage-1 thread), and at most this many chunks (a short
// stage-2 walk per column).
constexpr int kMinRowsPerChunk = 32;
constexpr int kMaxChunks = 256;
constexpr int kBlock = 256;

__global__ void sum_column_partials_kernel(float* dst, const float* partials, int n_chunks, int ld, int width) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= width) return;
  float acc = 0.0f;
  for (int k = 0; k < n_chunks; ++k) acc += partials[size_t(k) * ld + c];
  dst[c] += acc;
}

}  // namespace

RowChunks row_chunks(int n_rows) {
  int rows_per_chunk = (n_rows + kMaxChunks - 1) / kMaxChunks;
  if (rows_per_chunk < kMinRowsPerChunk) rows_per_chunk = kMinRowsPerChunk;
  return RowChunks{rows_per_chunk, n_rows == 0 ? 0 : (n_rows + rows_per_chunk - 1) / rows_per_chunk};
}

void sum_column_partials(float* dst, const float* partials, int n_chunks, int ld, int width, cudaStream_t stream) {
  if (width == 0 || n_chunks == 0) return;
  ZT_LAUNCH(sum_column_partials_kernel, ceil_div(size_t(width), kBlock), kBlock, 0, stream)
  (dst, partials, n_chunks, ld, width);
  ZT_CUDA_LAUNCH_CHECK();
}

}  // namespace zt::cuda
