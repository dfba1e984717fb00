// Dense layers on the GPU: cuBLASLt products (fp32, or bf16 operands with fp32 accumulation), bias gradients by a
// deterministic two-stage column sum.
//
// Row-major to cuBLAS's column-major: a row-major [r, c] matrix is the column-major [c, r] one with the same
// leading dimension, so the row-major product C[M,N] = op(A) op(B) is computed as the column-major
// C^T[N,M] = op(B)^T op(A)^T: cuBLASLt's A is our B and its B is our A, each with its own transpose flag.
#include <cuda_bf16.h>

#include <cstdint>
#include <map>
#include <tuple>

#include "cuda/cast.cuh"
#include "cuda/cuda_common.cuh"
#include "cuda/device_memory.cuh"
#include "cuda/matmul.cuh"
#include "cuda/reduce.cuh"

namespace zt::cuda {
namespace {

// cuBLASLt workspace: what NVIDIA suggests for Hopper, so the heuristics may choose split-K and stream-K kernels.
constexpr size_t kWorkspaceBytes = size_t(32) << 20;
constexpr int kBlock = 256;

// out[i, j] = bias[j] (or 0 without a bias): the start of a product accumulated with beta = 1, used where no
// fused bias epilogue is available and for an empty product (K = 0).
__global__ void bias_broadcast_kernel(float* out, const float* bias, int N, int OC) {
  const size_t n = size_t(N) * OC;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    out[i] = bias != nullptr ? bias[i % size_t(OC)] : 0.0f;
}

// Stage 1 of dbias: grid (column block, row chunk), each thread sums its column over the chunk's rows in order.
__global__ void bias_grad_partials_kernel(float* partials, const float* dout, int N, int OC, int rows_per_chunk) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= OC) return;
  const int chunk = blockIdx.y;
  const int r0 = chunk * rows_per_chunk;
  const int r1 = min(N, r0 + rows_per_chunk);
  float acc = 0.0f;
  for (int r = r0; r < r1; ++r) acc += dout[size_t(r) * OC + c];
  partials[size_t(chunk) * OC + c] = acc;
}

// Scratch bytes for a bf16 operand of n elements: none where a kept copy serves it or the product does not read it.
size_t bf16_scratch_bytes(const void* kept, size_t n, bool used) {
  return kept == nullptr && used ? align_bytes(n * sizeof(__nv_bfloat16)) : 0;
}

// The bf16 operand: the kept copy, else src rounded into scratch carved now (null when the product does not read it).
const void* bf16_operand(ScratchCarver& carve, const float* src, const void* kept, size_t n, bool used,
                         cudaStream_t stream) {
  if (kept != nullptr || !used) return kept;
  auto* p = carve.take<__nv_bfloat16>(n);
  cast_to_bf16(p, src, n, stream);
  return p;
}

// The alignment promised to cuBLASLt's heuristics, and part of the plan key: the largest power of two dividing the
// address, capped at 16 bytes, the widest access its kernels make (one 16-byte vector; TMA's requirement on Hopper).
// Uncapped (up to 256, cuBLASLt's default), the same product would get one plan for a kept bf16 copy at a 128-byte
// boundary and another for a per-call scratch copy at a 256-byte one: the heuristics may answer each with another
// kernel, another kernel sums in another order, and the bits would differ where the [copies] tests demand the same.
constexpr uint32_t kMaxPromisedAlignment = 16;
uint32_t alignment_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t align = kMaxPromisedAlignment;
  while (align > 1 && a % align != 0) align /= 2;
  return align;
}

// One cached product shape: its descriptors and the algorithm the heuristics chose.
struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool found = false;
};

// trans_a, trans_b, M, N, K, lda, ldb, ldc, alignments of A, B, C, bias epilogue.
using PlanKey = std::tuple<bool, bool, int, int, int, int, int, int, uint32_t, uint32_t, uint32_t, bool>;

}  // namespace

struct MatmulContext::Impl {
  bool bf16 = false;
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::map<PlanKey, Plan> plans;
  DeviceScratch scratch;  // bf16 operand copies and bias-gradient partials

  ~Impl() {
    for (auto& kv : plans) {
      Plan& p = kv.second;
      if (p.op) cublasLtMatmulDescDestroy(p.op);
      if (p.a) cublasLtMatrixLayoutDestroy(p.a);
      if (p.b) cublasLtMatrixLayoutDestroy(p.b);
      if (p.c) cublasLtMatrixLayoutDestroy(p.c);
    }
    if (workspace) cudaFree(workspace);
    if (handle) cublasLtDestroy(handle);
  }

