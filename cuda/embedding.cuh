// Token + position embedding on the GPU: forward, and the deterministic bucketed backward (no atomics).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <vector>

#include "cuda/cuda_common.cuh"

namespace zt::cuda {

/// The rows of a token array grouped by token value, rows ascending within a group: the backward's work list.
/// Device arrays: rows[n_rows], starts[n_buckets + 1] (offsets into rows), tokens[n_buckets].
struct TokenBuckets {
  const int32_t* rows = nullptr;
  const int32_t* starts = nullptr;
  const int32_t* tokens = nullptr;
  int n_buckets = 0;
};

/// Builds the buckets of tokens[0, n) on the host (a stable counting sort by token) into `packed` laid out as
/// rows | starts | tokens; returns the bucket count. Throws zt::Error for a negative token.
int build_token_buckets(const int32_t* tokens, int n, std::vector<int32_t>& packed);
/// Device views of a packed bucket array (as build_token_buckets lays it out) of n rows and n_buckets groups.
TokenBuckets token_buckets_view(const int32_t* packed_device, int n, int n_buckets);

/// What tokens_from_host uploaded where, kept on the host: the backward groups rows by token there.
class HostTokenCopies {
 public:
  /// Records that host[0, n) was uploaded to dst, and brings older uploads that overlap it up to date.
  void record(const int32_t* dst, const int32_t* host, size_t n);
  /// The host copy of tokens[0, n), which must lie inside one recorded upload (zt::Error otherwise).
  const int32_t* find(const int32_t* tokens, size_t n) const;
  /// Forgets the uploads that start in the device addresses [begin, end) (a buffer released).
  void forget(uintptr_t begin, uintptr_t end);

 private:
  std::map<uintptr_t, std::vector<int32_t>> uploads_;  // device address -> tokens last uploaded there
};

/// out[B,T,C] = wte[tokens[b,t], :] + wpe[t, :]; into out16 instead, rounded, where out is held in bf16 (out null).
void embedding_forward(float* out, __nv_bfloat16* out16, const int32_t* tokens, const float* wte, const float* wpe,
                       int B, int T, int C, cudaStream_t stream);
/// dwte[tok] += dout rows of that token, in row order (bitwise the CPU's order); dwpe[t] += dout over b in order.
/// dout may be held in bf16.
void embedding_backward(float* dwte, float* dwpe, ActIn dout, const TokenBuckets& buckets, int B, int T, int C,
                        cudaStream_t stream);

}  // namespace zt::cuda
