// Token + position embedding on the GPU: forward, and the deterministic bucketed backward (no atomics).
//
// The backward follows llm.c's scheme: the rows are grouped by token on the host (the tokens are host data the
// step uploads anyway), then each (bucket, channel) thread walks its bucket's rows in order and adds them into its
// own element of dwte. No two threads write one element and every sum has the CPU's order, so the result is
// bitwise the CPU reference's.
#include <algorithm>

#include "cuda/cuda_common.cuh"
#include "cuda/embedding.cuh"

namespace zt::cuda {
namespace {

constexpr int kBlock = 128;

// One block per (b, t) row; threads stride over the channels (coalesced). out16 (may be null): out held in bf16
// (out then null), written rounded.
__global__ void embedding_forward_kernel(float* out, __nv_bfloat16* out16, const int32_t* tokens, const float* wte,
                                         const float* wpe, int T, int C) {
  const size_t row = blockIdx.x;
  const int t = int(row % size_t(T));
  const float* w_tok = wte + size_t(tokens[row]) * C;
  const float* w_pos = wpe + size_t(t) * C;
  float* o = out != nullptr ? out + row * C : nullptr;
  __nv_bfloat16* o16 = out16 != nullptr ? out16 + row * C : nullptr;
  for (int c = threadIdx.x; c < C; c += blockDim.x) store_kept(o, o16, size_t(c), w_tok[c] + w_pos[c]);
}

// dwpe[t, c] += dout[b, t, c] for b = 0..B-1 in order; one thread per (t, c).
__global__ void embedding_backward_wpe_kernel(float* dwpe, ActIn dout, int B, int T, int C) {
  const size_t n = size_t(T) * C;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    float acc = dwpe[i];
    for (int b = 0; b < B; ++b) acc += dout[size_t(b) * n + i];
    dwpe[i] = acc;
  }
}

// Grid (bucket, channel block): dwte[token, c] += dout[row, c] for the bucket's rows in ascending order.
__global__ void embedding_backward_wte_kernel(float* dwte, ActIn dout, TokenBuckets buckets, int C) {
  const int bucket = blockIdx.x;
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int begin = buckets.starts[bucket], end = buckets.starts[bucket + 1];
  float* dw = dwte + size_t(buckets.tokens[bucket]) * C + c;
  float acc = *dw;
  for (int k = begin; k < end; ++k) acc += dout[size_t(buckets.rows[k]) * C + c];
  *dw = acc;
}

}  // namespace

int build_token_buckets(const int32_t* tokens, int n, std::vector<int32_t>& packed) {
  int32_t max_token = -1;
  for (int i = 0; i < n; ++i) {
    ZT_CHECK(tokens[i] >= 0, "embedding_backward: token {} at row {} is negative", tokens[i], i);
    max_token = std::max(max_token, tokens[i]);
  }
  // Counting sort by token: counts, then each row placed at its token's next slot in row order (stable).
  std::vector<int32_t> first(size_t(max_token) + 2, 0);
  for (int i = 0; i < n; ++i) ++first[size_t(tokens[i]) + 1];
  int n_buckets = 0;
  for (size_t v = 1; v < first.size(); ++v) {
    n_buckets += first[v] > 0 ? 1 : 0;
    first[v] += first[v - 1];
  }
  packed.assign(size_t(n) + size_t(n_buckets) + 1 + size_t(n_buckets), 0);
  int32_t* rows = packed.data();
  int32_t* starts = rows + n;
  int32_t* bucket_tokens = starts + n_buckets + 1;
  std::vector<int32_t> next(first.begin(), first.end() - 1);
  for (int i = 0; i < n; ++i) rows[next[size_t(tokens[i])]++] = i;
  int b = 0;
  for (int32_t v = 0; v <= max_token; ++v) {
    if (first[size_t(v) + 1] == first[size_t(v)]) continue;
    starts[b] = first[size_t(v)];
    bucket_tokens[b] = v;
    ++b;
  }
  starts[n_buckets] = n;
  return n_buckets;
}

TokenBuckets token_buckets_view(const int32_t* packed_device, int n, int n_buckets) {
  TokenBuckets view;
  view.rows = packed_device;
  view.starts = packed_device + n;
  view.tokens = packed_device + n + n_buckets + 1;
  view.n_buckets = n_buckets;
  return view;
}

void HostTokenCopies::record(const int32_t* dst, const int32_t* host, size_t n) {
  const uintptr_t begin = reinterpret_cast<uintptr_t>(dst), end = begin + n * sizeof(int32_t);
  for (auto it = uploads_.begin(); it != uploads_.end() && it->first < end; ++it) {
    const uintptr_t rec_end = it->first + it->second.size() * sizeof(int32_t);
    const uintptr_t lo = std::max(begin, it->first), hi = std::min(end, rec_end);
    if (lo >= hi || it->first == begin) continue;
    std::copy(host + (lo - begin) / sizeof(int32_t), host + (hi - begin) / sizeof(int32_t),
              it->second.begin() + long((lo - it->first) / sizeof(int32_t)));
  }
  uploads_[begin].assign(host, host + n);
}

const int32_t* HostTokenCopies::find(const int32_t* tokens, size_t n) const {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(tokens);
  auto it = uploads_.upper_bound(addr);
  ZT_CHECK(it != uploads_.begin(),
           "embedding_backward: the CUDA backend needs the tokens uploaded with tokens_from_host");
  --it;
  const size_t offset = (addr - it->first) / sizeof(int32_t);
  ZT_CHECK(offset + n <= it->second.size(),
           "embedding_backward: tokens [{}, +{}) lie outside the last tokens_from_host upload of {} tokens", offset, n,
           it->second.size());
  return it->second.data() + offset;
}

void HostTokenCopies::forget(uintptr_t begin, uintptr_t end) {
  uploads_.erase(uploads_.lower_bound(begin), uploads_.lower_bound(end));
}

void embedding_forward(float* out, __nv_bfloat16* out16, const int32_t* tokens, const float* wte, const float* wpe,
                       int B, int T, int C, cudaStream_t stream) {
  const int n_rows = B * T;
  if (n_rows == 0 || C == 0) return;
  ZT_LAUNCH(embedding_forward_kernel, n_rows, kBlock, 0, stream)(out, out16, tokens, wte, wpe, T, C);
  ZT_CUDA_LAUNCH_CHECK();
}

void embedding_backward(float* dwte, float* dwpe, ActIn dout, const TokenBuckets& buckets, int B, int T, int C,
                        cudaStream_t stream) {
  if (B * T == 0 || C == 0) return;
  ZT_LAUNCH(embedding_backward_wpe_kernel, grid_for(size_t(T) * C, kBlock), kBlock, 0, stream)(dwpe, dout, B, T, C);
  ZT_CUDA_LAUNCH_CHECK();
  if (buckets.n_buckets == 0) return;
  const dim3 grid(unsigned(buckets.n_buckets), unsigned(ceil_div(size_t(C), kBlock)));
  ZT_LAUNCH(embedding_backward_wte_kernel, grid, kBlock, 0, stream)(dwte, dout, buckets, C);
  ZT_CUDA_LAUNCH_CHECK();
}

}  // namespace zt::cuda
