// Causal attention on the tensor cores: FlashAttention-2's schedule over mma.sync.m16n8k16 (bf16 in, fp32 out).
//
// Tiles of 64 queries and 64 keys; 4 warps, each owning 16 rows of the tile (queries in the forward and dQ kernels,
// keys in the dK/dV kernel). Q, K, V and dO come in bf16 (attention.cu rounds them once per call, where the
// kernels would otherwise round every tile as it is loaded, K and V once per query tile) and enter shared memory
// 16 bytes a thread; rows are padded by 8 elements (16 bytes) so the fragment loads of the 8 row groups land in
// distinct banks.
//
// Fragments of mma.m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16"): with g = lane / 4 and t = lane % 4,
//   A (16x16, row-major): reg 0 = A[g][2t, 2t+1], reg 1 = A[g+8][2t, 2t+1], reg 2 = A[g][2t+8, +9],
//                         reg 3 = A[g+8][2t+8, +9]           (the lower column in the low 16 bits)
//   B (16x8, "col"):      reg 0 = B[2t, 2t+1][g], reg 1 = B[2t+8, 2t+9][g]
//   C (16x8, fp32):       c0, c1 = C[g][2t, 2t+1], c2, c3 = C[g+8][2t, 2t+1]
// So a B operand whose k index is contiguous in the shared tile is read with plain 32-bit loads: K rows for
// S = Q K^T (k = head dim). Where k is the key or query index (P V, dS K, P^T dO, dS^T Q) the tile's rows are the k
// index, and ldmatrix.trans hands each lane its B pairs straight from the row-major tile (it transposes 8x8 blocks
// on the way to registers), so every tile is loaded once, row-major, and no transposed copy is made. Two C tiles
// side by side (columns 16kk .. 16kk + 15) are exactly the A fragment of the next product (FlashAttention-2's
// register reuse): P and dS never go through shared memory.
//
// Numerics: scores, softmax statistics, accumulators and outputs in fp32; Q, K, V, dO, P and dS rounded to bf16
// for the products. Deterministic: every sum has a fixed order (no atomics), as in the fp32 kernels.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cuda/attention_mma.cuh"
#include "cuda/attention_tc.cuh"
#include "cuda/cuda_common.cuh"

