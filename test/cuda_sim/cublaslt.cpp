// The CUDA simulator's cuBLASLt: the calls matmul.cu makes, with cuBLASLt's column-major semantics,
//   D = epilogue(alpha op(A) op(B) + beta C)
// fp32 or bf16 operands, fp32 compute (OpenBLAS's sgemm on the widened operands), C and D of one type: fp32, or bf16
// with bf16 operands (D rounded to nearest even once, after the epilogue), and the epilogues
// matmul.cu uses: BIAS (+ bias[i] on row i of D); GELU_AUX_BIAS (the biased value x goes to the auxiliary matrix, D
// gets GELU(x), the tanh form); DGELU (D = x * GELU'(aux)); BGRADA / BGRADB (the bias pointer receives the sum over
// k of op(A)'s row i / op(B)'s column j, of the operand as the product reads it: bf16 where it is bf16). The checks
// cuBLASLt makes are made here too, so a plan that would be refused on a GPU is refused on the CPU: layouts whose
// shapes do not chain (op(A) m x k, op(B) k x n, C and D m x n), leading dimensions below the rows, operands of
// another type than the plan's, C of another type than D, a bf16 D from fp32 operands, a bias or auxiliary matrix of
// another type than D (cuBLASLt's default for both when no type is set), an auxiliary leading
// dimension that is not a multiple of 8 or is below D's rows, and pointers (A, B, C, D, bias, aux) less aligned than
// the heuristic was promised. Every other epilogue is CUBLAS_STATUS_NOT_SUPPORTED. What it cannot say: which
// combinations the real library has kernels for on a given GPU (here every one above has one), and the library's
// own GELU rounding (here the host's tanhf).
#include <cblas.h>
#include <cublasLt.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

#include "test/cuda_sim/sim_runtime.hpp"

