// GELU (tanh approximation) on the GPU, written as x * sigmoid(2u) exactly as the CPU reference (core/gelu.cpp).
#include "cuda/cuda_common.cuh"
#include "cuda/gelu.cuh"

namespace zt::cuda {
namespace {

// The constants rounded from double exactly as the CPU reference forms them.
constexpr double kSqrt2OverPi = 0.79788456080286535588;
constexpr double kGeluCubic = 0.044715;
constexpr float kK2 = float(-2 * kSqrt2OverPi), kC3 = float(kGeluCubic);
constexpr float kDk = float(2 * kSqrt2OverPi), kDc3 = float(3 * kGeluCubic);
constexpr int kBlock = 256;

// exp with the CPU's clamp to [-87, 88]: keeps e finite, so e * s below never forms inf * 0.
__device__ inline float exp_clamped(float x) { return expf(fminf(fmaxf(x, -87.0f), 88.0f)); }

// out16 (may be null): the output's kept bf16 copy, the same values rounded to nearest. inp may be held in bf16.
__global__ void gelu_forward_kernel(float* out, __nv_bfloat16* out16, ActIn inp, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const float x = inp[i];
    store_kept(out, out16, i, x / (1.0f + exp_clamped(kK2 * (x + kC3 * x * x * x))));
  }
}

// dinp16 (may be null): dinp's kept bf16 copy. inp and dout may be held in bf16.
__global__ void gelu_backward_kernel(float* dinp, __nv_bfloat16* dinp16, ActIn inp, ActIn dout, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const float x = inp[i];
    const float e = exp_clamped(kK2 * (x + kC3 * x * x * x));  // exp(-2u)
    const float s = 1.0f / (1.0f + e);                         // sigmoid(2u)
    // d/dx [x s] = s + x * 2 s (1 - s) du/dx; s (1 - s) formed as (e s) s, which keeps precision where s ~ 1.
    const float grad = s + x * ((e * s) * s) * kDk * (1.0f + kDc3 * x * x);
    store_kept(dinp, dinp16, i, grad * dout[i]);
  }
}

}  // namespace

void gelu_forward(float* out, __nv_bfloat16* out16, ActIn inp, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  ZT_LAUNCH(gelu_forward_kernel, grid_for(n, kBlock), kBlock, 0, stream)(out, out16, inp, n);
  ZT_CUDA_LAUNCH_CHECK();
}

void gelu_backward(float* dinp, __nv_bfloat16* dinp16, ActIn inp, ActIn dout, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  ZT_LAUNCH(gelu_backward_kernel, grid_for(n, kBlock), kBlock, 0, stream)(dinp, dinp16, inp, dout, n);
  ZT_CUDA_LAUNCH_CHECK();
}

}  // namespace zt::cuda