namespace zt::cuda {
namespace {

constexpr int kTileRows = 64;  // queries (or keys) per block tile
constexpr int kTileKeys = 64;  // keys (or queries) per streamed tile
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kWarpRows = kTileRows / kWarps;  // 16: the M of one mma
constexpr int kPad = 8;                        // bf16 elements of padding per shared row

static_assert(kTileRows == kTileKeys, "causal tiling assumes square tiles: tile k0 <= q0 for every streamed tile");

// dst[r][d] (row stride HS + kPad) = src[(t0 + r) * row_stride + d] for r < 64; rows past T are 0. 8 bf16 (16
// bytes) a load: src rows start 16-byte aligned (row strides C and 3C, head offsets HS, with C a multiple of 32).
template <int HS>
__device__ inline void load_rows(__nv_bfloat16* dst, const __nv_bfloat16* src, size_t row_stride, int t0, int T) {
  constexpr int kOcts = HS / 8;
  for (int idx = threadIdx.x; idx < kTileRows * kOcts; idx += kThreads) {
    const int r = idx / kOcts, d = (idx - r * kOcts) * 8;
    const int t = t0 + r;
    const uint4 v = t < T ? *reinterpret_cast<const uint4*>(src + size_t(t) * row_stride + d) : make_uint4(0, 0, 0, 0);
    *reinterpret_cast<uint4*>(dst + r * (HS + kPad) + d) = v;
  }
}

// The A fragments of this warp's 16 rows of a row-major tile, for each 16-wide slice of the head dim.
template <int HS>
__device__ inline void load_a_fragments(uint32_t (&a)[HS / 16][4], const __nv_bfloat16* tile, int warp, int g, int t) {
  constexpr int ld = HS + kPad;
  const __nv_bfloat16* rows = tile + (warp * kWarpRows + g) * ld + 2 * t;
#pragma unroll
  for (int kk = 0; kk < HS / 16; ++kk) {
    a[kk][0] = load_pair(rows + kk * 16);
    a[kk][1] = load_pair(rows + 8 * ld + kk * 16);
    a[kk][2] = load_pair(rows + kk * 16 + 8);
    a[kk][3] = load_pair(rows + 8 * ld + kk * 16 + 8);
  }
}

// acc[nt] (16 x 8 tiles over the 64 columns) = A · tile^T, A this warp's fragments, tile row-major [64][HS + kPad]:
// S = Q K^T, dP = dO V^T and their transposes.
template <int HS>
__device__ inline void product_with_rows(float (&acc)[kTileKeys / 8][4], const uint32_t (&a)[HS / 16][4],
                                         const __nv_bfloat16* tile, int g, int t) {
  constexpr int ld = HS + kPad;
#pragma unroll
  for (int nt = 0; nt < kTileKeys / 8; ++nt) {
    acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
    const __nv_bfloat16* row = tile + (nt * 8 + g) * ld + 2 * t;
#pragma unroll
    for (int kk = 0; kk < HS / 16; ++kk)
      mma_bf16(acc[nt], a[kk], load_pair(row + kk * 16), load_pair(row + kk * 16 + 8));
  }
}

// acc[dt] += X · M over the 64 rows of a tile [64][HS + kPad] (attention_mma.cuh's accumulate_rows).
template <int HS>
__device__ inline void accumulate_with_rows(float (&acc)[HS / 8][4], const float (&x)[kTileKeys / 8][4],
                                            const __nv_bfloat16* tile, int lane) {
  accumulate_rows<HS, kTileKeys, HS + kPad>(acc, x, tile, lane);
}

// Hands out the dynamic shared memory in order: row-major tiles [64][HS+8], then floats.
template <int HS>
struct SharedCarver {
  unsigned char* next;
  __device__ __nv_bfloat16* rows() { return take<__nv_bfloat16>(kTileRows * (HS + kPad)); }
  __device__ float* floats(int n) { return take<float>(n); }
  template <typename T>
  __device__ T* take(int n) {
    T* p = reinterpret_cast<T*>(next);
    next += sizeof(T) * size_t(n);
    return p;
  }
};

// Grid (query tile, batch·head). Shared: Q, K, V [64][HS+8].
template <int HS>
__global__ void __launch_bounds__(kThreads)
    attention_forward_tc_kernel(float* out, __nv_bfloat16* out16, float* out_copy, float* lse, const __nv_bfloat16* qkv,
                                int T, int C, int NH, float scale) {
  ZT_DYNAMIC_SHARED(unsigned char, smem_bytes);
  SharedCarver<HS> carve{smem_bytes};
  __nv_bfloat16 *q_s = carve.rows(), *k_s = carve.rows(), *v_s = carve.rows();
  const HeadRows head = head_rows<HS>(qkv, nullptr, T, C, NH);
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTileRows;  // the longest query tiles start first
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize, g = lane / 4, t = lane % 4;

  load_rows<HS>(q_s, head.q, head.stride, q0, T);
  __syncthreads();
  uint32_t qa[HS / 16][4];
  load_a_fragments<HS>(qa, q_s, warp, g, t);
  const int row[2] = {q0 + warp * kWarpRows + g, q0 + warp * kWarpRows + g + 8};  // this thread's two queries
  float o[HS / 8][4];
  zero_tiles(o);
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};