  // The plan for row-major C[M,N] (+)= op(A) op(B) (+ bias), built and cached on first use.
  Plan& plan(bool trans_a, bool trans_b, int M, int N, int K, const void* A, int lda, const void* B, int ldb,
             const float* C, int ldc, bool with_bias) {
    const PlanKey key{trans_a,         trans_b,         M,        N, K, lda, ldb, ldc, alignment_of(A),
                      alignment_of(B), alignment_of(C), with_bias};
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;
    Plan& p = plans[key];
    const cudaDataType_t operand_type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    const cublasOperation_t op_a = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's A is our B
    const cublasOperation_t op_b = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's B is our A
    ZT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    ZT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    ZT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
    if (with_bias) {
      const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
      const cudaDataType_t bias_type = CUDA_R_32F;
      ZT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
      ZT_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
    }
    // Column-major shapes as stored (before the op): cuBLASLt computes D[m=N, n=M] with k=K.
    ZT_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&p.a, operand_type, op_a == CUBLAS_OP_N ? N : K, op_a == CUBLAS_OP_N ? K : N, ldb));
    ZT_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&p.b, operand_type, op_b == CUBLAS_OP_N ? K : M, op_b == CUBLAS_OP_N ? M : K, lda));
    ZT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32F, N, M, ldc));

    cublasLtMatmulPreference_t pref = nullptr;
    ZT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const size_t workspace_bytes = kWorkspaceBytes;
    const uint32_t align_a = std::get<9>(key), align_b = std::get<8>(key), align_c = std::get<10>(key);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
                                         sizeof(workspace_bytes));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof(align_c));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, sizeof(align_c));
    cublasLtMatmulHeuristicResult_t result{};
    int n_results = 0;
    const cublasStatus_t rc =
        cublasLtMatmulAlgoGetHeuristic(handle, p.op, p.a, p.b, p.c, p.c, pref, 1, &result, &n_results);
    cublasLtMatmulPreferenceDestroy(pref);
    p.found = rc == CUBLAS_STATUS_SUCCESS && n_results > 0;
    if (p.found) p.algo = result.algo;
    return p;
  }

  // Row-major C[M,N] = op(A) op(B) + beta * C (+ bias). Returns false, doing nothing, when cuBLASLt has no
  // algorithm for a bias epilogue here (the caller then adds the bias itself); fails loudly otherwise.
  bool gemm(bool trans_a, bool trans_b, int M, int N, int K, const void* A, int lda, const void* B, int ldb, float* C,
            int ldc, float beta, const float* bias, cudaStream_t stream) {
    Plan& p = plan(trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc, bias != nullptr);
    if (!p.found) {
      ZT_CHECK(bias != nullptr,
               "cuBLASLt has no algorithm for the {}x{}x{} product (trans_a={}, trans_b={}, lda={}, ldb={}, ldc={})", M,
               N, K, trans_a, trans_b, lda, ldb, ldc);
      return false;
    }
    if (bias != nullptr)
      ZT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    const float alpha = 1.0f;
    ZT_CUBLAS_CHECK(cublasLtMatmul(handle, p.op, &alpha, B, p.a, A, p.b, &beta, C, p.c, C, p.c, &p.algo, workspace,
                                   kWorkspaceBytes, stream));
    return true;
  }
};

MatmulContext::MatmulContext(bool bf16) : impl_(std::make_unique<Impl>()) {
  impl_->bf16 = bf16;
  ZT_CUBLAS_CHECK(cublasLtCreate(&impl_->handle));
  ZT_CUDA_CHECK(cudaMalloc(&impl_->workspace, kWorkspaceBytes));
}

MatmulContext::~MatmulContext() = default;

bool MatmulContext::bf16() const { return impl_->bf16; }

