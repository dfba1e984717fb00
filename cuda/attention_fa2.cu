// Causal attention at FlashAttention-2's tile sizes (--cuda_attention fa2, bf16 mode, head size 64): 128-row block
// tiles, cp.async double buffering of the streamed tiles, and a dK/dV kernel that keeps K and V in shared memory.
//
// The schedule and the arithmetic are attention_tc.cu's (same fragments, same order of every sum), so on the simulator
// the results are bitwise those kernels'; what changes is how the work is laid out on an SM:
// - Block tiles of 128 rows, 8 warps of 16 rows each (attention_tc: 64 rows, 4 warps): each streamed K/V (or Q/dO)
//   tile feeds twice the rows, halving the L2 -> SM bytes per product.
// - The next streamed tile is copied global -> shared by cp.async while the current one is multiplied (two stages;
//   one commit group per tile: wait_group 1 leaves the newest copy in flight). A barrier after each tile's products
//   keeps the next copy from refilling the stage another warp still reads.
// - Tiles of 64 streamed rows are multiplied 32 at a time in the backward (the forward's online softmax needs the
//   whole tile): half the score registers. The dK/dV kernel reads the A fragments of its K and V rows from shared
//   memory at each product instead of keeping them in registers, so it fits the 128 registers of 2 blocks an SM.
// - A warp skips a streamed tile (or half) that the causal mask hides from all of its rows: the kernels it replaces
//   add those products as zeros, which leaves every sum unchanged.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "cuda/attention_fa2.cuh"
#include "cuda/attention_mma.cuh"
#include "cuda/cuda_common.cuh"

