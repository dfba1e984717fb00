// Causal multi-head attention on the GPU: flash-style fused fp32 kernels; nothing of size T×T is ever stored.
//
// Forward: a block per (32-query tile, batch·head). Key/value tiles of 32 stream through shared memory and an
// online softmax keeps a running max m and sum l per row, so a block holds O(32·hs) whatever T is. Each of the 4
// warps owns 8 query rows; for scores a lane owns one key of the tile, for the output a lane owns dims
// lane, lane+32, ... (DPL = ceil(hs/32) of them, a template parameter so the accumulators stay in registers).
// The backward needs, per row, L = m + log l and D = sum_d dO·O. Both live in the contract's att buffer, which this
// backend does not fill with probabilities: L at att[0, B·NH·T), a copy of O after it when hs + 1 <= T (always
// for GPT-2); otherwise the backward recomputes O with the forward kernel.
// Backward without atomics: one kernel per query tile walks the key tiles for dQ, another per key tile walks the
// query tiles for dK and dV; each recomputes P = exp(S - L) and dS = P ∘ (dP - D), dP = dO V^T. Every sum runs
// in a fixed order, so results are deterministic.
// These kernels run on the fp32 pipes: the fp32 mode's attention, and the bf16 mode's for head sizes other than 32
// and 64 or unaligned buffers; the bf16 mode otherwise runs attention_tc.cu's tensor-core twins of them (same
// schedule, same att contents).
#include <cmath>
#include <cstdio>
#include <mutex>
#include <type_traits>

#include "cuda/attention.cuh"
#include "cuda/attention_fa2.cuh"
#include "cuda/attention_tc.cuh"
#include "cuda/cast.cuh"
#include "cuda/cuda_common.cuh"
#include "cuda/device_memory.cuh"

