// The CUDA simulator's device side: what a .cu file of cuda/ needs to compile as plain C++ (g++, no nvcc) and run on
// the CPU, one fiber per CUDA thread. Force-included (-include) before every source of the simulated library
// (test/cuda_sim/CMakeLists.txt); nothing outside the simulator's own targets sees it.
//
// What it models: grids run block after block, each block's threads as cooperatively scheduled fibers, so
// __syncthreads, the warp shuffles and the warp-wide tensor-core instructions (mma.sync m16n8k16 bf16,
// ldmatrix.x4) are real barriers among the threads that take part, with their data exchanged as the PTX ISA lays it
// out. __shared__ memory is one block's at a time: dynamic shared memory is a heap block of exactly the launch's
// size (an overrun is a heap overrun); static __shared__ arrays are function-local statics in a section of their own.
// Both start every block as 0xff bytes (NaN floats). Launch limits (threads per block,
// grid size, the 48 KB dynamic shared memory default and cudaFuncSetAttribute's opt-in up to 227 KB) fail as on an
// H100. What it does not model: timing, warps in lockstep (a kernel that relies on it without __syncwarp is wrong on
// Volta and later anyway), registers, memory ordering between blocks, and the hardware's own summation order inside an
// mma (products are summed in k order in fp32).
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

#include "test/cuda_sim/sim_runtime.hpp"

// The built-in variables: the scheduler sets them before it resumes a thread's fiber. Kernels only read them.
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;

namespace zt_sim {

/// The launch of one grid: checked as the hardware would, then run block by block.
struct LaunchConfig {
  const void* kernel;
  const char* name;
  dim3 grid, block;
  size_t dynamic_shared_bytes;
  cudaStream_t stream;
};
/// Checks the launch as the hardware would (a bad one fails at once: cudaGetLastError) and queues it on its stream.
void launch_grid(const LaunchConfig& config, std::function<void()> thread_body);

/// Binds a kernel's parameters by value, as a launch does, and queues it.
template <typename... Params>
struct Launcher {
  void (*kernel)(Params...);
  LaunchConfig config;
  template <typename... Args>
  void operator()(Args&&... args) const {
    auto params = std::make_shared<const std::tuple<std::decay_t<Params>...>>(std::forward<Args>(args)...);
    auto* k = kernel;
    launch_grid(config, [k, params] { std::apply(k, *params); });
  }
};

template <typename... Params>
Launcher<Params...> launch(void (*kernel)(Params...), const char* name, dim3 grid, dim3 block, size_t shared_bytes,
                           cudaStream_t stream) {
  return Launcher<Params...>{kernel, {reinterpret_cast<const void*>(kernel), name, grid, block, shared_bytes, stream}};
}

/// This block's dynamic shared memory (extern __shared__).
void* dynamic_shared();
void sync_threads();

/// One full-warp shuffle of 4 or 8 bytes: lane l receives the value of lane src(l) (xor: l ^ arg; index: arg).
void shuffle(void* value, size_t n_bytes, unsigned mask, int arg, bool is_xor);

/// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 across the warp: d += a b with the fragment layout of the
/// PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point type").
void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

/// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16 across the warp: lane l gives the 16-byte-aligned address of
/// row l % 8 of matrix l / 8.
void ldmatrix_x4(uint32_t (&r)[4], const void* row, bool trans);

/// cp.async.{ca,cg}.shared.global: n_bytes (4, 8 or 16; .cg only 16) from src (device memory) to dst (this block's
/// shared memory), of which the first src_bytes (0..n_bytes) are read and the rest zero-filled. The source is read
/// at issue; the destination reads as NaN bytes from issue until this thread's wait_group retires the copy's group
/// (the hardware leaves it undefined until then), and takes the copied bytes only there.
void cp_async(void* dst, const void* src, int n_bytes, int src_bytes, bool cache_global);
/// cp.async.commit_group: this thread's copies issued since the last commit become one group.
void cp_async_commit();
/// cp.async.wait_group n: lands every committed group of this thread but the newest n.
void cp_async_wait(int n);
/// cp.async.wait_all: commit_group, then wait_group 0.
void cp_async_wait_all();

template <typename T>
T shuffle_value(unsigned mask, T v, int arg, bool is_xor) {
  static_assert(std::is_trivially_copyable_v<T> && (sizeof(T) == 4 || sizeof(T) == 8), "4- or 8-byte shuffles");
  shuffle(&v, sizeof(T), mask, arg, is_xor);
  return v;
}

}  // namespace zt_sim

// ---- keywords: kernels and device functions become ordinary functions, __shared__ variables statics ----
#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __host__
#define __host__
#undef __forceinline__
#define __forceinline__ inline
// Every static __shared__ variable lands in one linker section, which the scheduler fills with 0xff bytes (NaN
// floats) before each block, as a block's shared memory holds garbage on the hardware.
#undef __shared__
#define __shared__ static __attribute__((section("zt_sim_shared")))
#undef __launch_bounds__
#define __launch_bounds__(...)

// ---- intrinsics ----
inline void __syncthreads() { zt_sim::sync_threads(); }
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  return zt_sim::shuffle_value(mask, v, lane_mask, true);
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane) {
  return zt_sim::shuffle_value(mask, v, src_lane, false);
}
// Round-to-nearest arithmetic: the host's IEEE operations, never contracted (ISO C++ mode has -ffp-contract=off).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

template <typename... Params>
cudaError_t cudaFuncSetAttribute(void (*kernel)(Params...), cudaFuncAttribute attr, int value) {
  return zt_sim::set_kernel_attribute(reinterpret_cast<const void*>(kernel), attr, value);
}
