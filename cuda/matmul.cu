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
// pre-activation, laid out as D). Both are of D's type: fp32, or bf16 where D is (a product into a range held in
// bf16; cuBLASLt's default bias type is D's, and its auxiliary matrix is set to D's).
struct EpilogueArgs {
  Epilogue kind = Epilogue::none;
  const void* bias = nullptr;
  const void* aux = nullptr;
};

// Where a product's result goes: fp32 memory, or bf16 memory (a range held in bf16 only, --cuda_activations bf16);
// exactly one is set, or neither (the product is not wanted).
struct Target {
  float* f32 = nullptr;
  __nv_bfloat16* b16 = nullptr;
  bool wanted() const { return f32 != nullptr || b16 != nullptr; }
  void* d() const { return b16 != nullptr ? static_cast<void*>(b16) : static_cast<void*>(f32); }
};

// One cached product shape: its descriptors and the algorithm the heuristics chose.
struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool found = false;
};

// trans_a, trans_b, M, N, K, lda, ldb, ldc, alignments of A, B, C, the epilogue, alignments of its bias and aux,
// whether C and D are bf16.
using PlanKey =
    std::tuple<bool, bool, int, int, int, int, int, int, uint32_t, uint32_t, uint32_t, int, uint32_t, uint32_t, bool>;

}  // namespace