namespace zt::cuda {
namespace {

constexpr int kTile = 32;  // queries or keys per tile: one per lane
constexpr int kWarps = 4;
constexpr int kRowsPerWarp = kTile / kWarps;
constexpr int kThreads = kWarps * kWarpSize;
constexpr unsigned kFullMask = 0xffffffffu;

// dst[r * ld + d] = src[(t0 + r) * row_stride + d] for r < kTile, d < hs; rows past T read as 0.
__device__ inline void load_tile(float* dst, int ld, const float* src, size_t row_stride, int t0, int T, int hs) {
  for (int idx = threadIdx.x; idx < kTile * hs; idx += blockDim.x) {
    const int r = idx / hs, d = idx - r * hs;
    const int t = t0 + r;
    dst[r * ld + d] = t < T ? src[size_t(t) * row_stride + d] : 0.0f;
  }
}

// Grid (query tile, batch·head). Writes out (and, when out16 is given, its bf16 copy), optionally out_copy, and
// lse[bh * T + i] = m + log l per row.
template <int DPL>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(float* out, __nv_bfloat16* out16, float* out_copy, float* lse, const float* qkv, int T,
                             int C, int NH, int hs, float scale) {
  ZT_DYNAMIC_SHARED(float, smem);
  const int ldk = hs + 1;          // rows read one per lane: padded so the lanes hit distinct banks
  float* q_s = smem;               // [kTile][hs]: read as broadcasts
  float* k_s = q_s + kTile * hs;   // [kTile][hs + 1]
  float* v_s = k_s + kTile * ldk;  // [kTile][hs]: lanes read consecutive dims
  const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTile;  // the last (longest) query tiles start first
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int r_base = warp * kRowsPerWarp;
  const size_t row3 = size_t(3) * C;
  const float* q_g = qkv + size_t(b) * T * row3 + size_t(h) * hs;
  const float* k_g = q_g + C;
  const float* v_g = q_g + 2 * size_t(C);

  load_tile(q_s, hs, q_g, row3, q0, T, hs);
  float m_run[kRowsPerWarp], l_run[kRowsPerWarp], acc[kRowsPerWarp][DPL];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    m_run[r] = -INFINITY;
    l_run[r] = 0.0f;
#pragma unroll
    for (int k = 0; k < DPL; ++k) acc[r][k] = 0.0f;
  }
  const int n_kv_tiles = (min(q0 + kTile, T) - 1) / kTile + 1;  // causal: keys up to the tile's last query
  for (int kt = 0; kt < n_kv_tiles; ++kt) {
    const int k0 = kt * kTile;
    __syncthreads();  // every warp is done with the previous K, V tiles
    load_tile(k_s, ldk, k_g, row3, k0, T, hs);
    load_tile(v_s, hs, v_g, row3, k0, T, hs);
    __syncthreads();
    float s[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) s[r] = 0.0f;
    for (int d = 0; d < hs; ++d) {
      const float kd = k_s[lane * ldk + d];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) s[r] += q_s[(r_base + r) * hs + d] * kd;
    }
    const int j = k0 + lane;
    float p[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      // Key k0 <= q0 <= i is always visible, so m_new is finite and exp(-inf - m_new) = 0 for masked keys. Rows
      // i >= T compute finite garbage that is never written.
      const int i = q0 + r_base + r;
      const float x = j <= i ? s[r] * scale : -INFINITY;
      const float m_new = fmaxf(m_run[r], warp_max(x));
      const float pr = expf(x - m_new);
      const float corr = expf(m_run[r] - m_new);  // 0 on the first tile (m_run = -inf)
      l_run[r] = l_run[r] * corr + warp_sum(pr);
#pragma unroll
      for (int k = 0; k < DPL; ++k) acc[r][k] *= corr;
      m_run[r] = m_new;
      p[r] = pr;
    }
    for (int jj = 0; jj < kTile; ++jj) {
      float vd[DPL];
#pragma unroll
      for (int k = 0; k < DPL; ++k) {
        const int d = lane + k * kWarpSize;
        vd[k] = d < hs ? v_s[jj * hs + d] : 0.0f;
      }
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const float pj = __shfl_sync(kFullMask, p[r], jj);
#pragma unroll
        for (int k = 0; k < DPL; ++k) acc[r][k] += pj * vd[k];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int i = q0 + r_base + r;
    if (i >= T) continue;
    const float inv = 1.0f / l_run[r];
    const size_t off = (size_t(b) * T + i) * C + size_t(h) * hs;
#pragma unroll
    for (int k = 0; k < DPL; ++k) {
      const int d = lane + k * kWarpSize;
      if (d >= hs) continue;
      store_kept(out, out16, off + d, acc[r][k] * inv);
      if (out_copy != nullptr) out_copy[off + d] = acc[r][k] * inv;
    }
    if (lane == 0) lse[size_t(bh) * T + i] = m_run[r] + logf(l_run[r]);
  }
}

// D[bh * T + i] = sum_d dout[b, i, h, d] * o[b, i, h, d]; one warp per row.
__global__ void attention_backward_dsum_kernel(float* dsum, ActIn dout, const float* o, int n_rows, int T, int C,
                                               int NH, int hs) {
  const int lane = threadIdx.x % kWarpSize;
  const int row = blockIdx.x * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  if (row >= n_rows) return;
  const int bh = row / T, i = row - bh * T, b = bh / NH, h = bh - b * NH;
  const size_t off = (size_t(b) * T + i) * C + size_t(h) * hs;
  float s = 0.0f;
  for (int d = lane; d < hs; d += kWarpSize) s += dout[off + d] * o[off + d];
  s = warp_sum(s);
  if (lane == 0) dsum[row] = s;
}

// dQ: grid (query tile, batch·head). dq[i] = scale * sum_j dS[i, j] K[j], dS = P ∘ (dO V^T - D).
template <int DPL>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dq_kernel(float* dqkv, __nv_bfloat16* dqkv16, const float* dout, const float* qkv,
                                 const float* lse, const float* dsum, int T, int C, int NH, int hs, float scale) {
  ZT_DYNAMIC_SHARED(float, smem);
  const int ldk = hs + 1;
  float* q_s = smem;               // [kTile][hs] broadcasts
  float* do_s = q_s + kTile * hs;  // [kTile][hs] broadcasts
  float* k_s = do_s + kTile * hs;  // [kTile][hs + 1]: a row per lane for S, consecutive dims for dQ
  float* v_s = k_s + kTile * ldk;  // [kTile][hs + 1]: a row per lane for dP
  const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTile;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int r_base = warp * kRowsPerWarp;
  const size_t row3 = size_t(3) * C;
  const float* q_g = qkv + size_t(b) * T * row3 + size_t(h) * hs;
  const float* k_g = q_g + C;
  const float* v_g = q_g + 2 * size_t(C);
  const float* do_g = dout + size_t(b) * T * C + size_t(h) * hs;

  load_tile(q_s, hs, q_g, row3, q0, T, hs);
  load_tile(do_s, hs, do_g, size_t(C), q0, T, hs);
  float L[kRowsPerWarp], D[kRowsPerWarp], acc[kRowsPerWarp][DPL];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int i = q0 + r_base + r;
    L[r] = i < T ? lse[size_t(bh) * T + i] : 0.0f;
    D[r] = i < T ? dsum[size_t(bh) * T + i] : 0.0f;
#pragma unroll
    for (int k = 0; k < DPL; ++k) acc[r][k] = 0.0f;
  }
  const int n_kv_tiles = (min(q0 + kTile, T) - 1) / kTile + 1;
  for (int kt = 0; kt < n_kv_tiles; ++kt) {
    const int k0 = kt * kTile;
    __syncthreads();
    load_tile(k_s, ldk, k_g, row3, k0, T, hs);
    load_tile(v_s, ldk, v_g, row3, k0, T, hs);
    __syncthreads();
    float s[kRowsPerWarp], dp[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) s[r] = dp[r] = 0.0f;
    for (int d = 0; d < hs; ++d) {
      const float kd = k_s[lane * ldk + d], vd = v_s[lane * ldk + d];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        s[r] += q_s[(r_base + r) * hs + d] * kd;
        dp[r] += do_s[(r_base + r) * hs + d] * vd;
      }
    }
    const int j = k0 + lane;
    float ds[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int i = q0 + r_base + r;
      const float p = j <= i && i < T ? expf(s[r] * scale - L[r]) : 0.0f;
      ds[r] = p * (dp[r] - D[r]);
    }
    for (int jj = 0; jj < kTile; ++jj) {
      float kd[DPL];
#pragma unroll
      for (int k = 0; k < DPL; ++k) {
        const int d = lane + k * kWarpSize;
        kd[k] = d < hs ? k_s[jj * ldk + d] : 0.0f;
      }
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const float dsj = __shfl_sync(kFullMask, ds[r], jj);
#pragma unroll
        for (int k = 0; k < DPL; ++k) acc[r][k] += dsj * kd[k];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int i = q0 + r_base + r;
    if (i >= T) continue;
    const size_t dq = (size_t(b) * T + i) * row3 + size_t(h) * hs;
#pragma unroll
    for (int k = 0; k < DPL; ++k) {
      const int d = lane + k * kWarpSize;
      if (d < hs) store_kept(dqkv, dqkv16, dq + d, acc[r][k] * scale);
    }
  }
}