void matmul_forward(MatmulContext& ctx, float* out, const float* inp, const void* inp_bf16, const float* weight,
                    const void* weight_bf16, const float* bias, int N, int C, int OC, bool weight_transposed,
                    cudaStream_t stream) {
  if (N == 0 || OC == 0) return;
  MatmulContext::Impl& m = ctx.impl();
  if (C == 0) {  // an empty product: out = bias (or 0)
    ZT_LAUNCH(bias_broadcast_kernel, grid_for(size_t(N) * OC, kBlock), kBlock, 0, stream)(out, bias, N, OC);
    ZT_CUDA_LAUNCH_CHECK();
    return;
  }
  const void* a = inp;
  const void* w = weight;
  if (m.bf16) {
    const size_t n_inp = size_t(N) * C, n_w = size_t(C) * OC;
    ScratchCarver carve(
        m.scratch.get(bf16_scratch_bytes(inp_bf16, n_inp, true) + bf16_scratch_bytes(weight_bf16, n_w, true) + 256));
    a = bf16_operand(carve, inp, inp_bf16, n_inp, true, stream);
    w = bf16_operand(carve, weight, weight_bf16, n_w, true, stream);
  }
  // W [C,OC]: out = inp · W; W [OC,C]: out = inp · W^T.
  const int ldw = weight_transposed ? C : OC;
  if (bias == nullptr) {
    m.gemm(false, weight_transposed, N, OC, C, a, C, w, ldw, out, OC, 0.0f, nullptr, stream);
    return;
  }
  // The bias epilogue reads the bias vectorised: offered only a 16-byte-aligned bias.
  if (alignment_of(bias) >= 16 && m.gemm(false, weight_transposed, N, OC, C, a, C, w, ldw, out, OC, 0.0f, bias, stream))
    return;
  // No fused-bias algorithm here: seed out with the bias and accumulate the product onto it.
  ZT_LAUNCH(bias_broadcast_kernel, grid_for(size_t(N) * OC, kBlock), kBlock, 0, stream)(out, bias, N, OC);
  ZT_CUDA_LAUNCH_CHECK();
  m.gemm(false, weight_transposed, N, OC, C, a, C, w, ldw, out, OC, 1.0f, nullptr, stream);
}

void matmul_backward(MatmulContext& ctx, float* dinp, float* dweight, float* dbias, const float* dout,
                     const void* dout_bf16, const float* inp, const void* inp_bf16, const float* weight,
                     const void* weight_bf16, int N, int C, int OC, bool weight_transposed, cudaStream_t stream) {
  if (N == 0 || OC == 0 || C == 0) return;
  MatmulContext::Impl& m = ctx.impl();
  const RowChunks chunks = row_chunks(N);
  const size_t n_dout = size_t(N) * OC, n_inp = size_t(N) * C, n_w = size_t(C) * OC;
  const bool w_used = dinp != nullptr;     // the weight enters the dinp product only
  const bool x_used = dweight != nullptr;  // and the input the dweight product only
  // Scratch for the operands no kept copy serves (a copy of the LM head's dlogits alone would be N * Vp * 2 bytes).
  const size_t operand_bytes = m.bf16 ? bf16_scratch_bytes(dout_bf16, n_dout, true) +
                                            bf16_scratch_bytes(inp_bf16, n_inp, x_used) +
                                            bf16_scratch_bytes(weight_bf16, n_w, w_used)
                                      : 0;
  const size_t partial_bytes = dbias != nullptr ? align_bytes(size_t(chunks.n_chunks) * OC * sizeof(float)) : 0;
  ScratchCarver carve(m.scratch.get(operand_bytes + partial_bytes + 256));
  const void* d = dout;
  const void* x = inp;
  const void* w = weight;
  if (m.bf16) {
    d = bf16_operand(carve, dout, dout_bf16, n_dout, true, stream);
    x = bf16_operand(carve, inp, inp_bf16, n_inp, x_used, stream);
    w = bf16_operand(carve, weight, weight_bf16, n_w, w_used, stream);
  }
  if (weight_transposed) {
    if (dinp != nullptr)  // dinp[N,C] = dout[N,OC] · W[OC,C]
      m.gemm(false, false, N, C, OC, d, OC, w, C, dinp, C, 0.0f, nullptr, stream);
    if (dweight != nullptr)  // dW[OC,C] += dout^T · inp
      m.gemm(true, false, OC, C, N, d, OC, x, C, dweight, C, 1.0f, nullptr, stream);
  } else {
    if (dinp != nullptr)  // dinp[N,C] = dout[N,OC] · W[C,OC]^T
      m.gemm(false, true, N, C, OC, d, OC, w, OC, dinp, C, 0.0f, nullptr, stream);
    if (dweight != nullptr)  // dW[C,OC] += inp^T · dout
      m.gemm(true, false, C, OC, N, x, C, d, OC, dweight, OC, 1.0f, nullptr, stream);
  }
  if (dbias != nullptr) {
    float* partials = carve.take<float>(size_t(chunks.n_chunks) * OC);
    const dim3 grid(unsigned(ceil_div(size_t(OC), kBlock)), unsigned(chunks.n_chunks));
    ZT_LAUNCH(bias_grad_partials_kernel, grid, kBlock, 0, stream)(partials, dout, N, OC, chunks.rows_per_chunk);
    ZT_CUDA_LAUNCH_CHECK();
    sum_column_partials(dbias, partials, chunks.n_chunks, OC, OC, stream);
  }
}

}  // namespace zt::cuda
