// LayerNorm on the GPU: one warp per row for the forward (alone or fused after the residual add) and dinp;
// weight/bias gradients as two-stage column sums.
#include "cuda/cuda_common.cuh"
#include "cuda/layernorm.cuh"
#include "cuda/reduce.cuh"

namespace zt::cuda {
namespace {

constexpr float kLayerNormEps = 1e-5f;
constexpr int kRowBlock = 256;  // 8 warps: 8 rows per block
constexpr int kColumnBlock = 256;

// One warp per row: mean, then the variance about it (two passes, no cancellation when |mean| >> std), as the CPU.
// Both forward kernels end in it, so the fused one gives layernorm_forward's bits. o16 (may be null): the output's
// kept bf16 copy, the same values rounded to nearest; o is null where only the copy is wanted.
__device__ inline void layernorm_row(float* o, __nv_bfloat16* o16, float* mean, float* rstd, ActIn x,
                                     const float* weight, const float* bias, int row, int C, int lane) {
  float sum = 0.0f;
  for (int c = lane; c < C; c += kWarpSize) sum += x[c];
  const float m = warp_sum(sum) / float(C);
  float sq = 0.0f;
  for (int c = lane; c < C; c += kWarpSize) {
    const float d = x[c] - m;
    sq += d * d;
  }
  const float s = 1.0f / sqrtf(warp_sum(sq) / float(C) + kLayerNormEps);
  for (int c = lane; c < C; c += kWarpSize) store_kept(o, o16, size_t(c), (x[c] - m) * s * weight[c] + bias[c]);
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = s;
  }
}

__global__ void layernorm_forward_kernel(float* out, __nv_bfloat16* out16, float* mean, float* rstd, ActIn inp,
                                         const float* weight, const float* bias, int N, int C) {
  const int lane = threadIdx.x % kWarpSize;
  const int row = blockIdx.x * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  if (row >= N) return;
  const size_t off = size_t(row) * C;
  layernorm_row(out != nullptr ? out + off : nullptr, out16 != nullptr ? out16 + off : nullptr, mean, rstd, inp.at(off),
                weight, bias, row, C, lane);
}

// res = a + b, then the LayerNorm of res. Each lane reads back only the res elements it wrote itself (the same
// c = lane + k * 32), so program order makes them visible: no barrier, and the row is still in L1. a and b may be
// held in bf16 (--cuda_activations bf16: b, a projection's output; bf16_residual: a too), and res (res16 given, res
// null): written rounded, and the LayerNorm is then of the rounded values, as stored.
__global__ void residual_layernorm_forward_kernel(float* res, __nv_bfloat16* res16, float* out, __nv_bfloat16* out16,
                                                  float* mean, float* rstd, ActIn a, ActIn b, const float* weight,
                                                  const float* bias, int N, int C) {
  const int lane = threadIdx.x % kWarpSize;
  const int row = blockIdx.x * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  if (row >= N) return;
  const size_t off = size_t(row) * C;
  float* r = res != nullptr ? res + off : nullptr;
  __nv_bfloat16* r16 = res16 != nullptr ? res16 + off : nullptr;
  for (int c = lane; c < C; c += kWarpSize) store_kept(r, r16, size_t(c), a[off + c] + b[off + c]);
  layernorm_row(out != nullptr ? out + off : nullptr, out16 != nullptr ? out16 + off : nullptr, mean, rstd,
                r != nullptr ? ActIn(r) : ActIn(r16), weight, bias, row, C, lane);
}

// dinp, one warp per row: dx += (w*dy - mean(w*dy) - norm * mean(w*dy*norm)) * rstd.
// dinp16 (may be null): dinp's kept bf16 copy, written with the sum just stored; or, dinp null, dinp held in bf16
// (read and written there). dout and inp may be held in bf16.
__global__ void layernorm_backward_dinp_kernel(float* dinp, __nv_bfloat16* dinp16, ActIn dout, ActIn inp,
                                               const float* weight, const float* mean, const float* rstd, int N,
                                               int C) {
  const int lane = threadIdx.x % kWarpSize;
  const int row = blockIdx.x * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  if (row >= N) return;
  const ActIn x = inp.at(size_t(row) * C);
  const ActIn d = dout.at(size_t(row) * C);
  float* dx = dinp != nullptr ? dinp + size_t(row) * C : nullptr;
  const float m = mean[row], s = rstd[row];
  float dnorm_sum = 0.0f, dnorm_norm_sum = 0.0f;
  for (int c = lane; c < C; c += kWarpSize) {
    const float dnorm = weight[c] * d[c];
    dnorm_sum += dnorm;
    dnorm_norm_sum += dnorm * ((x[c] - m) * s);
  }
  const float dnorm_mean = warp_sum(dnorm_sum) / float(C);
  const float dnorm_norm_mean = warp_sum(dnorm_norm_sum) / float(C);
  __nv_bfloat16* dx16 = dinp16 != nullptr ? dinp16 + size_t(row) * C : nullptr;
  const ActIn dx_in = dx != nullptr ? ActIn(dx) : ActIn(dx16);
  for (int c = lane; c < C; c += kWarpSize) {
    const float norm = (x[c] - m) * s;
    store_kept(dx, dx16, size_t(c), dx_in[c] + (weight[c] * d[c] - dnorm_mean - norm * dnorm_norm_mean) * s);
  }
}

// Stage 1 of dbias / dweight: grid (column block, row chunk); each thread sums its column over the chunk's rows
// in order into partials[chunk][0, C) (dbias) and partials[chunk][C, 2C) (dweight).
__global__ void layernorm_backward_partials_kernel(float* partials, ActIn dout, ActIn inp, const float* mean,
                                                   const float* rstd, int N, int C, int rows_per_chunk) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int chunk = blockIdx.y;
  const int r0 = chunk * rows_per_chunk;
  const int r1 = min(N, r0 + rows_per_chunk);
  float db = 0.0f, dw = 0.0f;
  for (int r = r0; r < r1; ++r) {
    const float d = dout[size_t(r) * C + c];
    db += d;
    dw += d * ((inp[size_t(r) * C + c] - mean[r]) * rstd[r]);
  }
  float* p = partials + size_t(chunk) * 2 * C;
  p[c] = db;
  p[C + c] = dw;
}

}  // namespace