namespace {

std::atomic<int> n_bf16_outputs{0};  // products with a bf16 D (zt_sim::bf16_output_products)

// A bias or auxiliary type not set: D's (cuBLASLt's default, -1; kept as an int, since -1 is no cudaDataType_t).
constexpr int kTypeOfD = -1;
static_assert(sizeof(int) == sizeof(cudaDataType_t), "the attribute's bytes fit either");

struct Desc {
  cublasComputeType_t compute;
  cudaDataType_t scale;
  cublasOperation_t trans_a = CUBLAS_OP_N, trans_b = CUBLAS_OP_N;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  int bias_type = kTypeOfD;
  const void* bias = nullptr;
  const void* aux = nullptr;
  int64_t aux_ld = 0;
  int aux_type = kTypeOfD;
};

// The type a bias or auxiliary matrix has against D's layout.
cudaDataType_t effective(int t, cudaDataType_t d_type) { return t == kTypeOfD ? d_type : cudaDataType_t(t); }

// What an epilogue needs: a bias vector to add, a bias gradient to write, an auxiliary matrix (GELU's input).
bool reads_bias(cublasLtEpilogue_t e) { return e == CUBLASLT_EPILOGUE_BIAS || e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS; }
bool writes_bgrad(cublasLtEpilogue_t e) { return e == CUBLASLT_EPILOGUE_BGRADA || e == CUBLASLT_EPILOGUE_BGRADB; }
bool uses_aux(cublasLtEpilogue_t e) { return e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS || e == CUBLASLT_EPILOGUE_DGELU; }

struct Layout {
  cudaDataType_t type;
  uint64_t rows, cols;
  int64_t ld;
};

struct Pref {
  uint64_t workspace = 0;
  uint32_t align[4] = {1, 1, 1, 1};  // A, B, C, D
};

// What the heuristic promised, kept in the algorithm's opaque words: the alignment of A, B, C, D (the preference's),
// then of the bias and aux pointers as the descriptor held them (cuBLASLt reads their values, not what they point
// at, to choose a kernel).
struct Algo {
  uint32_t magic;
  uint32_t align[6];
};
constexpr uint32_t kMagic = 0x5a54534d;  // "ZTSM"

Desc* desc(cublasLtMatmulDesc_t d) { return reinterpret_cast<Desc*>(d); }
Layout* layout(cublasLtMatrixLayout_t l) { return reinterpret_cast<Layout*>(l); }
Pref* pref(cublasLtMatmulPreference_t p) { return reinterpret_cast<Pref*>(p); }

template <typename T>
cublasStatus_t set(T& field, const void* buf, size_t n) {
  if (buf == nullptr || n != sizeof(T)) return CUBLAS_STATUS_INVALID_VALUE;
  std::memcpy(&field, buf, sizeof(T));
  return CUBLAS_STATUS_SUCCESS;
}

bool supported_operand(cudaDataType_t t) { return t == CUDA_R_32F || t == CUDA_R_16BF; }

// op(X) as stored column-major in l: its rows and columns after the op.
void op_shape(const Layout& l, cublasOperation_t op, uint64_t& rows, uint64_t& cols) {
  rows = op == CUBLAS_OP_N ? l.rows : l.cols;
  cols = op == CUBLAS_OP_N ? l.cols : l.rows;
}

cublasStatus_t validate_epilogue(const Desc& d, const Layout& dd) {
  const cublasLtEpilogue_t e = d.epilogue;
  if (e != CUBLASLT_EPILOGUE_DEFAULT && !reads_bias(e) && !writes_bgrad(e) && !uses_aux(e))
    return CUBLAS_STATUS_NOT_SUPPORTED;
  if ((reads_bias(e) || writes_bgrad(e)) && effective(d.bias_type, dd.type) != dd.type)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  if (uses_aux(e)) {
    if (effective(d.aux_type, dd.type) != dd.type) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (d.aux_ld % 8 != 0 || d.aux_ld < int64_t(dd.rows)) return CUBLAS_STATUS_INVALID_VALUE;
  }
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t validate(const Desc& d, const Layout& a, const Layout& b, const Layout& c, const Layout& dd) {
  if (d.compute != CUBLAS_COMPUTE_32F || d.scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  const cublasStatus_t epilogue_rc = validate_epilogue(d, dd);
  if (epilogue_rc != CUBLAS_STATUS_SUCCESS) return epilogue_rc;
  if (!supported_operand(a.type) || a.type != b.type) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (c.type != dd.type || !supported_operand(dd.type)) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (dd.type == CUDA_R_16BF && a.type != CUDA_R_16BF) return CUBLAS_STATUS_NOT_SUPPORTED;
  uint64_t am, ak, bk, bn;
  op_shape(a, d.trans_a, am, ak);
  op_shape(b, d.trans_b, bk, bn);
  if (ak != bk || c.rows != am || c.cols != bn || dd.rows != c.rows || dd.cols != c.cols || dd.ld != c.ld)
    return CUBLAS_STATUS_INVALID_VALUE;
  for (const Layout* l : {&a, &b, &c})
    if (l->ld < int64_t(l->rows) || l->ld < 1) return CUBLAS_STATUS_INVALID_VALUE;
  return CUBLAS_STATUS_SUCCESS;
}

// The same arithmetic as matmul.cu's alignment_of, written again on purpose: this stand-in checks the alignment
// matmul.cu promised, so it must not take the answer from the code it checks.
uint32_t alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && a % align != 0) align /= 2;
  return align;
}

float element(const void* base, cudaDataType_t type, uint64_t i) {
  if (type == CUDA_R_32F) return static_cast<const float*>(base)[i];
  uint16_t bits;
  std::memcpy(&bits, static_cast<const unsigned char*>(base) + 2 * i, 2);
  return zt_sim::bf16_bits_to_float(bits);
}

// base[i] = v, rounded to nearest even where the type is bf16 (NaN stays a quiet NaN).
void store(void* base, cudaDataType_t type, uint64_t i, float v) {
  if (type == CUDA_R_32F) {
    static_cast<float*>(base)[i] = v;
    return;
  }
  uint32_t x;
  std::memcpy(&x, &v, 4);
  const uint16_t bits = std::isnan(v) ? uint16_t((x >> 16) | 0x40u) : uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
  std::memcpy(static_cast<unsigned char*>(base) + 2 * i, &bits, 2);
}

// GELU in the tanh form (what cuBLASLt's GELU epilogues compute) and its derivative, in fp32.
constexpr float kSqrt2OverPi = 0.7978845608f, kCubic = 0.044715f;
float gelu(float x) { return 0.5f * x * (1.0f + std::tanh(kSqrt2OverPi * (x + kCubic * x * x * x))); }
float gelu_grad(float x) {
  const float t = std::tanh(kSqrt2OverPi * (x + kCubic * x * x * x));
  return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * kSqrt2OverPi * (1.0f + 3.0f * kCubic * x * x);
}

size_t type_bytes(cudaDataType_t t) { return t == CUDA_R_32F ? 4 : 2; }

// Bytes a column-major matrix spans.
size_t span_bytes(const Layout& l) { return ((l.cols - 1) * uint64_t(l.ld) + l.rows) * type_bytes(l.type); }

// D = epilogue(alpha op(A) op(B) + beta C): the queued part of cublasLtMatmul.
void product(const Desc& d, const Layout& la, const Layout& lb, const Layout& lc, const Layout& ld, const void* A,
             const void* B, const void* C, void* D, float al, float be, uint64_t m, uint64_t n, uint64_t k);

// The epilogue's vectors and matrix lie inside device memory, as the kernel's reads and writes would have to.
bool epilogue_in_device_memory(const Desc& d, const Layout& ld, uint64_t m, uint64_t n) {
  const uint64_t bias_n = d.epilogue == CUBLASLT_EPILOGUE_BGRADB ? n : m;
  const size_t bias_bytes = bias_n * type_bytes(effective(d.bias_type, ld.type));
  if ((reads_bias(d.epilogue) || writes_bgrad(d.epilogue)) &&
      (d.bias == nullptr || !zt_sim::is_device_range(d.bias, bias_bytes)))
    return false;
  const Layout aux{ld.type, m, n, d.aux_ld};
  return !uses_aux(d.epilogue) || (d.aux != nullptr && zt_sim::is_device_range(d.aux, span_bytes(aux)));
}

}  // namespace

