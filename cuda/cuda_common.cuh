// Shared CUDA plumbing: the CUDA / cuBLAS check macros, the launch check, deterministic warp and block reductions.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "core/errors.hpp"

namespace zt::cuda {

inline bool cuda_failed(cudaError_t rc) { return rc != cudaSuccess; }
inline const char* cuda_describe(cudaError_t rc) { return cudaGetErrorString(rc); }
inline bool cublas_failed(cublasStatus_t rc) { return rc != CUBLAS_STATUS_SUCCESS; }
inline const char* cublas_describe(cublasStatus_t rc) { return cublasLtGetStatusString(rc); }

}  // namespace zt::cuda

/// Throws zt::Error naming the statement, file:line, rank and host when a CUDA runtime call fails.
#define ZT_CUDA_CHECK(stmt) ZT_LIB_CHECK_GEN("CUDA", stmt, ::zt::cuda::cuda_failed, ::zt::cuda::cuda_describe)
/// Likewise for cuBLAS / cuBLASLt calls.
#define ZT_CUBLAS_CHECK(stmt) ZT_LIB_CHECK_GEN("cuBLAS", stmt, ::zt::cuda::cublas_failed, ::zt::cuda::cublas_describe)
/// Follows every kernel launch: a bad configuration (grid, shared memory) is reported at the launch that caused it.
#define ZT_CUDA_LAUNCH_CHECK() ZT_CUDA_CHECK(cudaGetLastError())

namespace zt::cuda {

constexpr int kWarpSize = 32;

inline int ceil_div(size_t n, size_t d) { return int((n + d - 1) / d); }

/// Blocks for a grid-stride loop over n elements: enough to fill the GPU, never more than the work.
inline int grid_for(size_t n, int block, int max_blocks = 65536) {
  const size_t blocks = (n + size_t(block) - 1) / size_t(block);
  return blocks == 0 ? 1 : blocks > size_t(max_blocks) ? max_blocks : int(blocks);
}

/// Launches a kernel: ZT_LAUNCH(kernel, grid, block, shared_bytes, stream)(args...) is kernel<<<...>>>(args...),
/// spelled so that the CUDA simulator (test/cuda_sim/), which compiles these files as plain C++, can run it too.
#ifdef ZT_CUDA_SIM
#define ZT_LAUNCH(kernel, grid, block, shared_bytes, stream) \
  ::zt_sim::launch(kernel, #kernel, grid, block, shared_bytes, stream)
#else
#define ZT_LAUNCH(kernel, grid, block, shared_bytes, stream) kernel<<<grid, block, shared_bytes, stream>>>
#endif

/// A kernel's dynamic shared memory (extern __shared__), 16-byte aligned, as `type* name`.
#ifdef ZT_CUDA_SIM
#define ZT_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::zt_sim::dynamic_shared())
#else
#define ZT_DYNAMIC_SHARED(type, name)                            \
  extern __shared__ __align__(16) unsigned char name##_bytes_[]; \
  type* name = reinterpret_cast<type*>(name##_bytes_)
#endif

/// Dynamic shared memory beyond the default 48 KB must be asked for, per kernel, before its first launch.
template <typename Kernel>
void allow_shared_bytes(Kernel kernel, size_t n_bytes) {
  if (n_bytes > size_t(48) << 10)
    ZT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(n_bytes)));
}

/// An activation an op reads: its fp32 values, or its bf16 values where the range is held in bf16 only
/// (--cuda_activations bf16). One of the two pointers is set; kernels read either through [] (a branch every thread
/// of a launch takes the same way).
struct ActIn {
  const float* f32 = nullptr;
  const __nv_bfloat16* b16 = nullptr;
  ActIn() = default;
  __host__ __device__ ActIn(const float* p) : f32(p) {}          // NOLINT: an fp32 pointer is an fp32 activation
  __host__ __device__ ActIn(const __nv_bfloat16* p) : b16(p) {}  // NOLINT: likewise a held one
  /// The same activation from element k on.
  __host__ __device__ ActIn at(size_t k) const { return b16 != nullptr ? ActIn(b16 + k) : ActIn(f32 + k); }
#if defined(__CUDACC__) || defined(ZT_CUDA_SIM)
  __device__ float operator[](size_t i) const { return b16 != nullptr ? __bfloat162float(b16[i]) : f32[i]; }
#endif
};

#if defined(__CUDACC__) || defined(ZT_CUDA_SIM)
/// p[i] = v and, where the buffer has a kept bf16 copy p16 (null: none), p16[i] = v rounded to nearest: the bits
/// cast_to_bf16 would give, so a matmul reading the copy multiplies what rounding per call would. p is null where
/// only the copy is read (keep_activation_copy with fp32_read false).
__device__ inline void store_kept(float* p, __nv_bfloat16* p16, size_t i, float v) {
  if (p != nullptr) p[i] = v;
  if (p16 != nullptr) p16[i] = __float2bfloat16_rn(v);
}

// Butterfly (xor) reductions: lane i adds v_i + v_(i^k) and lane i^k adds the same two values, so every lane ends
// with bitwise the same result, in an order fixed by the lane numbering alone (deterministic).
template <typename T>
__device__ inline T warp_sum(T v) {
  for (int k = kWarpSize / 2; k > 0; k /= 2) v += __shfl_xor_sync(0xffffffffu, v, k);
  return v;
}

__device__ inline float warp_max(float v) {
  for (int k = kWarpSize / 2; k > 0; k /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, k));
  return v;
}

/// Sum over the block (blockDim.x a multiple of 32, at most 1024), returned to every thread; `shared` holds 32 T.
/// Warp sums, then the warp partials in warp order: fixed for a given block size.
template <typename T>
__device__ inline T block_sum(T v, T* shared) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize, n_warps = blockDim.x / kWarpSize;
  v = warp_sum(v);
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < n_warps ? shared[lane] : T(0);
  return warp_sum(v);
}

/// Maximum over the block, returned to every thread; `shared` holds 32 floats.
__device__ inline float block_max(float v, float* shared) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize, n_warps = blockDim.x / kWarpSize;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < n_warps ? shared[lane] : -INFINITY;
  return warp_max(v);
}
#endif

}  // namespace zt::cuda