void layernorm_forward(float* out, __nv_bfloat16* out16, float* mean, float* rstd, ActIn inp, const float* weight,
                       const float* bias, int N, int C, cudaStream_t stream) {
  if (N == 0 || C == 0) return;
  const int rows_per_block = kRowBlock / kWarpSize;
  ZT_LAUNCH(layernorm_forward_kernel, ceil_div(size_t(N), rows_per_block), kRowBlock, 0, stream)
  (out, out16, mean, rstd, inp, weight, bias, N, C);
  ZT_CUDA_LAUNCH_CHECK();
}

void residual_layernorm_forward(float* res, __nv_bfloat16* res16, float* out, __nv_bfloat16* out16, float* mean,
                                float* rstd, ActIn a, ActIn b, const float* weight, const float* bias, int N, int C,
                                cudaStream_t stream) {
  if (N == 0 || C == 0) return;
  const int rows_per_block = kRowBlock / kWarpSize;
  ZT_LAUNCH(residual_layernorm_forward_kernel, ceil_div(size_t(N), rows_per_block), kRowBlock, 0, stream)
  (res, res16, out, out16, mean, rstd, a, b, weight, bias, N, C);
  ZT_CUDA_LAUNCH_CHECK();
}

size_t layernorm_backward_scratch_elems(int N, int C) { return size_t(row_chunks(N).n_chunks) * 2 * size_t(C); }

void layernorm_backward(float* dinp, __nv_bfloat16* dinp16, float* dweight, float* dbias, ActIn dout, ActIn inp,
                        const float* weight, const float* mean, const float* rstd, int N, int C, float* scratch,
                        cudaStream_t stream) {
  if (N == 0 || C == 0) return;
  const int rows_per_block = kRowBlock / kWarpSize;
  ZT_LAUNCH(layernorm_backward_dinp_kernel, ceil_div(size_t(N), rows_per_block), kRowBlock, 0, stream)
  (dinp, dinp16, dout, inp, weight, mean, rstd, N, C);
  ZT_CUDA_LAUNCH_CHECK();
  const RowChunks chunks = row_chunks(N);
  const dim3 grid(unsigned(ceil_div(size_t(C), kColumnBlock)), unsigned(chunks.n_chunks));
  ZT_LAUNCH(layernorm_backward_partials_kernel, grid, kColumnBlock, 0, stream)
  (scratch, dout, inp, mean, rstd, N, C, chunks.rows_per_chunk);
  ZT_CUDA_LAUNCH_CHECK();
  sum_column_partials(dbias, scratch, chunks.n_chunks, 2 * C, C, stream);
  sum_column_partials(dweight, scratch + C, chunks.n_chunks, 2 * C, C, stream);
}

}  // namespace zt::cuda