namespace zt::cuda {
namespace {

constexpr int kHeadDim = 64;     // the only head size built (GPT-2's); attention.cu falls back for others
constexpr int kBlockRows = 128;  // queries (forward, dQ) or keys (dK/dV) per block
constexpr int kStreamRows = 64;  // keys (forward, dQ) or queries (dK/dV) per streamed tile
constexpr int kChunk = 32;       // streamed rows per product in the backward
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kWarpRows = kBlockRows / kWarps;  // 16: the M of one mma
constexpr int kLd = kHeadDim + 8;               // row stride of a shared tile: 16 bytes of padding spread the banks
constexpr int kBlocksPerSm = 2;                 // __launch_bounds__: at most 128 registers a thread

static_assert(kBlockRows % kStreamRows == 0, "a block tile starts on a streamed tile's boundary");
static_assert(kWarpRows == 16, "a warp's rows are one mma's M");

using bf16 = __nv_bfloat16;

// cp.async of rows [t0, t0 + kRows) of one head (row r at src + r * row_stride) into dst [kRows][kLd], 16 bytes a
// copy; rows at or past T are zero-filled without reading (their source address is src, never dereferenced).
template <int kRows>
__device__ inline void copy_rows_async(bf16* dst, const bf16* src, size_t row_stride, int t0, int T) {
  constexpr int kOcts = kHeadDim / 8;
  for (int idx = threadIdx.x; idx < kRows * kOcts; idx += kThreads) {
    const int r = idx / kOcts, d = (idx - r * kOcts) * 8, t = t0 + r;
    const bool real = t < T;
    cp_async_16(dst + r * kLd + d, real ? src + size_t(t) * row_stride + d : src, real ? 16 : 0);
  }
}

// The A fragment (16 rows x 16 columns kk·16..) of the row-major tile rows [16][kLd].
__device__ inline void a_fragment(uint32_t (&a)[4], const bf16* rows, int kk, int g, int t) {
  const bf16* p = rows + g * kLd + 2 * t + kk * 16;
  a[0] = load_pair(p);
  a[1] = load_pair(p + 8 * kLd);
  a[2] = load_pair(p + 8);
  a[3] = load_pair(p + 8 * kLd + 8);
}

// A warp's A operand: the fragments of its 16 rows, in registers (Q, dO) or read from shared memory at each use
// (K, V in the dK/dV kernel, where registers are what limits the blocks an SM holds).
struct RegisterRows {
  const uint32_t (*frag)[4];
  __device__ void operator()(uint32_t (&a)[4], int kk, int, int) const {
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = frag[kk][i];
  }
};
struct SharedRows {
  const bf16* rows;
  __device__ void operator()(uint32_t (&a)[4], int kk, int g, int t) const { a_fragment(a, rows, kk, g, t); }
};

// acc[nt] (16 x 8 C tiles) = A · tile^T over the kN rows of tile (row-major [kN][kLd]): S = Q K^T, dP = dO V^T and
// their transposes. Each C tile sums its k slices in order, as attention_tc's product_with_rows does.
template <int kN, typename ARows>
__device__ inline void products_with_rows(float (&acc)[kN / 8][4], const ARows& a_rows, const bf16* tile, int g,
                                          int t) {
#pragma unroll
  for (int nt = 0; nt < kN / 8; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
    uint32_t a[4];
    a_rows(a, kk, g, t);
#pragma unroll
    for (int nt = 0; nt < kN / 8; ++nt) {
      const bf16* row = tile + (nt * 8 + g) * kLd + 2 * t + kk * 16;
      mma_bf16(acc[nt], a, load_pair(row), load_pair(row + 8));
    }
  }
}

// acc[dt] += X · M over the first kN rows of a shared tile (row stride kLd): attention_mma.cuh's accumulate_rows.
template <int kN>
__device__ inline void accumulate_with_rows(float (&acc)[kHeadDim / 8][4], const float (&x)[kN / 8][4],
                                            const bf16* tile, int lane) {
  accumulate_rows<kHeadDim, kN, kLd>(acc, x, tile, lane);
}

constexpr int kTileElems = kStreamRows * kLd;  // one streamed tile
constexpr int kBlockElems = kBlockRows * kLd;  // one block tile

// cp.async of streamed tile kt of K and V into its stage (kt % 2) of kv_s, as one commit group.
__device__ inline void copy_kv_async(bf16* kv_s, const HeadRows& head, int kt, int T) {
  bf16* stage = kv_s + (kt % 2) * 2 * kTileElems;
  copy_rows_async<kStreamRows>(stage, head.k, head.stride, kt * kStreamRows, T);
  copy_rows_async<kStreamRows>(stage + kTileElems, head.v, head.stride, kt * kStreamRows, T);
  cp_async_commit();
}

// The two-stage pipeline's step: starts the copy of the next tile (when there is one; copy_next issues its commit
// group) into the other stage, waits for this thread's copies of the current tile and then, at the barrier, for
// every other thread's.
template <typename CopyNext>
__device__ inline void prefetch_next_and_wait(bool has_next, const CopyNext& copy_next) {
  if (has_next) {
    copy_next();
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();
}

// Forward. Grid (query tile of 128, batch·head). Shared: Q [128][kLd], then 2 stages of K, V [64][kLd].
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    attention_forward_fa2_kernel(float* out, bf16* out16, float* out_copy, float* lse, const bf16* qkv, int T, int C,
                                 int NH, float scale) {
  ZT_DYNAMIC_SHARED(bf16, smem);
  bf16 *q_s = smem, *kv_s = smem + kBlockElems;
  const HeadRows head = head_rows<kHeadDim>(qkv, nullptr, T, C, NH);
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kBlockRows;  // the longest query tiles start first
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize, g = lane / 4, t = lane % 4;
  const int first_row = q0 + warp * kWarpRows;
  const int row[2] = {first_row + g, first_row + g + 8};         // this thread's two queries
  copy_rows_async<kBlockRows>(q_s, head.q, head.stride, q0, T);  // in the first K, V tile's group
  copy_kv_async(kv_s, head, 0, T);

  uint32_t qa[kHeadDim / 16][4];
  float o[kHeadDim / 8][4];
  zero_tiles(o);
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
  const int n_tiles = (min(q0 + kBlockRows, T) - 1) / kStreamRows + 1;  // causal: keys up to the last query
  for (int kt = 0; kt < n_tiles; ++kt) {
    prefetch_next_and_wait(kt + 1 < n_tiles, [&] { copy_kv_async(kv_s, head, kt + 1, T); });  // tile kt and Q
    if (kt == 0)
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk) a_fragment(qa[kk], q_s + warp * kWarpRows * kLd, kk, g, t);
    const int k0 = kt * kStreamRows;
    const bf16 *k_s = kv_s + (kt % 2) * 2 * kTileElems, *v_s = k_s + kTileElems;
    if (first_row < T && k0 <= first_row + kWarpRows - 1) {
      float s[kStreamRows / 8][4];
      products_with_rows<kStreamRows>(s, RegisterRows{qa}, k_s, g, t);
      online_softmax_tile<kHeadDim, kStreamRows>(s, o, m_run, l_run, row, k0, t, scale);
      accumulate_with_rows<kStreamRows>(o, s, v_s, lane);  // O += P V
    }
    __syncthreads();  // every warp is done with stage kt % 2 before tile kt + 2 is copied into it
  }
  store_forward_rows<kHeadDim>(out, out16, out_copy, lse, o, m_run, l_run, row, head.bh, t, T, C, NH);
}

// dQ: grid (query tile of 128, batch·head). dq[i] = scale * sum_j dS[i, j] K[j], dS = P ∘ (dO V^T - D).
// Shared: Q, dO [128][kLd], then 2 stages of K, V [64][kLd].
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    attention_backward_dq_fa2_kernel(float* dqkv, bf16* dqkv16, const bf16* dout, const bf16* qkv, const float* lse,
                                     const float* dsum, int T, int C, int NH, float scale) {
  ZT_DYNAMIC_SHARED(bf16, smem);
  bf16 *q_s = smem, *do_s = smem + kBlockElems, *kv_s = smem + 2 * kBlockElems;
  const HeadRows head = head_rows<kHeadDim>(qkv, dout, T, C, NH);
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kBlockRows;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize, g = lane / 4, t = lane % 4;
  const int first_row = q0 + warp * kWarpRows;
  const int row[2] = {first_row + g, first_row + g + 8};
  copy_rows_async<kBlockRows>(q_s, head.q, head.stride, q0, T);
  copy_rows_async<kBlockRows>(do_s, head.dout, size_t(C), q0, T);
  copy_kv_async(kv_s, head, 0, T);
  float L[2], D[2];
  load_row_stats(L, D, lse, dsum, row, head.bh, T);
  uint32_t qa[kHeadDim / 16][4], da[kHeadDim / 16][4];
  float dq[kHeadDim / 8][4];
  zero_tiles(dq);
  const int n_tiles = (min(q0 + kBlockRows, T) - 1) / kStreamRows + 1;
  for (int kt = 0; kt < n_tiles; ++kt) {
    prefetch_next_and_wait(kt + 1 < n_tiles, [&] { copy_kv_async(kv_s, head, kt + 1, T); });
    if (kt == 0)
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        a_fragment(qa[kk], q_s + warp * kWarpRows * kLd, kk, g, t);
        a_fragment(da[kk], do_s + warp * kWarpRows * kLd, kk, g, t);
      }
    const bf16* k_tile = kv_s + (kt % 2) * 2 * kTileElems;
#pragma unroll
    for (int half = 0; half < kStreamRows / kChunk; ++half) {
      const int k0 = kt * kStreamRows + half * kChunk;
      if (first_row >= T || k0 > first_row + kWarpRows - 1) continue;  // hidden from all this warp's rows
      const bf16 *k_s = k_tile + half * kChunk * kLd, *v_s = k_s + kTileElems;
      float s[kChunk / 8][4], dp[kChunk / 8][4];
      products_with_rows<kChunk>(s, RegisterRows{qa}, k_s, g, t);
      products_with_rows<kChunk>(dp, RegisterRows{da}, v_s, g, t);
      scores_to_ds<kChunk>(s, dp, row, L, D, k0, t, T, scale);
      accumulate_with_rows<kChunk>(dq, s, k_s, lane);  // dQ += dS K
    }
    __syncthreads();
  }
  store_dq_rows<kHeadDim>(dqkv, dqkv16, dq, row, head, qkv, t, T, scale);
}

// dK/dV stage: Q, dO [64][kLd] of one query tile, then its L and D (64 floats each).
constexpr int kStageElems = 2 * kTileElems + 2 * kStreamRows * int(sizeof(float) / sizeof(bf16));
static_assert(kStageElems * sizeof(bf16) % 16 == 0, "each stage starts 16-byte aligned");

// dK, dV: grid (key tile of 128, batch·head); each warp owns 16 keys and walks the query tiles from the diagonal on.
// S^T = K Q^T and dP^T = V dO^T give P^T and dS^T in the keys' rows: dV = P^T dO, dK = scale dS^T Q.
// Shared: K, V [128][kLd], then 2 stages.
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    attention_backward_dkv_fa2_kernel(float* dqkv, bf16* dqkv16, const bf16* dout, const bf16* qkv, const float* lse,
                                      const float* dsum, int T, int C, int NH, float scale) {
  ZT_DYNAMIC_SHARED(bf16, smem);
  bf16 *k_s = smem, *v_s = smem + kBlockElems, *stages = smem + 2 * kBlockElems;
  const HeadRows head = head_rows<kHeadDim>(qkv, dout, T, C, NH);
  const int k0 = blockIdx.x * kBlockRows;  // the first key tiles walk the most queries: they start first
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize, g = lane / 4, t = lane % 4;
  const int first_key = k0 + warp * kWarpRows;
  const int key[2] = {first_key + g, first_key + g + 8};  // this thread's two keys
  const int first_q_tile = k0 / kStreamRows, n_q_tiles = (T + kStreamRows - 1) / kStreamRows;
  // Q, dO by cp.async; L and D by plain loads into the same stage, which no warp reads until the barrier after the
  // stage's wait.
  auto copy_stage = [&](int qt) {
    bf16* stage = stages + (qt % 2) * kStageElems;
    const int q0 = qt * kStreamRows;
    copy_rows_async<kStreamRows>(stage, head.q, head.stride, q0, T);
    copy_rows_async<kStreamRows>(stage + kTileElems, head.dout, size_t(C), q0, T);
    cp_async_commit();
    float* stats = reinterpret_cast<float*>(stage + 2 * kTileElems);
    for (int r = threadIdx.x; r < kStreamRows; r += kThreads) {
      const int i = q0 + r;
      stats[r] = i < T ? lse[size_t(head.bh) * T + i] : 0.0f;
      stats[kStreamRows + r] = i < T ? dsum[size_t(head.bh) * T + i] : 0.0f;
    }
  };
  copy_rows_async<kBlockRows>(k_s, head.k, head.stride, k0, T);  // in the first stage's group
  copy_rows_async<kBlockRows>(v_s, head.v, head.stride, k0, T);
  copy_stage(first_q_tile);
  const SharedRows k_rows{k_s + warp * kWarpRows * kLd}, v_rows{v_s + warp * kWarpRows * kLd};
  float dk[kHeadDim / 8][4], dv[kHeadDim / 8][4];
  zero_tiles(dk);
  zero_tiles(dv);
  for (int qt = first_q_tile; qt < n_q_tiles; ++qt) {
    prefetch_next_and_wait(qt + 1 < n_q_tiles, [&] { copy_stage(qt + 1); });
    const bf16* stage = stages + (qt % 2) * kStageElems;
    const float* l_s = reinterpret_cast<const float*>(stage + 2 * kTileElems);
    const float* d_s = l_s + kStreamRows;
#pragma unroll
    for (int half = 0; half < kStreamRows / kChunk; ++half) {
      const int q0 = qt * kStreamRows + half * kChunk;
      if (first_key >= T || q0 + kChunk - 1 < first_key) continue;  // every query here precedes this warp's keys
      const bf16 *q_s = stage + half * kChunk * kLd, *do_s = q_s + kTileElems;
      float st[kChunk / 8][4], dpt[kChunk / 8][4];
      products_with_rows<kChunk>(st, k_rows, q_s, g, t);
      products_with_rows<kChunk>(dpt, v_rows, do_s, g, t);
      transposed_scores_to_p_ds<kChunk>(st, dpt, key, l_s, d_s, half * kChunk, qt * kStreamRows, t, T, scale);
      accumulate_with_rows<kChunk>(dv, st, do_s, lane);  // dV += P^T dO
      accumulate_with_rows<kChunk>(dk, dpt, q_s, lane);  // dK += dS^T Q
    }
    __syncthreads();
  }
  store_dkv_rows<kHeadDim>(dqkv, dqkv16, dk, dv, key, head, qkv, t, T, C, scale);
}

constexpr size_t kForwardBytes = sizeof(bf16) * size_t(kBlockElems + 4 * kTileElems);
constexpr size_t kDqBytes = sizeof(bf16) * size_t(2 * kBlockElems + 4 * kTileElems);
constexpr size_t kDkvBytes = sizeof(bf16) * size_t(2 * kBlockElems + 2 * kStageElems);

dim3 grid_of(int B, int T, int NH) { return dim3(unsigned((T + kBlockRows - 1) / kBlockRows), unsigned(B * NH)); }

void check_shape(int C, int NH) {
  ZT_CHECK(NH > 0 && C == NH * kHeadDim, "attention (fa2): head size {} (d_model {} / n_head {}); only {} is built",
           NH > 0 ? C / NH : 0, C, NH, kHeadDim);
}

}  // namespace