// dK, dV: grid (key tile, batch·head). dv[j] = sum_i P[i, j] dO[i]; dk[j] = scale * sum_i dS[i, j] Q[i].
template <int DPL>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dkv_kernel(float* dqkv, __nv_bfloat16* dqkv16, const float* dout, const float* qkv,
                                  const float* lse, const float* dsum, int T, int C, int NH, int hs, float scale) {
  ZT_DYNAMIC_SHARED(float, smem);
  const int ldq = hs + 1;
  float* k_s = smem;                // [kTile][hs] broadcasts (this warp's keys)
  float* v_s = k_s + kTile * hs;    // [kTile][hs] broadcasts
  float* q_s = v_s + kTile * hs;    // [kTile][hs + 1]: a row per lane for S, consecutive dims for dK
  float* do_s = q_s + kTile * ldq;  // [kTile][hs + 1]: a row per lane for dP, consecutive dims for dV
  const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
  const int k_tile = blockIdx.x;  // the first key tiles walk the most queries: they start first
  const int k0 = k_tile * kTile;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int r_base = warp * kRowsPerWarp;
  const size_t row3 = size_t(3) * C;
  const float* q_g = qkv + size_t(b) * T * row3 + size_t(h) * hs;
  const float* k_g = q_g + C;
  const float* v_g = q_g + 2 * size_t(C);
  const float* do_g = dout + size_t(b) * T * C + size_t(h) * hs;

  load_tile(k_s, hs, k_g, row3, k0, T, hs);
  load_tile(v_s, hs, v_g, row3, k0, T, hs);
  float acc_dk[kRowsPerWarp][DPL], acc_dv[kRowsPerWarp][DPL];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int k = 0; k < DPL; ++k) acc_dk[r][k] = acc_dv[r][k] = 0.0f;
  const int n_q_tiles = (T + kTile - 1) / kTile;
  for (int qt = k_tile; qt < n_q_tiles; ++qt) {
    const int q0 = qt * kTile;
    __syncthreads();
    load_tile(q_s, ldq, q_g, row3, q0, T, hs);
    load_tile(do_s, ldq, do_g, size_t(C), q0, T, hs);
    __syncthreads();
    const int i = q0 + lane;  // this lane's query
    const float L = i < T ? lse[size_t(bh) * T + i] : 0.0f;
    const float D = i < T ? dsum[size_t(bh) * T + i] : 0.0f;
    float s[kRowsPerWarp], dp[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) s[r] = dp[r] = 0.0f;
    for (int d = 0; d < hs; ++d) {
      const float qd = q_s[lane * ldq + d], dod = do_s[lane * ldq + d];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        s[r] += qd * k_s[(r_base + r) * hs + d];
        dp[r] += dod * v_s[(r_base + r) * hs + d];
      }
    }
    float p[kRowsPerWarp], ds[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int j = k0 + r_base + r;
      p[r] = j <= i && i < T ? expf(s[r] * scale - L) : 0.0f;
      ds[r] = p[r] * (dp[r] - D);
    }
    for (int ii = 0; ii < kTile; ++ii) {
      float qd[DPL], dod[DPL];
#pragma unroll
      for (int k = 0; k < DPL; ++k) {
        const int d = lane + k * kWarpSize;
        qd[k] = d < hs ? q_s[ii * ldq + d] : 0.0f;
        dod[k] = d < hs ? do_s[ii * ldq + d] : 0.0f;
      }
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const float pi = __shfl_sync(kFullMask, p[r], ii);
        const float dsi = __shfl_sync(kFullMask, ds[r], ii);
#pragma unroll
        for (int k = 0; k < DPL; ++k) {
          acc_dv[r][k] += pi * dod[k];
          acc_dk[r][k] += dsi * qd[k];
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int j = k0 + r_base + r;
    if (j >= T) continue;
    const size_t dk = (size_t(b) * T + j) * row3 + C + size_t(h) * hs, dv = dk + C;
#pragma unroll
    for (int k = 0; k < DPL; ++k) {
      const int d = lane + k * kWarpSize;
      if (d >= hs) continue;
      store_kept(dqkv, dqkv16, dk + d, acc_dk[r][k] * scale);
      store_kept(dqkv, dqkv16, dv + d, acc_dv[r][k]);
    }
  }
}

