// Dense layers on the GPU: cuBLASLt products (fp32, or bf16 operands with fp32 accumulation), bias gradients by a
// deterministic two-stage column sum; with the epilogue variant, GELU, its derivative and the bias gradients folded
// into the products (cuBLASLt epilogues), each falling back to the separate kernels where cuBLASLt has none.
//
// Row-major to cuBLAS's column-major: a row-major [r, c] matrix is the column-major [c, r] one with the same
// leading dimension, so the row-major product C[M,N] = op(A) op(B) is computed as the column-major
// C^T[N,M] = op(B)^T op(A)^T: cuBLASLt's A is our B and its B is our A, each with its own transpose flag.
#include <cuda_bf16.h>

#include <cstdint>
#include <cstdio>
#include <map>
#include <tuple>

#include "cuda/cast.cuh"
#include "cuda/cuda_common.cuh"
#include "cuda/device_memory.cuh"
#include "cuda/gelu.cuh"
#include "cuda/matmul.cuh"
#include "cuda/reduce.cuh"
#include "cuda/residual.cuh"

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

// Stage 1 of dbias: grid (column block, row chunk), each thread sums its column over the chunk's rows in order. dout
// is fp32, or bf16 where it is held in bf16 only (--cuda_activations bf16).
template <typename T>
__global__ void bias_grad_partials_kernel(float* partials, const T* dout, int N, int OC, int rows_per_chunk) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= OC) return;
  const int chunk = blockIdx.y;
  const int r0 = chunk * rows_per_chunk;
  const int r1 = min(N, r0 + rows_per_chunk);
  float acc = 0.0f;
  for (int r = r0; r < r1; ++r) acc += float(dout[size_t(r) * OC + c]);
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

// cuBLASLt reads the bias and aux pointers' values (not what they point at) when it chooses a kernel, as a promise
// of their alignment: a plan is keyed on the alignment it was chosen for, up to cuBLASLt's default of 256 bytes.
uint32_t pointer_alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && a % align != 0) align /= 2;
  return align;
}

// What a product does after the multiply-add: the cuBLASLt epilogues this file uses.
enum class Epilogue { none, bias, gelu_aux_bias, dgelu, bgrad_a, bgrad_b };
const char* const kEpilogueNames[] = {"DEFAULT", "BIAS", "GELU_AUX_BIAS", "DGELU", "BGRADA", "BGRADB"};

cublasLtEpilogue_t cublaslt_epilogue(Epilogue e) {
  switch (e) {
    case Epilogue::bias:
      return CUBLASLT_EPILOGUE_BIAS;
    case Epilogue::gelu_aux_bias:
      return CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    case Epilogue::dgelu:
      return CUBLASLT_EPILOGUE_DGELU;
    case Epilogue::bgrad_a:
      return CUBLASLT_EPILOGUE_BGRADA;
    case Epilogue::bgrad_b:
      return CUBLASLT_EPILOGUE_BGRADB;
    default:
      return CUBLASLT_EPILOGUE_DEFAULT;
  }
}

// The pointers an epilogue reads or writes: the bias (or bias gradient) vector and GELU's auxiliary matrix (the
// pre-activation, laid out as D).
struct EpilogueArgs {
  Epilogue kind = Epilogue::none;
  const float* bias = nullptr;
  const float* aux = nullptr;
};

// One cached product shape: its descriptors and the algorithm the heuristics chose.
struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool found = false;
};

// trans_a, trans_b, M, N, K, lda, ldb, ldc, alignments of A, B, C, the epilogue, alignments of its bias and aux.
using PlanKey =
    std::tuple<bool, bool, int, int, int, int, int, int, uint32_t, uint32_t, uint32_t, int, uint32_t, uint32_t>;

}  // namespace

struct MatmulContext::Impl {
  bool bf16 = false;
  bool epilogues = false;
  bool warned[6] = {};  // an epilogue cuBLASLt refused, said once
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