bool attention_fa2_supports(int hs) { return hs == kHeadDim; }

void attention_forward_fa2(float* out, bf16* out16, float* out_copy, float* lse, const bf16* qkv16, int B, int T, int C,
                           int NH, cudaStream_t stream) {
  check_shape(C, NH);
  const float scale = 1.0f / sqrtf(float(kHeadDim));
  allow_shared_bytes(attention_forward_fa2_kernel, kForwardBytes);
  ZT_LAUNCH(attention_forward_fa2_kernel, grid_of(B, T, NH), kThreads, kForwardBytes, stream)
  (out, out16, out_copy, lse, qkv16, T, C, NH, scale);
  ZT_CUDA_LAUNCH_CHECK();
}

void attention_backward_fa2(float* dqkv, bf16* dqkv16, const bf16* dout16, const bf16* qkv16, const float* lse,
                            const float* dsum, int B, int T, int C, int NH, cudaStream_t stream) {
  check_shape(C, NH);
  const float scale = 1.0f / sqrtf(float(kHeadDim));
  allow_shared_bytes(attention_backward_dq_fa2_kernel, kDqBytes);
  ZT_LAUNCH(attention_backward_dq_fa2_kernel, grid_of(B, T, NH), kThreads, kDqBytes, stream)
  (dqkv, dqkv16, dout16, qkv16, lse, dsum, T, C, NH, scale);
  ZT_CUDA_LAUNCH_CHECK();
  allow_shared_bytes(attention_backward_dkv_fa2_kernel, kDkvBytes);
  ZT_LAUNCH(attention_backward_dkv_fa2_kernel, grid_of(B, T, NH), kThreads, kDkvBytes, stream)
  (dqkv, dqkv16, dout16, qkv16, lse, dsum, T, C, NH, scale);
  ZT_CUDA_LAUNCH_CHECK();
}

}  // namespace zt::cuda