  const int n_tiles = (min(q0 + kTileRows, T) - 1) / kTileKeys + 1;  // causal: keys up to the tile's last query
  for (int kt = 0; kt < n_tiles; ++kt) {
    const int k0 = kt * kTileKeys;
    __syncthreads();  // every warp is done with the previous K, V
    load_rows<HS>(k_s, head.k, head.stride, k0, T);
    load_rows<HS>(v_s, head.v, head.stride, k0, T);
    __syncthreads();
    float s[kTileKeys / 8][4];
    product_with_rows<HS>(s, qa, k_s, g, t);
    online_softmax_tile<HS, kTileKeys>(s, o, m_run, l_run, row, k0, t, scale);
    accumulate_with_rows<HS>(o, s, v_s, lane);  // O += P V
  }
  store_forward_rows<HS>(out, out16, out_copy, lse, o, m_run, l_run, row, head.bh, t, T, C, NH);
}

// dQ: grid (query tile, batch·head). dq[i] = scale * sum_j dS[i, j] K[j], dS = P ∘ (dO V^T - D).
// Shared: Q, dO, K, V [64][HS+8].
template <int HS>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dq_tc_kernel(float* dqkv, __nv_bfloat16* dqkv16, const __nv_bfloat16* dout,
                                    const __nv_bfloat16* qkv, const float* lse, const float* dsum, int T, int C, int NH,
                                    float scale) {
  ZT_DYNAMIC_SHARED(unsigned char, smem_bytes);
  SharedCarver<HS> carve{smem_bytes};
  __nv_bfloat16 *q_s = carve.rows(), *do_s = carve.rows(), *k_s = carve.rows(), *v_s = carve.rows();
  const HeadRows head = head_rows<HS>(qkv, dout, T, C, NH);
  const int bh = head.bh;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTileRows;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize, g = lane / 4, t = lane % 4;

  load_rows<HS>(q_s, head.q, head.stride, q0, T);
  load_rows<HS>(do_s, head.dout, size_t(C), q0, T);
  __syncthreads();
  uint32_t qa[HS / 16][4], da[HS / 16][4];
  load_a_fragments<HS>(qa, q_s, warp, g, t);
  load_a_fragments<HS>(da, do_s, warp, g, t);
  const int row[2] = {q0 + warp * kWarpRows + g, q0 + warp * kWarpRows + g + 8};
  float L[2], D[2];
  load_row_stats(L, D, lse, dsum, row, bh, T);
  float dq[HS / 8][4];
  zero_tiles(dq);

  const int n_tiles = (min(q0 + kTileRows, T) - 1) / kTileKeys + 1;
  for (int kt = 0; kt < n_tiles; ++kt) {
    const int k0 = kt * kTileKeys;
    __syncthreads();
    load_rows<HS>(k_s, head.k, head.stride, k0, T);
    load_rows<HS>(v_s, head.v, head.stride, k0, T);
    __syncthreads();
    float s[kTileKeys / 8][4], dp[kTileKeys / 8][4];
    product_with_rows<HS>(s, qa, k_s, g, t);
    product_with_rows<HS>(dp, da, v_s, g, t);
    scores_to_ds<kTileKeys>(s, dp, row, L, D, k0, t, T, scale);
    accumulate_with_rows<HS>(dq, s, k_s, lane);  // dQ += dS K
  }
  store_dq_rows<HS>(dqkv, dqkv16, dq, row, head, qkv, t, T, scale);
}

// dK, dV: grid (key tile, batch·head); each warp owns 16 keys and walks the query tiles from the diagonal on.
// S^T = K Q^T and dP^T = V dO^T give P^T and dS^T in the keys' rows: dV = P^T dO, dK = scale dS^T Q.
// Shared: K, V, Q, dO [64][HS+8], L and D of the query tile. kMinBlocks: 1 lets the compiler take the registers it
// wants (223 at HS = 64: 2 blocks an SM), 3 caps them for 3 blocks an SM at the price of a few spills; which is
// faster is for a GPU to say (ZT_CUDA_ATTENTION_DKV_BLOCKS).
template <int HS, int kMinBlocks>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    attention_backward_dkv_tc_kernel(float* dqkv, __nv_bfloat16* dqkv16, const __nv_bfloat16* dout,
                                     const __nv_bfloat16* qkv, const float* lse, const float* dsum, int T, int C,
                                     int NH, float scale) {
  ZT_DYNAMIC_SHARED(unsigned char, smem_bytes);
  SharedCarver<HS> carve{smem_bytes};
  __nv_bfloat16 *k_s = carve.rows(), *v_s = carve.rows(), *q_s = carve.rows(), *do_s = carve.rows();
  float *l_s = carve.floats(kTileKeys), *d_s = carve.floats(kTileKeys);
  const HeadRows head = head_rows<HS>(qkv, dout, T, C, NH);
  const int bh = head.bh;
  const int k_tile = blockIdx.x;  // the first key tiles walk the most queries: they start first
  const int k0 = k_tile * kTileRows;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize, g = lane / 4, t = lane % 4;

  load_rows<HS>(k_s, head.k, head.stride, k0, T);
  load_rows<HS>(v_s, head.v, head.stride, k0, T);
  __syncthreads();
  uint32_t ka[HS / 16][4], va[HS / 16][4];
  load_a_fragments<HS>(ka, k_s, warp, g, t);
  load_a_fragments<HS>(va, v_s, warp, g, t);
  const int key[2] = {k0 + warp * kWarpRows + g, k0 + warp * kWarpRows + g + 8};  // this thread's two keys
  float dk[HS / 8][4], dv[HS / 8][4];
  zero_tiles(dk);
  zero_tiles(dv);

  const int n_q_tiles = (T + kTileKeys - 1) / kTileKeys;
  for (int qt = k_tile; qt < n_q_tiles; ++qt) {
    const int q0 = qt * kTileKeys;
    __syncthreads();
    load_rows<HS>(q_s, head.q, head.stride, q0, T);
    load_rows<HS>(do_s, head.dout, size_t(C), q0, T);
    for (int r = threadIdx.x; r < kTileKeys; r += kThreads) {
      const int i = q0 + r;
      l_s[r] = i < T ? lse[size_t(bh) * T + i] : 0.0f;
      d_s[r] = i < T ? dsum[size_t(bh) * T + i] : 0.0f;
    }
    __syncthreads();
    float st[kTileKeys / 8][4], dpt[kTileKeys / 8][4];
    product_with_rows<HS>(st, ka, q_s, g, t);
    product_with_rows<HS>(dpt, va, do_s, g, t);
    transposed_scores_to_p_ds<kTileKeys>(st, dpt, key, l_s, d_s, 0, q0, t, T, scale);
    accumulate_with_rows<HS>(dv, st, do_s, lane);  // dV += P^T dO
    accumulate_with_rows<HS>(dk, dpt, q_s, lane);  // dK += dS^T Q
  }
  store_dkv_rows<HS>(dqkv, dqkv16, dk, dv, key, head, qkv, t, T, C, scale);
}

constexpr size_t rows_bytes(int hs) { return sizeof(__nv_bfloat16) * size_t(kTileRows) * size_t(hs + kPad); }

// Calls fn(std::integral_constant<int, HS>) for a supported head size.
template <typename Fn>
void with_head_size(int hs, Fn&& fn) {
  switch (hs) {
    case 32:
      fn(std::integral_constant<int, 32>{});
      break;
    case 64:
      fn(std::integral_constant<int, 64>{});
      break;
    default:
      ZT_FAIL("attention (tensor cores): head size {} is not supported (32 or 64)", hs);
  }
}

}  // namespace