// Calls fn(std::integral_constant<int, DPL>) for the head size's dims per lane (1..4).
template <typename Fn>
void with_dims_per_lane(int hs, Fn&& fn) {
  switch ((hs + kWarpSize - 1) / kWarpSize) {
    case 1:
      fn(std::integral_constant<int, 1>{});
      break;
    case 2:
      fn(std::integral_constant<int, 2>{});
      break;
    case 3:
      fn(std::integral_constant<int, 3>{});
      break;
    default:
      fn(std::integral_constant<int, 4>{});
      break;
  }
}

int head_dim(int C, int NH) {
  ZT_CHECK(NH > 0 && C % NH == 0, "attention: d_model {} is not a multiple of n_head {}", C, NH);
  const int hs = C / NH;
  ZT_CHECK(hs >= 1 && hs <= kAttentionMaxHeadDim, "attention: the CUDA kernels take head sizes 1..{}, got {}",
           kAttentionMaxHeadDim, hs);
  return hs;
}

bool att_holds_out_copy(int T, int hs) { return hs + 1 <= T; }

// Whether the forward and the backward run on the tensor cores: asked for, and a head size they take. Both decide
// alike: the backward's statistics must come from the same kernels.
bool use_tensor_cores(bool tensor_cores, int hs) { return tensor_cores && attention_tc_supports(hs); }

// Whether the tensor cores run the fa2 kernels (--cuda_attention fa2): head size 64 only; any other runs what auto
// would, said once a process, as a model has one head size.
bool use_fa2(bool fa2, int hs) {
  if (!fa2 || attention_fa2_supports(hs)) return fa2;
  static std::once_flag said;
  std::call_once(said, [hs] {
    std::fprintf(stderr,
                 "zerotrain: --cuda_attention fa2 is built for head size 64; head size %d runs the %s kernels\n", hs,
                 attention_tc_supports(hs) ? "tensor-core (auto)" : "fp32");
  });
  return false;
}

// Floats rounded up to align_bytes' 256-byte boundary: where a bf16 region may start inside att or the scratch.
size_t aligned_floats(size_t n) { return align_bytes(n * sizeof(float)) / sizeof(float); }
// Floats that hold n bf16 values.
size_t floats_for_bf16(size_t n) { return (n + 1) / 2; }

