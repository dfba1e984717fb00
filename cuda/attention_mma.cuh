// What the tensor-core attention kernels (attention_tc.cu, attention_fa2.cu) share: the warp-level primitives
// (mma.sync, ldmatrix, cp.async: inline PTX under nvcc, the simulator's functions under ZT_CUDA_SIM), the quad
// reductions, where a block's head rows start, and the per-warp pieces both schedules run on their fragments (the
// X · M products, the softmax and dS arithmetic, the output stores), so both give the same bits.
#pragma once

#include <cuda_bf16.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "cuda/cuda_common.cuh"

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

// The pieces below work on C tiles of mma.m16n8k16 (PTX ISA): with g = lane / 4 and t = lane % 4, c0, c1 =
// C[g][2t, 2t+1] and c2, c3 = C[g+8][2t, 2t+1], so each thread holds two of its warp's 16 rows, g and g + 8 (row[],
// key[]), and element e of a C tile belongs to row[e / 2], column 2t + (e & 1).

template <int kN>
__device__ __forceinline__ void zero_tiles(float (&acc)[kN][4]) {
#pragma unroll
  for (int i = 0; i < kN; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
}

// acc[dt] += X · M, X (16 x kN) given as C tiles x[nt] (P, dS or their transposes), M the first kN rows of a
// row-major tile with row stride kLd and HS columns (V for P V, K for dS K, dO for P^T dO, Q for dS^T Q), 16 rows
// of M at a time in order. For 16 rows kk of M and two 8-column tiles dt, dt + 1: ldmatrix matrices 0, 1 are rows
// 16kk + 0..7 and 16kk + 8..15 of columns 8dt.., matrices 2, 3 the same rows of columns 8(dt + 1)..; they give b0,
// b1 of tile dt and b0, b1 of tile dt + 1.
template <int HS, int kN, int kLd>
__device__ __forceinline__ void accumulate_rows(float (&acc)[HS / 8][4], const float (&x)[kN / 8][4],
                                                const __nv_bfloat16* tile, int lane) {
  static_assert(HS % 16 == 0 && kN % 16 == 0, "column tiles are taken in pairs, rows of M 16 at a time");
  const int m = lane / 8, r = lane % 8;
#pragma unroll
  for (int kk = 0; kk < kN / 16; ++kk) {
    const uint32_t a[4] = {pack_bf16(x[2 * kk][0], x[2 * kk][1]), pack_bf16(x[2 * kk][2], x[2 * kk][3]),
                           pack_bf16(x[2 * kk + 1][0], x[2 * kk + 1][1]),
                           pack_bf16(x[2 * kk + 1][2], x[2 * kk + 1][3])};
    const __nv_bfloat16* rows = tile + (kk * 16 + (m % 2) * 8 + r) * kLd + (m / 2) * 8;
#pragma unroll
    for (int dt = 0; dt < HS / 8; dt += 2) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, rows + dt * 8);
      mma_bf16(acc[dt], a, b[0], b[1]);
      mma_bf16(acc[dt + 1], a, b[2], b[3]);
    }
  }
}

// One streamed tile of the forward's online softmax, for this thread's two queries row[]: the scores s of keys
// k0.. are scaled, masked keys (j > i, which includes every j >= T for a real row) become -inf, the running max
// m_run and sum l_run take the tile in, s becomes P = exp(s - m_run) and o is rescaled by exp(m_old - m_new). Key 0
// comes first and every row sees it, so the running max is finite from the first tile on (where corr is 0) and
// exp(-inf - m) = 0.
template <int HS, int kN>
__device__ __forceinline__ void online_softmax_tile(float (&s)[kN / 8][4], float (&o)[HS / 8][4], float (&m_run)[2],
                                                    float (&l_run)[2], const int (&row)[2], int k0, int t,
                                                    float scale) {
  float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int nt = 0; nt < kN / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int j = k0 + nt * 8 + 2 * t + (e & 1);
      s[nt][e] = j <= row[e / 2] ? s[nt][e] * scale : -INFINITY;
      tile_max[e / 2] = fmaxf(tile_max[e / 2], s[nt][e]);
    }
  float corr[2], tile_sum[2] = {0.0f, 0.0f};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float m_new = fmaxf(m_run[r], quad_max(tile_max[r]));
    corr[r] = expf(m_run[r] - m_new);
    m_run[r] = m_new;
  }
#pragma unroll
  for (int nt = 0; nt < kN / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[nt][e] = expf(s[nt][e] - m_run[e / 2]);
      tile_sum[e / 2] += s[nt][e];
    }
#pragma unroll
  for (int r = 0; r < 2; ++r) l_run[r] = l_run[r] * corr[r] + quad_sum(tile_sum[r]);
#pragma unroll
  for (int dt = 0; dt < HS / 8; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[dt][e] *= corr[e / 2];
}