  // The plan for row-major C[M,N] (+)= op(A) op(B), then the epilogue, built and cached on first use.
  Plan& plan(bool trans_a, bool trans_b, int M, int N, int K, const void* A, int lda, const void* B, int ldb,
             const float* C, int ldc, const EpilogueArgs& e) {
    const PlanKey key{trans_a,
                      trans_b,
                      M,
                      N,
                      K,
                      lda,
                      ldb,
                      ldc,
                      alignment_of(A),
                      alignment_of(B),
                      alignment_of(C),
                      int(e.kind),
                      e.bias != nullptr ? pointer_alignment(e.bias) : 0,
                      e.aux != nullptr ? pointer_alignment(e.aux) : 0};
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;
    Plan& p = plans[key];
    const cudaDataType_t operand_type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    const cublasOperation_t op_a = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's A is our B
    const cublasOperation_t op_b = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's B is our A
    ZT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    ZT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    ZT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
    set_epilogue(p.op, e, ldc);
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

  // The epilogue's attributes; its pointers are set here too, before the heuristic reads them (their alignment).
  static void set_epilogue(cublasLtMatmulDesc_t op, const EpilogueArgs& e, int ldc) {
    if (e.kind == Epilogue::none) return;
    const cublasLtEpilogue_t epilogue = cublaslt_epilogue(e.kind);
    ZT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
    if (e.bias != nullptr) {
      const cudaDataType_t bias_type = CUDA_R_32F;
      ZT_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
    }
    if (e.aux != nullptr) {
      const int64_t aux_ld = ldc;  // the pre-activation is laid out as D
      ZT_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld, sizeof(aux_ld)));
    }
    set_epilogue_pointers(op, e);
  }
  static void set_epilogue_pointers(cublasLtMatmulDesc_t op, const EpilogueArgs& e) {
    if (e.bias != nullptr)
      ZT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &e.bias, sizeof(e.bias)));
    if (e.aux != nullptr)
      ZT_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &e.aux, sizeof(e.aux)));
  }

  // Row-major C[M,N] = op(A) op(B) + beta * C, then the epilogue. Returns false, doing nothing, when cuBLASLt has no
  // algorithm for the epilogue here (the caller then runs the separate kernels; the first refusal of each epilogue
  // is said on stderr, so a GPU run shows it); a product without an epilogue that has none fails loudly.
  bool gemm(bool trans_a, bool trans_b, int M, int N, int K, const void* A, int lda, const void* B, int ldb, float* C,
            int ldc, float beta, const EpilogueArgs& e, cudaStream_t stream) {
    Plan& p = plan(trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc, e);
    if (!p.found) {
      ZT_CHECK(e.kind != Epilogue::none,
               "cuBLASLt has no algorithm for the {}x{}x{} product (trans_a={}, trans_b={}, lda={}, ldb={}, ldc={})", M,
               N, K, trans_a, trans_b, lda, ldb, ldc);
      if (e.kind != Epilogue::bias && !warned[int(e.kind)]) {
        warned[int(e.kind)] = true;
        std::fprintf(stderr,
                     "zerotrain: cuBLASLt has no algorithm for the %s epilogue on the %dx%dx%d product; running the "
                     "separate kernels instead\n",
                     kEpilogueNames[int(e.kind)], M, N, K);
      }
      return false;
    }
    set_epilogue_pointers(p.op, e);
    const float alpha = 1.0f;
    ZT_CUBLAS_CHECK(cublasLtMatmul(handle, p.op, &alpha, B, p.a, A, p.b, &beta, C, p.c, C, p.c, &p.algo, workspace,
                                   kWorkspaceBytes, stream));
    return true;
  }
};

MatmulContext::MatmulContext(bool bf16, bool epilogues) : impl_(std::make_unique<Impl>()) {
  impl_->bf16 = bf16;
  impl_->epilogues = epilogues;
  ZT_CUBLAS_CHECK(cublasLtCreate(&impl_->handle));
  ZT_CUDA_CHECK(cudaMalloc(&impl_->workspace, kWorkspaceBytes));
}

MatmulContext::~MatmulContext() = default;

bool MatmulContext::bf16() const { return impl_->bf16; }
bool MatmulContext::epilogues() const { return impl_->epilogues; }

