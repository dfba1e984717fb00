// Fused softmax + cross-entropy on the GPU: one block per row; max, sum of exp (in double, as the CPU), gradient.
#include <cmath>

#include "cuda/cuda_common.cuh"
#include "cuda/softmax_cross_entropy.cuh"

namespace zt::cuda {
namespace {

constexpr int kBlock = 512;

// One row: the logits read from in, the gradient written to out (may be null) and out16 (may be null).
__global__ void softmax_cross_entropy_kernel(ActIn in, float* out, __nv_bfloat16* out16, float* losses,
                                             const int32_t* targets, int V, int Vp, float dloss, int* error_flag) {
  __shared__ float shared_f[kWarpSize];
  __shared__ double shared_d[kWarpSize];
  const int i = blockIdx.x;
  const ActIn row = in.at(size_t(i) * Vp);
  const int target = targets[i];
  const bool target_ok = target >= 0 && target < V;

  float mx = -INFINITY;
  for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, row[j]);
  mx = block_max(mx, shared_f);
  // The sum in double, as the CPU reference, so a 50k-entry vocabulary loses nothing to the order of addition.
  double sum = 0.0;
  for (int j = threadIdx.x; j < V; j += blockDim.x) sum += double(expf(row[j] - mx));
  sum = block_sum(sum, shared_d);
  const float target_shifted = target_ok ? row[size_t(target)] - mx : 0.0f;
  __syncthreads();  // row[target] is read by every thread before any thread overwrites it
  if (threadIdx.x == 0) {
    if (target_ok) {
      losses[i] = float(log(sum) - double(target_shifted));
    } else {
      losses[i] = NAN;
      *error_flag = 1;  // a plain store of a constant: any writer order gives the same flag
    }
  }
  const float scale = float(double(dloss) / sum);
  float* row_out = out != nullptr ? out + size_t(i) * Vp : nullptr;
  __nv_bfloat16* row16 = out16 != nullptr ? out16 + size_t(i) * Vp : nullptr;
  for (int j = threadIdx.x; j < Vp; j += blockDim.x) {
    float g = 0.0f;  // padded columns never receive probability
    if (j < V) {
      g = expf(row[j] - mx) * scale;
      if (j == target) g -= dloss;
    }
    store_kept(row_out, row16, size_t(j), g);
  }
}

}  // namespace

void softmax_cross_entropy(ActIn in, float* out, __nv_bfloat16* out16, float* losses, const int32_t* targets, int N,
                           int V, int Vp, float dloss, int* error_flag, cudaStream_t stream) {
  ZT_CHECK(out != nullptr || out16 != nullptr, "softmax_cross_entropy: the gradient must go to the logits or a copy");
  ZT_CHECK(V > 0 && V <= Vp, "softmax_cross_entropy: need 0 < V <= Vp, got V={} Vp={}", V, Vp);
  if (N == 0) return;
  ZT_LAUNCH(softmax_cross_entropy_kernel, N, kBlock, 0, stream)
  (in, out, out16, losses, targets, V, Vp, dloss, error_flag);
  ZT_CUDA_LAUNCH_CHECK();
}

}  // namespace zt::cuda