extern "C" {

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  *handle = reinterpret_cast<cublasLtHandle_t>(new int(1));
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  delete reinterpret_cast<int*>(handle);
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasLtGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "success";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "an invalid value (the simulator's cuBLASLt checks shapes, types and alignment)";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "not supported (by the simulator's cuBLASLt)";
    default:
      return "cuBLAS error";
  }
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* d, cublasComputeType_t compute, cudaDataType_t scale) {
  auto* p = new Desc{};
  p->compute = compute;
  p->scale = scale;
  *d = reinterpret_cast<cublasLtMatmulDesc_t>(p);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
  delete desc(d);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, size_t n) {
  Desc& x = *desc(d);
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
      return set(x.trans_a, buf, n);
    case CUBLASLT_MATMUL_DESC_TRANSB:
      return set(x.trans_b, buf, n);
    case CUBLASLT_MATMUL_DESC_EPILOGUE:
      return set(x.epilogue, buf, n);
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE:
      return set(x.bias_type, buf, n);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
      return set(x.bias, buf, n);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER:
      return set(x.aux, buf, n);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD:
      return set(x.aux_ld, buf, n);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE:
      return set(x.aux_type, buf, n);
    default:
      return CUBLAS_STATUS_NOT_SUPPORTED;
  }
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* l, cudaDataType type, uint64_t rows, uint64_t cols,
                                          int64_t ld) {
  *l = reinterpret_cast<cublasLtMatrixLayout_t>(new Layout{type, rows, cols, ld});
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
  delete layout(l);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) {
  *p = reinterpret_cast<cublasLtMatmulPreference_t>(new Pref{});
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
  delete pref(p);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
                                                    size_t n) {
  Pref& x = *pref(p);
  switch (attr) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
      return set(x.workspace, buf, n);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
      return set(x.align[0], buf, n);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
      return set(x.align[1], buf, n);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
      return set(x.align[2], buf, n);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
      return set(x.align[3], buf, n);
    default:
      return CUBLAS_STATUS_NOT_SUPPORTED;
  }
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t /*handle*/, cublasLtMatmulDesc_t op,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t p, int requested,
                                              cublasLtMatmulHeuristicResult_t* results, int* n_results) {
  *n_results = 0;
  if (requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
  const cublasStatus_t rc = validate(*desc(op), *layout(a), *layout(b), *layout(c), *layout(d));
  if (rc != CUBLAS_STATUS_SUCCESS) return rc;
  std::memset(&results[0], 0, sizeof results[0]);
  const Desc& dsc = *desc(op);
  Algo algo{kMagic,
            {pref(p)->align[0], pref(p)->align[1], pref(p)->align[2], pref(p)->align[3], alignment_of(dsc.bias),
             alignment_of(dsc.aux)}};
  static_assert(sizeof(Algo) <= sizeof(cublasLtMatmulAlgo_t), "the promise fits the opaque words");
  std::memcpy(&results[0].algo, &algo, sizeof algo);
  results[0].state = CUBLAS_STATUS_SUCCESS;
  results[0].wavesCount = 1.0f;
  *n_results = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t /*handle*/, cublasLtMatmulDesc_t op, const void* alpha, const void* A,
                              cublasLtMatrixLayout_t a_layout, const void* B, cublasLtMatrixLayout_t b_layout,
                              const void* beta, const void* C, cublasLtMatrixLayout_t c_layout, void* D,
                              cublasLtMatrixLayout_t d_layout, const cublasLtMatmulAlgo_t* algo, void* /*workspace*/,
                              size_t /*workspace_bytes*/, cudaStream_t stream) {
  const Desc& d = *desc(op);
  const Layout &la = *layout(a_layout), &lb = *layout(b_layout), &lc = *layout(c_layout), &ld = *layout(d_layout);
  cublasStatus_t rc = validate(d, la, lb, lc, ld);
  if (rc != CUBLAS_STATUS_SUCCESS) return rc;
  if (algo == nullptr) return CUBLAS_STATUS_INVALID_VALUE;  // matmul.cu always passes the heuristic's choice
  Algo promised;
  std::memcpy(&promised, algo, sizeof promised);
  if (promised.magic != kMagic) return CUBLAS_STATUS_INVALID_VALUE;
  const void* ptrs[6] = {A, B, C, D, d.bias, d.aux};
  for (int i = 0; i < 6; ++i)
    if (alignment_of(ptrs[i]) < promised.align[i]) return CUBLAS_STATUS_INVALID_VALUE;
  uint64_t m, k, k2, n;
  op_shape(la, d.trans_a, m, k);
  op_shape(lb, d.trans_b, k2, n);
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  // Every operand must lie inside device memory, as a kernel's reads would have to.
  if ((k > 0 && (!zt_sim::is_device_range(A, span_bytes(la)) || !zt_sim::is_device_range(B, span_bytes(lb)))) ||
      !zt_sim::is_device_range(D, span_bytes(ld)))
    return CUBLAS_STATUS_INVALID_VALUE;
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  if (be != 0.0f && !zt_sim::is_device_range(C, span_bytes(lc))) return CUBLAS_STATUS_INVALID_VALUE;
  if (!epilogue_in_device_memory(d, ld, m, n)) return CUBLAS_STATUS_INVALID_VALUE;
  if (ld.type == CUDA_R_16BF) ++n_bf16_outputs;
  // Checked now, computed when the stream gets there: the descriptor, layouts and scalars as they are at this call.
  zt_sim::enqueue(stream, [d, la, lb, lc, ld, A, B, C, D, al, be, m, n, k] {
    product(d, la, lb, lc, ld, A, B, C, D, al, be, m, n, k);
  });
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"

namespace {

// BGRADA: bias[i] = the sum over k of op(A)'s row i; BGRADB: bias[j] = that of op(B)'s column j; in k order, fp32.
void bias_gradient(const Desc& d, cudaDataType_t bias_type, const std::vector<float>& af, const std::vector<float>& bf,
                   uint64_t m, uint64_t n, uint64_t k) {
  const bool of_a = d.epilogue == CUBLASLT_EPILOGUE_BGRADA;
  auto* out = const_cast<void*>(d.bias);
  for (uint64_t i = 0; i < (of_a ? m : n); ++i) {
    float sum = 0.0f;
    for (uint64_t p = 0; p < k; ++p) sum += of_a ? af[i + p * m] : bf[p + i * k];
    store(out, bias_type, i, sum);
  }
}

void product(const Desc& d, const Layout& la, const Layout& lb, const Layout& lc, const Layout& ld, const void* A,
             const void* B, const void* C, void* D, float al, float be, uint64_t m, uint64_t n, uint64_t k) {
  // op(A)[i][p]: A stored column-major, element (r, c) at r + c * ld.
  auto a_at = [&](uint64_t i, uint64_t p) {
    return d.trans_a == CUBLAS_OP_N ? element(A, la.type, i + p * uint64_t(la.ld))
                                    : element(A, la.type, p + i * uint64_t(la.ld));
  };
  auto b_at = [&](uint64_t p, uint64_t j) {
    return d.trans_b == CUBLAS_OP_N ? element(B, lb.type, p + j * uint64_t(lb.ld))
                                    : element(B, lb.type, j + p * uint64_t(lb.ld));
  };
  // op(A) and op(B) as dense fp32 (bf16 widened exactly), multiplied by OpenBLAS's sgemm: fp32 products and sums,
  // in another order than the GPU's, as cuBLASLt's own kernels differ from one another.
  std::vector<float> af(m * k), bf(k * n), prod(m * n, 0.0f);
  for (uint64_t p = 0; p < k; ++p)
    for (uint64_t i = 0; i < m; ++i) af[i + p * m] = a_at(i, p);
  for (uint64_t j = 0; j < n; ++j)
    for (uint64_t p = 0; p < k; ++p) bf[p + j * k] = b_at(p, j);
  if (k > 0)
    cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, int(m), int(n), int(k), al, af.data(), int(m), bf.data(),
                int(k), 0.0f, prod.data(), int(m));
  const cudaDataType_t bias_type = effective(d.bias_type, ld.type), aux_type = effective(d.aux_type, ld.type);
  if (writes_bgrad(d.epilogue)) bias_gradient(d, bias_type, af, bf, m, n, k);
  auto* aux = const_cast<void*>(d.aux);
  for (uint64_t j = 0; j < n; ++j) {
    const uint64_t d_col = j * uint64_t(ld.ld), c_col = j * uint64_t(lc.ld), aux_col = j * uint64_t(d.aux_ld);
    for (uint64_t i = 0; i < m; ++i) {
      float v = prod[i + j * m];
      // beta = 0 ignores C entirely (it may hold NaN), as BLAS specifies. C may be D: each element is read before
      // it is written.
      if (be != 0.0f) v += be * element(C, lc.type, c_col + i);
      if (reads_bias(d.epilogue)) v += element(d.bias, bias_type, i);
      if (d.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS) {
        store(aux, aux_type, aux_col + i, v);  // the pre-activation as stored (rounded where it is bf16) ...
        v = gelu(v);                           // ... and GELU of the unrounded value, as the kernel keeps it
      } else if (d.epilogue == CUBLASLT_EPILOGUE_DGELU) {
        v *= gelu_grad(element(aux, aux_type, aux_col + i));
      }
      store(D, ld.type, d_col + i, v);
    }
  }
}

}  // namespace

int zt_sim::bf16_output_products() { return n_bf16_outputs.load(); }