struct MatmulContext::Impl {
  bool bf16 = false;
  bool epilogues = false;
  bool warned[6] = {};           // an epilogue cuBLASLt refused, said once
  bool warned_bf16_out = false;  // likewise a bf16 output
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::map<PlanKey, Plan> plans;
  DeviceScratch scratch;  // bf16 operand copies and bias-gradient partials
  DeviceScratch wide;     // an fp32 product bound for bf16 memory where cuBLASLt has no bf16-output algorithm

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
             const void* C, bool c_bf16, int ldc, const EpilogueArgs& e) {
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
                      e.aux != nullptr ? pointer_alignment(e.aux) : 0,
                      c_bf16};
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;
    Plan& p = plans[key];
    const cudaDataType_t operand_type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    const cublasOperation_t op_a = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's A is our B
    const cublasOperation_t op_b = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's B is our A
    ZT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    ZT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    ZT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
    const cudaDataType_t d_type = c_bf16 ? CUDA_R_16BF : CUDA_R_32F;
    set_epilogue(p.op, e, ldc, d_type);
    // Column-major shapes as stored (before the op): cuBLASLt computes D[m=N, n=M] with k=K.
    ZT_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&p.a, operand_type, op_a == CUBLAS_OP_N ? N : K, op_a == CUBLAS_OP_N ? K : N, ldb));
    ZT_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&p.b, operand_type, op_b == CUBLAS_OP_N ? K : M, op_b == CUBLAS_OP_N ? M : K, lda));
    ZT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, d_type, N, M, ldc));

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
  static void set_epilogue(cublasLtMatmulDesc_t op, const EpilogueArgs& e, int ldc, cudaDataType_t d_type) {
    if (e.kind == Epilogue::none) return;
    const cublasLtEpilogue_t epilogue = cublaslt_epilogue(e.kind);
    ZT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
    if (e.bias != nullptr) {
      const cudaDataType_t bias_type = d_type;
      ZT_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
    }
    if (e.aux != nullptr) {
      const int64_t aux_ld = ldc;  // the pre-activation is laid out as D
      ZT_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld, sizeof(aux_ld)));
      const cudaDataType_t aux_type = d_type;
      ZT_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, &aux_type, sizeof(aux_type)));
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

  // Row-major C[M,N] = op(A) op(B) + beta * C, then the epilogue; C fp32 (c_bf16 false) or bf16. Returns false,
  // doing nothing, when cuBLASLt has no algorithm for the epilogue, or for a bf16 C, here (the caller then runs the
  // separate kernels or the fp32 product; the first refusal of each epilogue is said on stderr, so a GPU run shows
  // it); an fp32 product without an epilogue that has none fails loudly.
  bool gemm(bool trans_a, bool trans_b, int M, int N, int K, const void* A, int lda, const void* B, int ldb, void* C,
            bool c_bf16, int ldc, float beta, const EpilogueArgs& e, cudaStream_t stream) {
    Plan& p = plan(trans_a, trans_b, M, N, K, A, lda, B, ldb, C, c_bf16, ldc, e);
    if (!p.found) {
      if (c_bf16 && e.kind == Epilogue::none) {
        if (!warned_bf16_out) {
          warned_bf16_out = true;
          std::fprintf(
              stderr,
              "zerotrain: cuBLASLt has no bf16-output algorithm for the %dx%dx%d product; computing it in fp32 "
              "and rounding\n",
              M, N, K);
        }
        return false;
      }
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

// The operands of a forward product: inp and W, or their bf16 copies (kept, or rounded now into scratch), and, for a
// product into bf16 memory, the bias in bf16 (its kept copy where that is aligned for the epilogue, else rounded
// into scratch; null without a bias).
struct ForwardOperands {
  const void* a;
  const void* w;
  const void* bias16;
};
ForwardOperands forward_operands(MatmulContext::Impl& m, const float* inp, const void* inp_bf16, const float* weight,
                                 const void* weight_bf16, const float* bias, const void* bias_bf16, int N, int C,
                                 int OC, cudaStream_t stream) {
  if (!m.bf16) return {inp, weight, nullptr};
  const size_t n_inp = size_t(N) * C, n_w = size_t(C) * OC;
  if (bias_bf16 != nullptr && alignment_of(bias_bf16) < 16) bias_bf16 = nullptr;  // the epilogue reads 16 bytes
  ScratchCarver carve(m.scratch.get(bf16_scratch_bytes(inp_bf16, n_inp, true) +
                                    bf16_scratch_bytes(weight_bf16, n_w, true) +
                                    bf16_scratch_bytes(bias_bf16, size_t(OC), bias != nullptr) + 256));
  const void* a = bf16_operand(carve, inp, inp_bf16, n_inp, true, stream);
  const void* w = bf16_operand(carve, weight, weight_bf16, n_w, true, stream);
  return {a, w, bf16_operand(carve, bias, bias_bf16, size_t(OC), bias != nullptr, stream)};
}

// Whether an epilogue may be offered these vectors: cuBLASLt's epilogues read them 16 bytes at a time.
bool epilogue_aligned(const void* p) { return p == nullptr || alignment_of(p) >= 16; }

// n fp32 values of scratch for a product bound for bf16 memory that is computed in fp32 first.
float* wide_scratch(MatmulContext::Impl& m, size_t n) { return static_cast<float*>(m.wide.get(n * sizeof(float))); }

}  // namespace

void matmul_forward(MatmulContext& ctx, float* out, __nv_bfloat16* out16, const float* inp, const void* inp_bf16,
                    const float* weight, const void* weight_bf16, const float* bias, const void* bias_bf16, int N,
                    int C, int OC, bool weight_transposed, cudaStream_t stream) {
  if (N == 0 || OC == 0) return;
  MatmulContext::Impl& m = ctx.impl();
  const size_t n = size_t(N) * OC;
  const int ldw = weight_transposed ? C : OC;
  if (out16 != nullptr) {
    // Into bf16 memory: one product whose output cuBLASLt rounds (with the bias in bf16, D's type, in the
    // epilogue), else the fp32 product below into scratch, rounded after.
    if (m.bf16 && C > 0) {
      const ForwardOperands op =
          forward_operands(m, inp, inp_bf16, weight, weight_bf16, bias, bias_bf16, N, C, OC, stream);
      const EpilogueArgs e = bias != nullptr ? EpilogueArgs{Epilogue::bias, op.bias16, nullptr} : EpilogueArgs{};
      if (m.gemm(false, weight_transposed, N, OC, C, op.a, C, op.w, ldw, out16, true, OC, 0.0f, e, stream)) return;
    }
    float* wide = wide_scratch(m, n);
    matmul_forward(ctx, wide, nullptr, inp, inp_bf16, weight, weight_bf16, bias, nullptr, N, C, OC, weight_transposed,
                   stream);
    cast_to_bf16(out16, wide, n, stream);
    return;
  }
  if (C == 0) {  // an empty product: out = bias (or 0)
    ZT_LAUNCH(bias_broadcast_kernel, grid_for(n, kBlock), kBlock, 0, stream)(out, bias, N, OC);
    ZT_CUDA_LAUNCH_CHECK();
    return;
  }
  const ForwardOperands op =
      forward_operands(m, inp, inp_bf16, weight, weight_bf16, nullptr, nullptr, N, C, OC, stream);
  // W [C,OC]: out = inp · W; W [OC,C]: out = inp · W^T.
  if (bias == nullptr) {
    m.gemm(false, weight_transposed, N, OC, C, op.a, C, op.w, ldw, out, false, OC, 0.0f, {}, stream);
    return;
  }
  if (epilogue_aligned(bias) && m.gemm(false, weight_transposed, N, OC, C, op.a, C, op.w, ldw, out, false, OC, 0.0f,
                                       {Epilogue::bias, bias, nullptr}, stream))
    return;
  // No fused-bias algorithm here: seed out with the bias and accumulate the product onto it.
  ZT_LAUNCH(bias_broadcast_kernel, grid_for(n, kBlock), kBlock, 0, stream)(out, bias, N, OC);
  ZT_CUDA_LAUNCH_CHECK();
  m.gemm(false, weight_transposed, N, OC, C, op.a, C, op.w, ldw, out, false, OC, 1.0f, {}, stream);
}

void matmul_gelu_forward(MatmulContext& ctx, float* pre, __nv_bfloat16* pre16, float* out, bool out_fp32,
                         __nv_bfloat16* out16, const float* inp, const void* inp_bf16, const float* weight,
                         const void* weight_bf16, const float* bias, const void* bias_bf16, int N, int C, int OC,
                         cudaStream_t stream) {
  const size_t n = size_t(N) * OC;
  MatmulContext::Impl& m = ctx.impl();
  // GELU_AUX_BIAS: out = GELU(x) and pre = x = inp · W + bias, in one product (GELU_AUX without a bias is
  // another epilogue, not used: the MLP's expansion always has one). Both held in bf16: the product writes both in
  // bf16 (its output and auxiliary matrix are of one type). pre fp32: out in fp32, then rounded into out16.
  if (m.epilogues && n > 0 && C > 0 && bias != nullptr && epilogue_aligned(bias)) {
    if (pre16 != nullptr && out16 != nullptr && !out_fp32 && m.bf16) {
      const ForwardOperands op =
          forward_operands(m, inp, inp_bf16, weight, weight_bf16, bias, bias_bf16, N, C, OC, stream);
      if (epilogue_aligned(pre16) && m.gemm(false, false, N, OC, C, op.a, C, op.w, OC, out16, true, OC, 0.0f,
                                            {Epilogue::gelu_aux_bias, op.bias16, pre16}, stream))
        return;
    } else if (pre16 == nullptr && epilogue_aligned(pre)) {
      const ForwardOperands op =
          forward_operands(m, inp, inp_bf16, weight, weight_bf16, nullptr, nullptr, N, C, OC, stream);
      if (m.gemm(false, false, N, OC, C, op.a, C, op.w, OC, out, false, OC, 0.0f, {Epilogue::gelu_aux_bias, bias, pre},
                 stream)) {
        if (out16 != nullptr) cast_to_bf16(out16, out, n, stream);
        return;
      }
    }
  }
  matmul_forward(ctx, pre16 != nullptr ? nullptr : pre, pre16, inp, inp_bf16, weight, weight_bf16, bias, bias_bf16, N,
                 C, OC, false, stream);
  gelu_forward(out_fp32 ? out : nullptr, out16, pre16 != nullptr ? ActIn(pre16) : ActIn(pre), n, stream);
}

namespace {

// GELU's derivative folded into a dinp product (the DGELU epilogue): the pre-activation it reads (of D's type, so
// fp32 with an fp32 target, bf16 with a bf16 one) and where dpre = product * GELU'(pre) goes.
struct DgeluFold {
  const void* aux;
  Target target;
};

// The products of a dense layer's backward. dinp = dout · W^T into `dinp` (may be unwanted); where `fold` is given
// and cuBLASLt has the epilogue, GELU's derivative folded in and written to fold->target instead (returns whether it
// was folded; if not, dinp holds the plain product). dweight += the weight-gradient product, with dbias += its bias
// gradient folded in where the variant is on and cuBLASLt has the epilogue, else by the two-stage column sum.
bool backward_products(MatmulContext::Impl& m, Target dinp, const DgeluFold* fold, float* dweight, float* dbias,
                       const float* dout, const void* dout_bf16, const float* inp, const void* inp_bf16,
                       const float* weight, const void* weight_bf16, int N, int C, int OC, bool weight_transposed,
                       cudaStream_t stream) {
  const RowChunks chunks = row_chunks(N);
  const size_t n_dout = size_t(N) * OC, n_inp = size_t(N) * C, n_w = size_t(C) * OC;
  const bool w_used = dinp.wanted() || fold != nullptr;  // the weight enters the dinp product only
  const bool x_used = dweight != nullptr;                // and the input the dweight product only
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
  const int ldw = weight_transposed ? C : OC;
  auto dinp_product = [&](const Target& t, const EpilogueArgs& e) {
    return m.gemm(false, !weight_transposed, N, C, OC, d, OC, w, ldw, t.d(), t.b16 != nullptr, C, 0.0f, e, stream);
  };
  bool dgelu_folded = false;
  if (fold != nullptr && epilogue_aligned(fold->aux))
    dgelu_folded = dinp_product(fold->target, {Epilogue::dgelu, nullptr, fold->aux});
  if (!dgelu_folded && dinp.wanted() && !dinp_product(dinp, {})) {
    // bf16 memory cuBLASLt has no algorithm for: the product in fp32 into scratch, then rounded.
    float* wide = wide_scratch(m, n_inp);
    dinp_product({wide, nullptr}, {});
    cast_to_bf16(dinp.b16, wide, n_inp, stream);
  }
  // The bias gradient, dout's column sums: with the weight-gradient product, whose cuBLASLt A (BGRADA, W [C,OC]) or
  // B (BGRADB, W [OC,C]) is dout, into the partials' scratch, then added (the epilogue writes; dbias accumulates).
  float* partials = dbias != nullptr ? carve.take<float>(size_t(chunks.n_chunks) * OC) : nullptr;
  bool bgrad_folded = false;
  if (dweight != nullptr) {
    const EpilogueArgs bgrad{weight_transposed ? Epilogue::bgrad_b : Epilogue::bgrad_a, partials, nullptr};
    const bool try_bgrad = m.epilogues && dbias != nullptr;
    if (weight_transposed) {  // dW[OC,C] += dout^T · inp
      bgrad_folded = try_bgrad && m.gemm(true, false, OC, C, N, d, OC, x, C, dweight, false, C, 1.0f, bgrad, stream);
      if (!bgrad_folded) m.gemm(true, false, OC, C, N, d, OC, x, C, dweight, false, C, 1.0f, {}, stream);
    } else {  // dW[C,OC] += inp^T · dout
      bgrad_folded = try_bgrad && m.gemm(true, false, C, OC, N, x, C, d, OC, dweight, false, OC, 1.0f, bgrad, stream);
      if (!bgrad_folded) m.gemm(true, false, C, OC, N, x, C, d, OC, dweight, false, OC, 1.0f, {}, stream);
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

void matmul_backward(MatmulContext& ctx, float* dinp, __nv_bfloat16* dinp16, float* dweight, float* dbias,
                     const float* dout, const void* dout_bf16, const float* inp, const void* inp_bf16,
                     const float* weight, const void* weight_bf16, int N, int C, int OC, bool weight_transposed,
                     cudaStream_t stream) {
  if (N == 0 || OC == 0 || C == 0) return;
  const Target target = dinp16 != nullptr ? Target{nullptr, dinp16} : Target{dinp, nullptr};
  backward_products(ctx.impl(), target, nullptr, dweight, dbias, dout, dout_bf16, inp, inp_bf16, weight, weight_bf16, N,
                    C, OC, weight_transposed, stream);
}

void matmul_gelu_backward(MatmulContext& ctx, float* dpre, __nv_bfloat16* dpre16, float* dact, __nv_bfloat16* dact16,
                          float* dweight, float* dbias, const float* dout, const void* dout_bf16, const float* inp,
                          const void* inp_bf16, const float* weight, const void* weight_bf16, const float* pre,
                          const __nv_bfloat16* pre16, int N, int C, int OC, cudaStream_t stream) {
  const size_t n = size_t(N) * C;
  if (n == 0) return;
  MatmulContext::Impl& m = ctx.impl();
  const Target act = dact16 != nullptr ? Target{nullptr, dact16} : Target{dact, nullptr};
  const ActIn pre_in = pre16 != nullptr ? ActIn(pre16) : ActIn(pre);
  const ActIn act_in = dact16 != nullptr ? ActIn(dact16) : ActIn(dact);
  if (OC == 0) {  // an empty product: dact = 0, so dpre = 0
    ZT_CUDA_CHECK(cudaMemsetAsync(act.d(), 0, n * (dact16 != nullptr ? sizeof(*dact16) : sizeof(float)), stream));
    gelu_backward(dpre, dpre16, pre_in, act_in, n, stream);
    return;
  }
  if (m.epilogues) {
    // DGELU: dpre = (dout · W^T) * GELU'(pre) in one product, its auxiliary matrix (pre) of D's type: dpre and pre
    // both held in bf16 (one bf16 product), or pre in fp32 into dpre's fp32 values, or, dpre held in bf16 only, into
    // dact's fp32 values (then rounded into dpre). Where cuBLASLt refuses it, the plain product goes to dact and the
    // separate kernel follows.
    DgeluFold fold{nullptr, {}};
    __nv_bfloat16* round_into = nullptr;  // the folded fp32 result's bf16 copy or held values
    if (pre16 != nullptr && dpre == nullptr && dpre16 != nullptr) {
      fold = {pre16, {nullptr, dpre16}};
    } else if (pre16 == nullptr && dpre != nullptr) {
      fold = {pre, {dpre, nullptr}};
      round_into = dpre16;
    } else if (pre16 == nullptr && dact16 == nullptr) {
      fold = {pre, {dact, nullptr}};
      round_into = dpre16;
    }
    if (fold.aux != nullptr) {
      if (backward_products(m, act, &fold, dweight, dbias, dout, dout_bf16, inp, inp_bf16, weight, weight_bf16, N, C,
                            OC, false, stream)) {
        if (round_into != nullptr) cast_to_bf16(round_into, fold.target.f32, n, stream);
        return;
      }
      gelu_backward(dpre, dpre16, pre_in, act_in, n, stream);
      return;
    }
  }
  backward_products(m, act, nullptr, dweight, dbias, dout, dout_bf16, inp, inp_bf16, weight, weight_bf16, N, C, OC,
                    false, stream);
  gelu_backward(dpre, dpre16, pre_in, act_in, n, stream);
}

}  // namespace zt::cuda