// att: the row statistics (n_stats), the output copy when it fits, then, for the tensor cores, qkv rounded to bf16
// (the forward rounds it once; the kernels then load half the bytes, at any alignment of qkv, and the backward
// reuses it).
size_t qkv16_offset(int B, int T, int C, int NH) {
  const size_t n_stats = size_t(B) * NH * T, n_out = size_t(B) * T * C;
  return aligned_floats(n_stats + (att_holds_out_copy(T, head_dim(C, NH)) ? n_out : 0));
}
// Backward scratch: the row sums D (n_stats), room to recompute out and lse when att cannot hold the output copy,
// then, for the tensor cores, dout rounded to bf16.
size_t dout16_offset(int B, int T, int C, int NH) {
  const size_t n_stats = size_t(B) * NH * T, n_out = size_t(B) * T * C;
  return aligned_floats(n_stats + (att_holds_out_copy(T, head_dim(C, NH)) ? 0 : n_out + n_stats));
}

void launch_forward(float* out, __nv_bfloat16* out16, float* out_copy, float* lse, const float* qkv,
                    const __nv_bfloat16* qkv16, int B, int T, int C, int NH, bool tensor_cores, bool fa2,
                    cudaStream_t stream) {
  const int hs = head_dim(C, NH);
  if (use_tensor_cores(tensor_cores, hs)) {
    if (use_fa2(fa2, hs))
      attention_forward_fa2(out, out16, out_copy, lse, qkv16, B, T, C, NH, stream);
    else
      attention_forward_tc(out, out16, out_copy, lse, qkv16, B, T, C, NH, stream);
    return;
  }
  const float scale = 1.0f / sqrtf(float(hs));
  const dim3 grid(unsigned((T + kTile - 1) / kTile), unsigned(B * NH));
  const size_t shared_bytes = sizeof(float) * size_t(kTile) * (2 * hs + hs + 1);
  with_dims_per_lane(hs, [&](auto dpl) {
    auto kernel = attention_forward_kernel<decltype(dpl)::value>;
    allow_shared_bytes(kernel, shared_bytes);
    ZT_LAUNCH(kernel, grid, kThreads, shared_bytes, stream)(out, out16, out_copy, lse, qkv, T, C, NH, hs, scale);
    ZT_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace

bool attention_reads_bf16(int C, int NH, bool tensor_cores) { return use_tensor_cores(tensor_cores, head_dim(C, NH)); }

void attention_forward(float* out, __nv_bfloat16* out16, float* att, const float* qkv, const __nv_bfloat16* qkv_held,
                       int B, int T, int C, int NH, bool tensor_cores, bool fa2, cudaStream_t stream) {
  ZT_CHECK(att != nullptr, "attention_forward: the CUDA backend keeps the backward's row statistics in att");
  ZT_CHECK(qkv_held == nullptr || attention_reads_bf16(C, NH, tensor_cores),
           "attention_forward: qkv held in bf16 needs the tensor-core kernels (bf16 mode, head size 32 or 64)");
  if (B == 0 || T == 0) return;
  const int hs = head_dim(C, NH);
  float* out_copy = att_holds_out_copy(T, hs) ? att + size_t(B) * NH * T : nullptr;
  const __nv_bfloat16* qkv16 = qkv_held;  // held: the kernels read it as it is, no rounded copy in att
  if (qkv16 == nullptr && use_tensor_cores(tensor_cores, hs)) {
    auto* rounded = reinterpret_cast<__nv_bfloat16*>(att + qkv16_offset(B, T, C, NH));
    cast_to_bf16(rounded, qkv, size_t(B) * T * 3 * C, stream);
    qkv16 = rounded;
  }
  launch_forward(out, out16, out_copy, att, qkv, qkv16, B, T, C, NH, tensor_cores, fa2, stream);
}

size_t attention_state_elems(int B, int T, int C, int NH, bool tensor_cores) {
  const int hs = head_dim(C, NH);
  const size_t n_stats = size_t(B) * NH * T, n_out = size_t(B) * T * C;
  if (use_tensor_cores(tensor_cores, hs)) return qkv16_offset(B, T, C, NH) + floats_for_bf16(3 * n_out);
  return n_stats + (att_holds_out_copy(T, hs) ? n_out : 0);
}

size_t attention_backward_scratch_elems(int B, int T, int C, int NH, bool tensor_cores) {
  const int hs = head_dim(C, NH);
  const size_t n_stats = size_t(B) * NH * T, n_out = size_t(B) * T * C;
  if (use_tensor_cores(tensor_cores, hs)) return dout16_offset(B, T, C, NH) + floats_for_bf16(n_out);
  return n_stats + (att_holds_out_copy(T, hs) ? 0 : n_out + n_stats);
}

void attention_backward(float* dqkv, __nv_bfloat16* dqkv16, ActIn dout, const float* qkv, const __nv_bfloat16* qkv_held,
                        const float* att, int B, int T, int C, int NH, bool tensor_cores, bool dkv_capped, bool fa2,
                        float* scratch, cudaStream_t stream) {
  ZT_CHECK(att != nullptr, "attention_backward: the CUDA backend reads the forward's row statistics from att");
  ZT_CHECK(
      (qkv_held == nullptr && dout.b16 == nullptr) || attention_reads_bf16(C, NH, tensor_cores),
      "attention_backward: qkv or dout held in bf16 needs the tensor-core kernels (bf16 mode, head size 32 or 64)");
  if (B == 0 || T == 0) return;
  const int hs = head_dim(C, NH);
  const float scale = 1.0f / sqrtf(float(hs));
  const size_t n_stats = size_t(B) * NH * T;
  const float* lse = att;
  float* dsum = scratch;
  const float* o = att + n_stats;
  const bool tc = use_tensor_cores(tensor_cores, hs);
  // The forward's bf16 qkv (tensor cores only): the held values, or the copy in att.
  const __nv_bfloat16* qkv16 = qkv_held != nullptr ? qkv_held
                               : tc ? reinterpret_cast<const __nv_bfloat16*>(att + qkv16_offset(B, T, C, NH))
                                    : nullptr;
  if (!att_holds_out_copy(T, hs)) {  // short sequences: recompute O (and L, bitwise the same) into scratch
    float* o_scratch = scratch + n_stats;
    float* lse_scratch = o_scratch + size_t(B) * T * C;
    launch_forward(o_scratch, nullptr, nullptr, lse_scratch, qkv, qkv16, B, T, C, NH, tensor_cores, fa2, stream);
    o = o_scratch;
    lse = lse_scratch;
  }
  const int n_rows = B * NH * T;
  const int rows_per_block = kThreads / kWarpSize;
  ZT_LAUNCH(attention_backward_dsum_kernel, (n_rows + rows_per_block - 1) / rows_per_block, kThreads, 0, stream)
  (dsum, dout, o, n_rows, T, C, NH, hs);
  ZT_CUDA_LAUNCH_CHECK();
  if (tc) {
    // dO rounded once, as the kernels would round it per tile load (the same bits), into aligned scratch; held,
    // read as it is.
    const __nv_bfloat16* dout16 = dout.b16;
    if (dout16 == nullptr) {
      auto* rounded = reinterpret_cast<__nv_bfloat16*>(scratch + dout16_offset(B, T, C, NH));
      cast_to_bf16(rounded, dout.f32, size_t(B) * T * C, stream);
      dout16 = rounded;
    }
    if (use_fa2(fa2, hs))
      attention_backward_fa2(dqkv, dqkv16, dout16, qkv16, lse, dsum, B, T, C, NH, stream);
    else
      attention_backward_tc(dqkv, dqkv16, dout16, qkv16, lse, dsum, B, T, C, NH, dkv_capped, stream);
    return;
  }
  const dim3 grid(unsigned((T + kTile - 1) / kTile), unsigned(B * NH));
  const size_t shared_bytes = sizeof(float) * size_t(kTile) * (2 * hs + 2 * (hs + 1));
  with_dims_per_lane(hs, [&](auto dpl) {
    auto dq_kernel = attention_backward_dq_kernel<decltype(dpl)::value>;
    allow_shared_bytes(dq_kernel, shared_bytes);
    ZT_LAUNCH(dq_kernel, grid, kThreads, shared_bytes, stream)
    (dqkv, dqkv16, dout.f32, qkv, lse, dsum, T, C, NH, hs, scale);
    ZT_CUDA_LAUNCH_CHECK();
    auto dkv_kernel = attention_backward_dkv_kernel<decltype(dpl)::value>;
    allow_shared_bytes(dkv_kernel, shared_bytes);
    ZT_LAUNCH(dkv_kernel, grid, kThreads, shared_bytes, stream)
    (dqkv, dqkv16, dout.f32, qkv, lse, dsum, T, C, NH, hs, scale);
    ZT_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace zt::cuda
