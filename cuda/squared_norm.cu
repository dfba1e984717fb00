// Sum of squares on the GPU in double: fixed-size blocks into partials, then one block over the partials.
#include "cuda/cuda_common.cuh"
#include "cuda/squared_norm.cuh"

namespace zt::cuda {
namespace {

constexpr int kBlock = 256;
constexpr int kElemsPerThread = 32;
constexpr size_t kElemsPerBlock = size_t(kBlock) * kElemsPerThread;
constexpr int kFinalBlock = 1024;

// Block b sums x[b * kElemsPerBlock, +kElemsPerBlock) into partials[b]; thread i takes elements i, i + kBlock, ...
__global__ void squared_norm_partials_kernel(double* partials, const float* x, size_t n) {
  __shared__ double shared[kWarpSize];
  const size_t i0 = blockIdx.x * kElemsPerBlock;
  const size_t i1 = i0 + kElemsPerBlock < n ? i0 + kElemsPerBlock : n;
  double sum = 0.0;
  for (size_t i = i0 + threadIdx.x; i < i1; i += kBlock) sum += double(x[i]) * double(x[i]);
  sum = block_sum(sum, shared);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// One block: thread i sums partials i, i + kFinalBlock, ... in order, then the block sum.
__global__ void squared_norm_final_kernel(double* result, const double* partials, int n_partials) {
  __shared__ double shared[kWarpSize];
  double sum = 0.0;
  for (int i = threadIdx.x; i < n_partials; i += kFinalBlock) sum += partials[i];
  sum = block_sum(sum, shared);
  if (threadIdx.x == 0) *result = sum;
}

}  // namespace

size_t squared_norm_scratch_elems(size_t n) { return 1 + (n + kElemsPerBlock - 1) / kElemsPerBlock; }

void squared_norm(const float* x, size_t n, double* scratch, cudaStream_t stream) {
  const size_t n_blocks = (n + kElemsPerBlock - 1) / kElemsPerBlock;
  ZT_CHECK(n_blocks < size_t(1) << 31, "squared_norm: {} elements is more than one launch covers", n);
  double* partials = scratch + 1;
  if (n_blocks > 0) {
    ZT_LAUNCH(squared_norm_partials_kernel, unsigned(n_blocks), kBlock, 0, stream)(partials, x, n);
    ZT_CUDA_LAUNCH_CHECK();
  }
  ZT_LAUNCH(squared_norm_final_kernel, 1, kFinalBlock, 0, stream)(scratch, partials, int(n_blocks));
  ZT_CUDA_LAUNCH_CHECK();
}

}  // namespace zt::cuda