// The forward's outputs of this thread's two queries row[] (those before T): out (and out16, out_copy) = o / l_run
// and, from the quad's first thread, lse = m_run + log l_run.
template <int HS>
__device__ __forceinline__ void store_forward_rows(float* out, __nv_bfloat16* out16, float* out_copy, float* lse,
                                                   const float (&o)[HS / 8][4], const float (&m_run)[2],
                                                   const float (&l_run)[2], const int (&row)[2], int bh, int t, int T,
                                                   int C, int NH) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row[r];
    if (i >= T) continue;
    const float inv = 1.0f / l_run[r];
    const size_t off = (size_t(bh / NH) * T + i) * C + size_t(bh % NH) * HS;
#pragma unroll
    for (int dt = 0; dt < HS / 8; ++dt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int d = dt * 8 + 2 * t + e;
        const float value = o[dt][2 * r + e] * inv;
        store_kept(out, out16, off + d, value);
        if (out_copy != nullptr) out_copy[off + d] = value;
      }
    if (t == 0) lse[size_t(bh) * T + i] = m_run[r] + logf(l_run[r]);
  }
}

// The forward's lse and dsum of this thread's two queries row[] (0 past T): L and D of dS = P ∘ (dP - D).
__device__ __forceinline__ void load_row_stats(float (&L)[2], float (&D)[2], const float* lse, const float* dsum,
                                               const int (&row)[2], int bh, int T) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    L[r] = row[r] < T ? lse[size_t(bh) * T + row[r]] : 0.0f;
    D[r] = row[r] < T ? dsum[size_t(bh) * T + row[r]] : 0.0f;
  }
}

// dS = P ∘ (dP - D) in place of the scores s, for this thread's two queries row[] and keys k0..:
// P = exp(scale s - L), 0 where the key follows the query (j > i) or the query is past T.
template <int kN>
__device__ __forceinline__ void scores_to_ds(float (&s)[kN / 8][4], const float (&dp)[kN / 8][4], const int (&row)[2],
                                             const float (&L)[2], const float (&D)[2], int k0, int t, int T,
                                             float scale) {
#pragma unroll
  for (int nt = 0; nt < kN / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int i = row[e / 2], j = k0 + nt * 8 + 2 * t + (e & 1);
      const float p = j <= i && i < T ? expf(s[nt][e] * scale - L[e / 2]) : 0.0f;
      s[nt][e] = p * (dp[nt][e] - D[e / 2]);  // dS
    }
}

// The transposed form for the dK/dV kernels, this thread's two keys key[] against queries: st = S^T becomes P^T,
// dpt = dP^T becomes dS^T. Column c = c0 + (the C tile's column) is query q_base + c, its L and D at l_s[c], d_s[c].
template <int kN>
__device__ __forceinline__ void transposed_scores_to_p_ds(float (&st)[kN / 8][4], float (&dpt)[kN / 8][4],
                                                          const int (&key)[2], const float* l_s, const float* d_s,
                                                          int c0, int q_base, int t, int T, float scale) {
#pragma unroll
  for (int nt = 0; nt < kN / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = c0 + nt * 8 + 2 * t + (e & 1), i = q_base + c, j = key[e / 2];
      const float p = j <= i && i < T ? expf(st[nt][e] * scale - l_s[c]) : 0.0f;
      st[nt][e] = p;                           // P^T
      dpt[nt][e] = p * (dpt[nt][e] - d_s[c]);  // dS^T
    }
}

// dQ of this thread's two queries row[] (those before T) into the q columns of dqkv (and dqkv16), times scale.
template <int HS>
__device__ __forceinline__ void store_dq_rows(float* dqkv, __nv_bfloat16* dqkv16, const float (&dq)[HS / 8][4],
                                              const int (&row)[2], const HeadRows& head, const __nv_bfloat16* qkv,
                                              int t, int T, float scale) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row[r];
    if (i >= T) continue;
    const size_t dq_row = size_t(head.q - qkv) + size_t(i) * head.stride;
#pragma unroll
    for (int dt = 0; dt < HS / 8; ++dt)
#pragma unroll
      for (int e = 0; e < 2; ++e) store_kept(dqkv, dqkv16, dq_row + dt * 8 + 2 * t + e, dq[dt][2 * r + e] * scale);
  }
}

// dK (times scale) and dV of this thread's two keys key[] (those before T) into the k and v columns of dqkv.
template <int HS>
__device__ __forceinline__ void store_dkv_rows(float* dqkv, __nv_bfloat16* dqkv16, const float (&dk)[HS / 8][4],
                                               const float (&dv)[HS / 8][4], const int (&key)[2], const HeadRows& head,
                                               const __nv_bfloat16* qkv, int t, int T, int C, float scale) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int j = key[r];
    if (j >= T) continue;
    const size_t dk_row = size_t(head.k - qkv) + size_t(j) * head.stride, dv_row = dk_row + size_t(C);
#pragma unroll
    for (int dt = 0; dt < HS / 8; ++dt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int d = dt * 8 + 2 * t + e;
        store_kept(dqkv, dqkv16, dk_row + d, dk[dt][2 * r + e] * scale);
        store_kept(dqkv, dqkv16, dv_row + d, dv[dt][2 * r + e]);
      }
  }
}

}  // namespace zt::cuda
