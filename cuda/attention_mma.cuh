// What the tensor-core attention kernels (attention_tc.cu, attention_fa2.cu) share: the warp-level primitives
// (mma.sync, ldmatrix, cp.async: inline PTX under nvcc, the simulator's functions under ZT_CUDA_SIM), the quad
// reductions and where a block's head rows start.
#pragma once

#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>

namespace zt::cuda {

__device__ inline uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (lo) in the low half
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ inline uint32_t load_pair(const __nv_bfloat16* p) { return *reinterpret_cast<const uint32_t*>(p); }

// d += a · b on one 16x8x16 tile. Not volatile: a pure function of its registers, which the compiler may schedule
// freely among the loads (the ldmatrix reads of shared memory stay volatile, ordered against the barriers).
__device__ inline void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef ZT_CUDA_SIM
  zt_sim::mma_m16n8k16_bf16(d, a, b0, b1);
#else
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Four 8x8 bf16 matrices from shared memory, transposed on the way: lane l gives the (16-byte-aligned) address of
// row l % 8 of matrix l / 8 and receives, in r[m], elements (2 (l % 4), l / 4) and (2 (l % 4) + 1, l / 4) of matrix
// m as stored, the lower one in the low 16 bits: for a matrix of 8 k-rows by 8 n-columns, the B pair of mma's
// (t = l % 4, g = l / 4).
__device__ inline void ldmatrix_x4_trans(uint32_t (&r)[4], const __nv_bfloat16* row) {
#ifdef ZT_CUDA_SIM
  zt_sim::ldmatrix_x4(r, row, true);
#else
  const auto addr = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#endif
}

// 16 bytes global -> shared without passing through registers (cp.async.cg: cached in L2 only, as a tile every
// block reads once needs). src_bytes < 16 reads only that many and zero-fills the rest (0: reads nothing, so rows
// past the end cost no branch and no out-of-bounds read). The bytes are there only after the wait that retires
// the copy's group: until then the destination is undefined, to this thread and every other.
__device__ inline void cp_async_16(void* dst_shared, const void* src_global, int src_bytes) {
#ifdef ZT_CUDA_SIM
  zt_sim::cp_async(dst_shared, src_global, 16, src_bytes, true);
#else
  const auto addr = static_cast<uint32_t>(__cvta_generic_to_shared(dst_shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(src_global), "r"(src_bytes)
               : "memory");
#endif
}

// Closes this thread's group of cp.async copies issued since the last commit.
__device__ inline void cp_async_commit() {
#ifdef ZT_CUDA_SIM
  zt_sim::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most kPending of this thread's committed groups are in flight (the newest ones). Other threads'
// copies need a __syncthreads after their own waits.
template <int kPending>
__device__ inline void cp_async_wait() {
#ifdef ZT_CUDA_SIM
  zt_sim::cp_async_wait(kPending);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}

__device__ inline float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ inline float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// This block's (batch, head), from blockIdx.y: where its q, k, v rows start in qkv [B,T,3C] (3C apart) and its dO
// rows in dout [B,T,C] (both bf16; the element offsets are those of the fp32 dqkv too).
struct HeadRows {
  int bh;
  const __nv_bfloat16 *q, *k, *v, *dout;
  size_t stride;
};

template <int HS>
__device__ inline HeadRows head_rows(const __nv_bfloat16* qkv, const __nv_bfloat16* dout, int T, int C, int NH) {
  HeadRows r;
  r.bh = blockIdx.y;
  const int b = r.bh / NH, h = r.bh % NH;
  r.stride = size_t(3) * C;
  r.q = qkv + size_t(b) * T * r.stride + size_t(h) * HS;
  r.k = r.q + C;
  r.v = r.q + 2 * size_t(C);
  r.dout = dout != nullptr ? dout + size_t(b) * T * C + size_t(h) * HS : nullptr;
  return r;
}

}  // namespace zt::cuda