bool attention_tc_supports(int hs) { return hs == 32 || hs == 64; }

void attention_forward_tc(float* out, __nv_bfloat16* out16, float* out_copy, float* lse, const __nv_bfloat16* qkv16,
                          int B, int T, int C, int NH, cudaStream_t stream) {
  const int hs = C / NH;
  const float scale = 1.0f / sqrtf(float(hs));
  const dim3 grid(unsigned((T + kTileRows - 1) / kTileRows), unsigned(B * NH));
  with_head_size(hs, [&](auto head) {
    constexpr int HS = decltype(head)::value;
    const size_t shared_bytes = 3 * rows_bytes(HS);
    auto kernel = attention_forward_tc_kernel<HS>;
    allow_shared_bytes(kernel, shared_bytes);
    ZT_LAUNCH(kernel, grid, kThreads, shared_bytes, stream)(out, out16, out_copy, lse, qkv16, T, C, NH, scale);
    ZT_CUDA_LAUNCH_CHECK();
  });
}

void attention_backward_tc(float* dqkv, __nv_bfloat16* dqkv16, const __nv_bfloat16* dout16, const __nv_bfloat16* qkv16,
                           const float* lse, const float* dsum, int B, int T, int C, int NH, bool dkv_capped,
                           cudaStream_t stream) {
  const int hs = C / NH;
  const float scale = 1.0f / sqrtf(float(hs));
  const dim3 grid(unsigned((T + kTileRows - 1) / kTileRows), unsigned(B * NH));
  with_head_size(hs, [&](auto head) {
    constexpr int HS = decltype(head)::value;
    const size_t dq_bytes = 4 * rows_bytes(HS);
    auto dq_kernel = attention_backward_dq_tc_kernel<HS>;
    allow_shared_bytes(dq_kernel, dq_bytes);
    ZT_LAUNCH(dq_kernel, grid, kThreads, dq_bytes, stream)(dqkv, dqkv16, dout16, qkv16, lse, dsum, T, C, NH, scale);
    ZT_CUDA_LAUNCH_CHECK();
    const size_t dkv_bytes = 4 * rows_bytes(HS) + 2 * sizeof(float) * kTileKeys;
    auto dkv_kernel = dkv_capped ? attention_backward_dkv_tc_kernel<HS, 3> : attention_backward_dkv_tc_kernel<HS, 1>;
    allow_shared_bytes(dkv_kernel, dkv_bytes);
    ZT_LAUNCH(dkv_kernel, grid, kThreads, dkv_bytes, stream)(dqkv, dqkv16, dout16, qkv16, lse, dsum, T, C, NH, scale);
    ZT_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace zt::cuda