namespace {

// The operands of a forward product: inp and W, or their bf16 copies (kept, or rounded now into scratch).
struct ForwardOperands {
  const void* a;
  const void* w;
};
ForwardOperands forward_operands(MatmulContext::Impl& m, const float* inp, const void* inp_bf16, const float* weight,
                                 const void* weight_bf16, int N, int C, int OC, cudaStream_t stream) {
  if (!m.bf16) return {inp, weight};
  const size_t n_inp = size_t(N) * C, n_w = size_t(C) * OC;
  ScratchCarver carve(
      m.scratch.get(bf16_scratch_bytes(inp_bf16, n_inp, true) + bf16_scratch_bytes(weight_bf16, n_w, true) + 256));
  const void* a = bf16_operand(carve, inp, inp_bf16, n_inp, true, stream);
  return {a, bf16_operand(carve, weight, weight_bf16, n_w, true, stream)};
}

// Whether an epilogue may be offered these vectors: cuBLASLt's epilogues read them 16 bytes at a time.
bool epilogue_aligned(const void* p) { return p == nullptr || alignment_of(p) >= 16; }

}  // namespace

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
  const ForwardOperands op = forward_operands(m, inp, inp_bf16, weight, weight_bf16, N, C, OC, stream);
  // W [C,OC]: out = inp · W; W [OC,C]: out = inp · W^T.
  const int ldw = weight_transposed ? C : OC;
  if (bias == nullptr) {
    m.gemm(false, weight_transposed, N, OC, C, op.a, C, op.w, ldw, out, OC, 0.0f, {}, stream);
    return;
  }
  if (epilogue_aligned(bias) && m.gemm(false, weight_transposed, N, OC, C, op.a, C, op.w, ldw, out, OC, 0.0f,
                                       {Epilogue::bias, bias, nullptr}, stream))
    return;
  // No fused-bias algorithm here: seed out with the bias and accumulate the product onto it.
  ZT_LAUNCH(bias_broadcast_kernel, grid_for(size_t(N) * OC, kBlock), kBlock, 0, stream)(out, bias, N, OC);
  ZT_CUDA_LAUNCH_CHECK();
  m.gemm(false, weight_transposed, N, OC, C, op.a, C, op.w, ldw, out, OC, 1.0f, {}, stream);
}

void matmul_gelu_forward(MatmulContext& ctx, float* pre, float* out, bool out_fp32, __nv_bfloat16* out16,
                         const float* inp, const void* inp_bf16, const float* weight, const void* weight_bf16,
                         const float* bias, int N, int C, int OC, cudaStream_t stream) {
  const size_t n = size_t(N) * OC;
  MatmulContext::Impl& m = ctx.impl();
  // GELU_AUX_BIAS: out = GELU(x) and pre = x = inp · W + bias, in one product (GELU_AUX without a bias is
  // another epilogue, not used: the MLP's expansion always has one).
  if (m.epilogues && n > 0 && C > 0 && bias != nullptr && epilogue_aligned(bias) && epilogue_aligned(pre)) {
    const ForwardOperands op = forward_operands(m, inp, inp_bf16, weight, weight_bf16, N, C, OC, stream);
    if (m.gemm(false, false, N, OC, C, op.a, C, op.w, OC, out, OC, 0.0f, {Epilogue::gelu_aux_bias, bias, pre},
               stream)) {
      if (out16 != nullptr) cast_to_bf16(out16, out, n, stream);
      return;
    }
  }
  matmul_forward(ctx, pre, inp, inp_bf16, weight, weight_bf16, bias, N, C, OC, false, stream);
  gelu_forward(out_fp32 ? out : nullptr, out16, pre, n, stream);
}

