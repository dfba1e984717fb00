// fp32 <-> bf16 casts on the GPU (round to nearest even), for the bf16 operand copies of the matmuls and the
// activations held in bf16 only.
#include "cuda/cast.cuh"
#include "cuda/cuda_common.cuh"

namespace zt::cuda {
namespace {

constexpr int kBlock = 256;

__global__ void cast_to_bf16_kernel(__nv_bfloat16* dst, const float* src, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    dst[i] = __float2bfloat16_rn(src[i]);
}

__global__ void cast_to_fp32_kernel(float* dst, const __nv_bfloat16* src, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    dst[i] = __bfloat162float(src[i]);
}

}  // namespace

void cast_to_bf16(__nv_bfloat16* dst, const float* src, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  ZT_LAUNCH(cast_to_bf16_kernel, grid_for(n, kBlock), kBlock, 0, stream)(dst, src, n);
  ZT_CUDA_LAUNCH_CHECK();
}

void cast_to_fp32(float* dst, const __nv_bfloat16* src, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  ZT_LAUNCH(cast_to_fp32_kernel, grid_for(n, kBlock), kBlock, 0, stream)(dst, src, n);
  ZT_CUDA_LAUNCH_CHECK();
}

}  // namespace zt::cuda