namespace {

// The products of a dense layer's backward. dinp = dout · W^T, with GELU's derivative at dgelu_aux folded in when
// that is given and cuBLASLt has the epilogue (returns whether it was folded; if not, dinp holds the plain product).
// dweight += the weight-gradient product, with dbias += its bias gradient folded in where the variant is on and
// cuBLASLt has the epilogue, else by the two-stage column sum.
bool backward_products(MatmulContext::Impl& m, float* dinp, const float* dgelu_aux, float* dweight, float* dbias,
                       const float* dout, const void* dout_bf16, const float* inp, const void* inp_bf16,
                       const float* weight, const void* weight_bf16, int N, int C, int OC, bool weight_transposed,
                       cudaStream_t stream) {
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
  // dinp[N,C] = dout[N,OC] · W^T (W [C,OC]) or dout · W (W [OC,C]).
  bool dgelu_folded = false;
  if (dinp != nullptr) {
    if (dgelu_aux != nullptr && epilogue_aligned(dgelu_aux))
      dgelu_folded = m.gemm(false, !weight_transposed, N, C, OC, d, OC, w, weight_transposed ? C : OC, dinp, C, 0.0f,
                            {Epilogue::dgelu, nullptr, dgelu_aux}, stream);
    if (!dgelu_folded)
      m.gemm(false, !weight_transposed, N, C, OC, d, OC, w, weight_transposed ? C : OC, dinp, C, 0.0f, {}, stream);
  }
  // The bias gradient, dout's column sums: with the weight-gradient product, whose cuBLASLt A (BGRADA, W [C,OC]) or
  // B (BGRADB, W [OC,C]) is dout, into the partials' scratch, then added (the epilogue writes; dbias accumulates).
  float* partials = dbias != nullptr ? carve.take<float>(size_t(chunks.n_chunks) * OC) : nullptr;
  bool bgrad_folded = false;
  if (dweight != nullptr) {
    const EpilogueArgs bgrad{weight_transposed ? Epilogue::bgrad_b : Epilogue::bgrad_a, partials, nullptr};
    const bool try_bgrad = m.epilogues && dbias != nullptr;
    if (weight_transposed) {  // dW[OC,C] += dout^T · inp
      bgrad_folded = try_bgrad && m.gemm(true, false, OC, C, N, d, OC, x, C, dweight, C, 1.0f, bgrad, stream);
      if (!bgrad_folded) m.gemm(true, false, OC, C, N, d, OC, x, C, dweight, C, 1.0f, {}, stream);
    } else {  // dW[C,OC] += inp^T · dout
      bgrad_folded = try_bgrad && m.gemm(true, false, C, OC, N, x, C, d, OC, dweight, OC, 1.0f, bgrad, stream);
      if (!bgrad_folded) m.gemm(true, false, C, OC, N, x, C, d, OC, dweight, OC, 1.0f, {}, stream);
    }
  }
  if (bgrad_folded) {
    residual_forward(dbias, dbias, partials, size_t(OC), stream);
  } else if (dbias != nullptr) {
    const dim3 grid(unsigned(ceil_div(size_t(OC), kBlock)), unsigned(chunks.n_chunks));
    if (dout != nullptr) {
      ZT_LAUNCH(bias_grad_partials_kernel<float>, grid, kBlock, 0, stream)
      (partials, dout, N, OC, chunks.rows_per_chunk);
    } else {
      ZT_LAUNCH(bias_grad_partials_kernel<__nv_bfloat16>, grid, kBlock, 0, stream)
      (partials, static_cast<const __nv_bfloat16*>(dout_bf16), N, OC, chunks.rows_per_chunk);
    }
    ZT_CUDA_LAUNCH_CHECK();
    sum_column_partials(dbias, partials, chunks.n_chunks, OC, OC, stream);
  }
  return dgelu_folded;
}

}  // namespace

void matmul_backward(MatmulContext& ctx, float* dinp, float* dweight, float* dbias, const float* dout,
                     const void* dout_bf16, const float* inp, const void* inp_bf16, const float* weight,
                     const void* weight_bf16, int N, int C, int OC, bool weight_transposed, cudaStream_t stream) {
  if (N == 0 || OC == 0 || C == 0) return;
  backward_products(ctx.impl(), dinp, nullptr, dweight, dbias, dout, dout_bf16, inp, inp_bf16, weight, weight_bf16, N,
                    C, OC, weight_transposed, stream);
}

void matmul_gelu_backward(MatmulContext& ctx, float* dpre, __nv_bfloat16* dpre16, float* dact, float* dweight,
                          float* dbias, const float* dout, const void* dout_bf16, const float* inp,
                          const void* inp_bf16, const float* weight, const void* weight_bf16, const float* pre, int N,
                          int C, int OC, cudaStream_t stream) {
  const size_t n = size_t(N) * C;
  if (n == 0) return;
  MatmulContext::Impl& m = ctx.impl();
  if (OC == 0) {  // an empty product: dact = 0, so dpre = 0
    ZT_CUDA_CHECK(cudaMemsetAsync(dact, 0, n * sizeof(float), stream));
  } else if (m.epilogues) {
    // DGELU: dpre = (dout · W^T) * GELU'(pre) in one product, into dact when dpre has no fp32 values (held in bf16);
    // where cuBLASLt refuses it, the product went there and is moved to dact for the separate kernel (an unlikely
    // path: the copy is not worth avoiding).
    float* d_target = dpre != nullptr ? dpre : dact;
    if (backward_products(m, d_target, pre, dweight, dbias, dout, dout_bf16, inp, inp_bf16, weight, weight_bf16, N, C,
                          OC, false, stream)) {
      if (dpre16 != nullptr) cast_to_bf16(dpre16, d_target, n, stream);
      return;
    }
    if (d_target != dact)
      ZT_CUDA_CHECK(cudaMemcpyAsync(dact, d_target, n * sizeof(float), cudaMemcpyDeviceToDevice, stream));
  } else {
    backward_products(m, dact, nullptr, dweight, dbias, dout, dout_bf16, inp, inp_bf16, weight, weight_bf16, N, C, OC,
                      false, stream);
  }
  gelu_backward(dpre, dpre16, pre, dact, n, stream);
}

}  // namespace zt::cuda
