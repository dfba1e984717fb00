// The CUDA simulator's own tests (test/cuda_sim/): that it runs what the hardware would and refuses, or shows, what the
// hardware would not. Compiled like a .cu file of cuda/ for the simulator (its device environment force-included).
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda/cuda_common.cuh"
#include "test/cuda_sim/sim_runtime.hpp"

using zt::cuda::kWarpSize;

namespace {

template <typename T>
T* device_copy(const std::vector<T>& host) {
  void* p = nullptr;
  REQUIRE(cudaMalloc(&p, host.size() * sizeof(T)) == cudaSuccess);
  REQUIRE(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
  return static_cast<T*>(p);
}

template <typename T>
std::vector<T> host_copy(const T* device, size_t n) {
  std::vector<T> host(n);
  REQUIRE(cudaMemcpy(host.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
  return host;
}

uint16_t bf16_bits(float x) {
  const __nv_bfloat16 b = __float2bfloat16_rn(x);
  uint16_t bits;
  std::memcpy(&bits, &b, 2);
  return bits;
}

// ---- kernels ----

__global__ void shuffle_kernel(int* out_xor, int* out_idx, float* out_sum) {
  __shared__ float partials[kWarpSize];
  const int lane = threadIdx.x % kWarpSize;
  out_xor[threadIdx.x] = __shfl_xor_sync(0xffffffffu, int(threadIdx.x) * 10, 5);
  out_idx[threadIdx.x] = __shfl_sync(0xffffffffu, int(threadIdx.x) * 10, (lane + 3) % kWarpSize);
  const float total = zt::cuda::block_sum(float(threadIdx.x), partials);
  if (threadIdx.x == 0) *out_sum = total;
}

// D[16][16] = A[16][16] B[16][16] (row-major bf16): A's fragments by ldmatrix.x4 (the idiom for an mma's A operand),
// B's by ldmatrix.x4.trans from the row-major [k][n] tile, as the tensor-core attention reads V, K, dO and Q.
__global__ void mma_kernel(float* d, const __nv_bfloat16* a, const __nv_bfloat16* b) {
  ZT_DYNAMIC_SHARED(__nv_bfloat16, tiles);
  __nv_bfloat16 *a_s = tiles, *b_s = tiles + 256;
  for (int i = threadIdx.x; i < 256; i += blockDim.x) {
    a_s[i] = a[i];
    b_s[i] = b[i];
  }
  __syncthreads();
  const int lane = threadIdx.x, m = lane / 8, r = lane % 8;
  uint32_t af[4], bf[4];
  // Matrices 0..3 of A: rows 0-7 / 8-15 of columns 0-7, then of columns 8-15.
  zt_sim::ldmatrix_x4(af, a_s + ((m % 2) * 8 + r) * 16 + (m / 2) * 8, false);
  // Matrices 0, 1: k rows 0-7 / 8-15 of n columns 0-7; 2, 3: the same rows of columns 8-15.
  zt_sim::ldmatrix_x4(bf, b_s + ((m % 2) * 8 + r) * 16 + (m / 2) * 8, true);
  float acc[2][4] = {};
  zt_sim::mma_m16n8k16_bf16(acc[0], af, bf[0], bf[1]);
  zt_sim::mma_m16n8k16_bf16(acc[1], af, bf[2], bf[3]);
  const int g = lane / 4, t = lane % 4;
  for (int nt = 0; nt < 2; ++nt) {
    d[g * 16 + nt * 8 + 2 * t] = acc[nt][0];
    d[g * 16 + nt * 8 + 2 * t + 1] = acc[nt][1];
    d[(g + 8) * 16 + nt * 8 + 2 * t] = acc[nt][2];
    d[(g + 8) * 16 + nt * 8 + 2 * t + 1] = acc[nt][3];
  }
}

// out[i] = the value thread i + 32 (mod n) wrote to shared memory; with_barrier false leaves out the barrier.
__global__ void neighbour_kernel(int* out, bool with_barrier) {
  ZT_DYNAMIC_SHARED(int, cell);
  cell[threadIdx.x] = int(threadIdx.x) + 1;
  if (with_barrier) __syncthreads();
  out[threadIdx.x] = cell[(threadIdx.x + kWarpSize) % blockDim.x];
}

__global__ void split_barrier_kernel(int* out) {
  int v = int(threadIdx.x);
  if (threadIdx.x < 16)
    __syncthreads();
  else
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

__global__ void diverged_kernel(int* out) {
  int v = int(threadIdx.x);
  if (threadIdx.x % 2 == 0) v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

__global__ void shared_bytes_kernel(int* out) {
  ZT_DYNAMIC_SHARED(int, cells);
  cells[threadIdx.x] = 1;
  out[threadIdx.x] = cells[threadIdx.x];
}

// Reads a static __shared__ array before writing it: what a block sees there is whatever the hardware left.
__global__ void read_before_write_kernel(float* out) {
  __shared__ float cells[kWarpSize];
  out[blockIdx.x * kWarpSize + threadIdx.x] = cells[threadIdx.x];
  cells[threadIdx.x] = 1.0f;
}

std::vector<int> run_neighbour(bool with_barrier, bool reverse) {
  zt_sim::set_reverse_order(reverse);
  int* out = device_copy(std::vector<int>(128, 0));
  ZT_LAUNCH(neighbour_kernel, 1, 128, 128 * sizeof(int), nullptr)(out, with_barrier);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  std::vector<int> host = host_copy(out, 128);
  cudaFree(out);
  zt_sim::set_reverse_order(false);
  return host;
}

}  // namespace

TEST_CASE("shuffles exchange lanes as the hardware does; block_sum adds every thread", "[cuda_sim]") {
  int* x = device_copy(std::vector<int>(64, 0));
  int* idx = device_copy(std::vector<int>(64, 0));
  float* sum = device_copy(std::vector<float>(1, 0.0f));
  ZT_LAUNCH(shuffle_kernel, 1, 64, 0, nullptr)(x, idx, sum);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  const auto hx = host_copy(x, 64), hi = host_copy(idx, 64);
  for (int i = 0; i < 64; ++i) {
    const int warp = i / 32 * 32, lane = i % 32;
    CHECK(hx[i] == (warp + (lane ^ 5)) * 10);
    CHECK(hi[i] == (warp + (lane + 3) % 32) * 10);
  }
  CHECK(host_copy(sum, 1)[0] == 63.0f * 64.0f / 2.0f);  // exact: small integers
  cudaFree(x);
  cudaFree(idx);
  cudaFree(sum);
}

TEST_CASE("ldmatrix and mma.sync fragments compose into the matrix product", "[cuda_sim]") {
  // The A operand read by ldmatrix.x4 and the B operand read by ldmatrix.x4.trans are the register layouts the PTX
  // ISA gives for mma.m16n8k16, which is why the idiom works on the hardware: a simulator whose three layouts
  // disagreed would fail here. Inputs are small integers (exact in bf16, products summed exactly in fp32).
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> dist(-4, 4);
  std::vector<float> a(256), b(256);
  for (auto& v : a) v = float(dist(rng));
  for (auto& v : b) v = float(dist(rng));
  std::vector<uint16_t> a16(256), b16(256);
  for (int i = 0; i < 256; ++i) a16[i] = bf16_bits(a[i]), b16[i] = bf16_bits(b[i]);
  auto* da = reinterpret_cast<__nv_bfloat16*>(device_copy(a16));
  auto* db = reinterpret_cast<__nv_bfloat16*>(device_copy(b16));
  float* dd = device_copy(std::vector<float>(256, -1.0f));
  ZT_LAUNCH(mma_kernel, 1, 32, 2 * 256 * sizeof(__nv_bfloat16), nullptr)(dd, da, db);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  const auto d = host_copy(dd, 256);
  int n_wrong = 0;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float want = 0.0f;
      for (int k = 0; k < 16; ++k) want += a[i * 16 + k] * b[k * 16 + j];
      n_wrong += d[i * 16 + j] != want;
    }
  CHECK(n_wrong == 0);
  cudaFree(da);
  cudaFree(db);
  cudaFree(dd);
}

TEST_CASE("a missing __syncthreads shows as different results in one of the two thread orders", "[cuda_sim]") {
  std::vector<int> want(128);
  for (int i = 0; i < 128; ++i) want[i] = (i + 32) % 128 + 1;
  CHECK(run_neighbour(true, false) == want);
  CHECK(run_neighbour(true, true) == want);
  const bool seen = run_neighbour(false, false) != want || run_neighbour(false, true) != want;
  CHECK(seen);
}

TEST_CASE("shared memory starts every block as NaN, static __shared__ arrays too", "[cuda_sim]") {
  // Without the poisoning, block 1 would read the 1.0f block 0 left behind in the function-local static.
  float* out = device_copy(std::vector<float>(3 * kWarpSize, 0.0f));
  ZT_LAUNCH(read_before_write_kernel, 3, kWarpSize, 0, nullptr)(out);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  int n_nan = 0;
  for (float v : host_copy(out, 3 * kWarpSize)) n_nan += std::isnan(v) ? 1 : 0;
  CHECK(n_nan == 3 * kWarpSize);
  cudaFree(out);
}

TEST_CASE("deadlocks, diverged warp instructions and bad launches fail the launch and say why", "[cuda_sim]") {
  int* out = device_copy(std::vector<int>(2048, 0));
  // A fault inside a kernel is reported where the host waits for it, as on the hardware.
  ZT_LAUNCH(split_barrier_kernel, 1, 32, 0, nullptr)(out);
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
  CHECK_THAT(zt_sim::last_failure(), Catch::Contains("split_barrier_kernel") && Catch::Contains("deadlock"));

  ZT_LAUNCH(diverged_kernel, 1, 32, 0, nullptr)(out);
  CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
  CHECK_THAT(zt_sim::last_failure(), Catch::Contains("diverged_kernel") && Catch::Contains("exited"));

  ZT_LAUNCH(shared_bytes_kernel, 1, 2048, 0, nullptr)(out);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  ZT_LAUNCH(shared_bytes_kernel, 0, 32, 0, nullptr)(out);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);

  // 64 KB of dynamic shared memory needs the kernel's opt-in, and 227 KB is the most an H100 allows.
  ZT_LAUNCH(shared_bytes_kernel, 1, 32, size_t(64) << 10, nullptr)(out);
  CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  CHECK_THAT(zt_sim::last_failure(), Catch::Contains("MaxDynamicSharedMemorySize"));
  CHECK(cudaFuncSetAttribute(shared_bytes_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 << 10) ==
        cudaSuccess);
  ZT_LAUNCH(shared_bytes_kernel, 1, 32, size_t(64) << 10, nullptr)(out);
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(cudaDeviceSynchronize() == cudaSuccess);
  CHECK(cudaFuncSetAttribute(shared_bytes_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 << 10) ==
        cudaErrorInvalidValue);
  cudaGetLastError();
  cudaFree(out);
}

// Sets *flag (mapped pinned memory, as the backend's error flag) and out[0].
__global__ void set_flag_kernel(int* flag, int* out) {
  *flag = 1;
  out[0] = 7;
}

TEST_CASE("work on a stream happens when the host waits for it, not before", "[cuda_sim]") {
  cudaStream_t stream;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  int* flag = nullptr;
  REQUIRE(cudaHostAlloc(reinterpret_cast<void**>(&flag), sizeof(int), cudaHostAllocMapped) == cudaSuccess);
  *flag = 0;
  int* out = device_copy(std::vector<int>(1, 0));
  int* pinned = nullptr;
  REQUIRE(cudaMallocHost(reinterpret_cast<void**>(&pinned), sizeof(int)) == cudaSuccess);
  *pinned = -1;
  ZT_LAUNCH(set_flag_kernel, 1, 32, 0, stream)(flag, out);
  REQUIRE(cudaMemcpyAsync(pinned, out, sizeof(int), cudaMemcpyDeviceToHost, stream) == cudaSuccess);
  CHECK(*flag == 0);     // read before any wait: the kernel has not run
  CHECK(*pinned == -1);  // nor has the copy into pinned memory
  cudaEvent_t done;
  REQUIRE(cudaEventCreateWithFlags(&done, cudaEventDisableTiming) == cudaSuccess);
  REQUIRE(cudaEventRecord(done, stream) == cudaSuccess);
  REQUIRE(cudaEventSynchronize(done) == cudaSuccess);
  CHECK(*flag == 1);
  CHECK(*pinned == 7);
  // A pinned source is read when the stream gets to the copy: changing it first changes what arrives.
  *pinned = 11;
  REQUIRE(cudaMemcpyAsync(out, pinned, sizeof(int), cudaMemcpyHostToDevice, stream) == cudaSuccess);
  *pinned = 12;
  REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
  CHECK(host_copy(out, 1)[0] == 12);
  cudaEventDestroy(done);
  cudaStreamDestroy(stream);
  cudaFreeHost(flag);
  cudaFreeHost(pinned);
  cudaFree(out);
}

TEST_CASE("copies and frees outside a device allocation are refused", "[cuda_sim]") {
  void* p = nullptr;
  REQUIRE(cudaMalloc(&p, 100) == cudaSuccess);
  std::vector<unsigned char> host(200, 0);
  CHECK(cudaMemcpy(host.data(), p, 100, cudaMemcpyDeviceToHost) == cudaSuccess);
  CHECK(host[0] == 0xff);  // new device memory holds garbage (NaN floats), not zeros
  CHECK(cudaMemcpy(host.data(), p, 101, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(p, host.data(), 100, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);  // wrong direction
  CHECK(cudaMemset(static_cast<char*>(p) + 50, 0, 51) == cudaErrorInvalidValue);
  CHECK(cudaFree(static_cast<char*>(p) + 4) == cudaErrorInvalidValue);
  cudaGetLastError();
  CHECK(cudaFree(p) == cudaSuccess);
}

TEST_CASE("the cuBLASLt stand-in refuses shapes that do not chain and pointers less aligned than promised",
          "[cuda_sim]") {
  cublasLtHandle_t handle;
  REQUIRE(cublasLtCreate(&handle) == CUBLAS_STATUS_SUCCESS);
  cublasLtMatmulDesc_t op;
  REQUIRE(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
  cublasLtMatrixLayout_t a, b, c, bad;
  cublasLtMatrixLayoutCreate(&a, CUDA_R_32F, 4, 3, 4);  // m = 4, k = 3
  cublasLtMatrixLayoutCreate(&b, CUDA_R_32F, 3, 2, 3);  // k = 3, n = 2
  cublasLtMatrixLayoutCreate(&c, CUDA_R_32F, 4, 2, 4);
  cublasLtMatrixLayoutCreate(&bad, CUDA_R_32F, 5, 2, 5);  // k = 5
  cublasLtMatmulPreference_t pref;
  cublasLtMatmulPreferenceCreate(&pref);
  const uint32_t align = 16;
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
    cublasLtMatmulPreferenceSetAttribute(pref, attr, &align, sizeof align);
  cublasLtMatmulHeuristicResult_t result;
  int n = 0;
  CHECK(cublasLtMatmulAlgoGetHeuristic(handle, op, a, bad, c, c, pref, 1, &result, &n) == CUBLAS_STATUS_INVALID_VALUE);
  REQUIRE(cublasLtMatmulAlgoGetHeuristic(handle, op, a, b, c, c, pref, 1, &result, &n) == CUBLAS_STATUS_SUCCESS);
  REQUIRE(n == 1);

  // A = [[1..3 in column 0], ...] column-major: D = A B checked against a hand product.
  std::vector<float> ha(12), hb(6);
  for (int i = 0; i < 12; ++i) ha[i] = float(i + 1);
  for (int i = 0; i < 6; ++i) hb[i] = float(i % 3 - 1);
  float* da = device_copy(ha);
  float* db = device_copy(hb);
  float* dd = device_copy(std::vector<float>(8 + 1, 0.0f));
  const float alpha = 1.0f, beta = 0.0f;
  CHECK(cublasLtMatmul(handle, op, &alpha, da, a, db, b, &beta, dd, c, dd, c, &result.algo, nullptr, 0, nullptr) ==
        CUBLAS_STATUS_SUCCESS);
  const auto d = host_copy(dd, 8);
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 2; ++j) {
      float want = 0.0f;
      for (int k = 0; k < 3; ++k) want += ha[i + k * 4] * hb[k + j * 3];
      CHECK(d[i + j * 4] == want);
    }
  // D 4 bytes past a 256-byte boundary: less aligned than the 16 bytes the algorithm was chosen for.
  CHECK(cublasLtMatmul(handle, op, &alpha, da, a, db, b, &beta, dd + 1, c, dd + 1, c, &result.algo, nullptr, 0,
                       nullptr) == CUBLAS_STATUS_INVALID_VALUE);
  cudaFree(da);
  cudaFree(db);
  cudaFree(dd);
  for (auto l : {a, b, c, bad}) cublasLtMatrixLayoutDestroy(l);
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatmulDescDestroy(op);
  cublasLtDestroy(handle);
}

namespace {

// One cuBLASLt product D[8x2] = A[8x3] B[3x2] (column-major, fp32) with an epilogue, through the stand-in: the
// values are multiples of 1/4 and 1/2 with few terms, so products and sums are exact in fp32 and the expected values
// below are exact too (GELU's aside).
struct EpilogueProduct {
  static constexpr int m = 8, k = 3, n = 2;
  cublasLtHandle_t handle{};
  cublasLtMatmulDesc_t op{};
  cublasLtMatrixLayout_t a{}, b{}, d{};
  cublasLtMatmulPreference_t pref{};
  std::vector<float> ha = std::vector<float>(m * k), hb = std::vector<float>(k * n);
  float *da = nullptr, *db = nullptr, *dd = nullptr, *dbias = nullptr, *daux = nullptr;

  explicit EpilogueProduct(cublasLtEpilogue_t epilogue) {
    cublasLtCreate(&handle);
    cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue);
    cublasLtMatrixLayoutCreate(&a, CUDA_R_32F, m, k, m);
    cublasLtMatrixLayoutCreate(&b, CUDA_R_32F, k, n, k);
    cublasLtMatrixLayoutCreate(&d, CUDA_R_32F, m, n, m);
    cublasLtMatmulPreferenceCreate(&pref);
    for (int i = 0; i < m * k; ++i) ha[size_t(i)] = float(i % 5 - 2) * 0.25f;
    for (int i = 0; i < k * n; ++i) hb[size_t(i)] = float(i % 3 - 1) * 0.5f;
    da = device_copy(ha);
    db = device_copy(hb);
    dd = device_copy(std::vector<float>(m * n, 0.0f));
    dbias = device_copy(std::vector<float>(m + 4, 0.0f));
    daux = device_copy(std::vector<float>(m * n + 4, 0.0f));
  }
  ~EpilogueProduct() {
    for (float* p : {da, db, dd, dbias, daux}) cudaFree(p);
    for (auto l : {a, b, d}) cublasLtMatrixLayoutDestroy(l);
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatmulDescDestroy(op);
    cublasLtDestroy(handle);
  }
  template <typename T>
  cublasStatus_t set(cublasLtMatmulDescAttributes_t attr, const T& value) {
    return cublasLtMatmulDescSetAttribute(op, attr, &value, sizeof value);
  }
  // The pointers and aux ld most cases use.
  void set_bias_and_aux(int64_t aux_ld = m) {
    REQUIRE(set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, dbias) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, daux) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, aux_ld) == CUBLAS_STATUS_SUCCESS);
  }
  cublasStatus_t heuristic(cublasLtMatmulAlgo_t* algo) {
    cublasLtMatmulHeuristicResult_t result{};
    int n_results = 0;
    const cublasStatus_t rc = cublasLtMatmulAlgoGetHeuristic(handle, op, a, b, d, d, pref, 1, &result, &n_results);
    *algo = result.algo;
    return rc;
  }
  // Heuristic, then the product with beta = 0; what the later of the two returned.
  cublasStatus_t run() {
    cublasLtMatmulAlgo_t algo;
    const cublasStatus_t rc = heuristic(&algo);
    if (rc != CUBLAS_STATUS_SUCCESS) return rc;
    return matmul(algo);
  }
  cublasStatus_t matmul(const cublasLtMatmulAlgo_t& algo) {
    const float alpha = 1.0f, beta = 0.0f;
    return cublasLtMatmul(handle, op, &alpha, da, a, db, b, &beta, dd, d, dd, d, &algo, nullptr, 0, nullptr);
  }
  float product(int i, int j) const {
    float sum = 0.0f;
    for (int p = 0; p < k; ++p) sum += ha[size_t(i + p * m)] * hb[size_t(p + j * k)];
    return sum;
  }
};

// GELU (tanh form) and its derivative in double: what the stand-in's fp32 epilogue approximates.
double gelu_ref(double x) { return 0.5 * x * (1 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }
double gelu_grad_ref(double x) {
  const double t = std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x));
  return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * 0.7978845608028654 * (1 + 3 * 0.044715 * x * x);
}

}  // namespace

TEST_CASE("cuBLASLt stand-in: GELU_AUX_BIAS keeps x = AB + bias in aux and writes GELU(x)", "[cuda_sim][epilogue]") {
  EpilogueProduct p(CUBLASLT_EPILOGUE_GELU_AUX_BIAS);
  const std::vector<float> bias{-1.5f, -0.75f, -0.25f, 0.0f, 0.25f, 0.5f, 1.0f, 2.0f};
  REQUIRE(cudaMemcpy(p.dbias, bias.data(), bias.size() * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess);
  p.set_bias_and_aux();
  REQUIRE(p.run() == CUBLAS_STATUS_SUCCESS);
  const auto d = host_copy(p.dd, size_t(p.m * p.n)), aux = host_copy(p.daux, size_t(p.m * p.n));
  for (int j = 0; j < p.n; ++j)
    for (int i = 0; i < p.m; ++i) {
      const float x = p.product(i, j) + bias[size_t(i)];
      CHECK(aux[size_t(i + j * p.m)] == x);
      // fp32 tanh and polynomial: a few ulp of the result, far below a wrong formula's 1e-3.
      CHECK(std::fabs(d[size_t(i + j * p.m)] - gelu_ref(x)) <= 1e-6 * (1 + std::fabs(x)));
    }
}

TEST_CASE("cuBLASLt stand-in: DGELU multiplies AB by GELU'(aux)", "[cuda_sim][epilogue]") {
  EpilogueProduct p(CUBLASLT_EPILOGUE_DGELU);
  std::vector<float> pre(size_t(p.m * p.n));
  for (size_t i = 0; i < pre.size(); ++i) pre[i] = float(i) * 0.5f - 4.0f;  // both tails and the bend
  REQUIRE(cudaMemcpy(p.daux, pre.data(), pre.size() * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess);
  p.set_bias_and_aux();
  REQUIRE(p.run() == CUBLAS_STATUS_SUCCESS);
  const auto d = host_copy(p.dd, size_t(p.m * p.n));
  for (int j = 0; j < p.n; ++j)
    for (int i = 0; i < p.m; ++i) {
      const size_t at = size_t(i + j * p.m);
      const double want = p.product(i, j) * gelu_grad_ref(pre[at]);
      CHECK(std::fabs(d[at] - want) <= 1e-6 * (1 + std::fabs(want)));
    }
  CHECK(host_copy(p.dbias, size_t(p.m)) == std::vector<float>(size_t(p.m), 0.0f));  // no bias touched
}

TEST_CASE("cuBLASLt stand-in: BGRADA / BGRADB write the sums over k of op(A)'s rows / op(B)'s columns",
          "[cuda_sim][epilogue]") {
  const bool of_a = GENERATE(true, false);
  INFO((of_a ? "BGRADA" : "BGRADB"));
  EpilogueProduct p(of_a ? CUBLASLT_EPILOGUE_BGRADA : CUBLASLT_EPILOGUE_BGRADB);
  // What was in the bias vector is overwritten, not added to (the backend accumulates it itself).
  REQUIRE(cudaMemcpy(p.dbias, std::vector<float>(size_t(p.m), 7.0f).data(), size_t(p.m) * sizeof(float),
                     cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(p.set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, p.dbias) == CUBLAS_STATUS_SUCCESS);
  REQUIRE(p.run() == CUBLAS_STATUS_SUCCESS);
  const auto d = host_copy(p.dd, size_t(p.m * p.n)), bgrad = host_copy(p.dbias, size_t(p.m));
  for (int j = 0; j < p.n; ++j)
    for (int i = 0; i < p.m; ++i) CHECK(d[size_t(i + j * p.m)] == p.product(i, j));  // D is the plain product
  for (int i = 0; i < (of_a ? p.m : p.n); ++i) {
    float want = 0.0f;
    for (int q = 0; q < p.k; ++q) want += of_a ? p.ha[size_t(i + q * p.m)] : p.hb[size_t(q + i * p.k)];
    CHECK(bgrad[size_t(i)] == want);
  }
  if (!of_a)
    for (int i = p.n; i < p.m; ++i) CHECK(bgrad[size_t(i)] == 7.0f);  // n entries only
}

TEST_CASE("cuBLASLt stand-in: epilogues it does not model, bad aux layouts and moved pointers are refused",
          "[cuda_sim][epilogue]") {
  // Epilogues matmul.cu does not use: NOT_SUPPORTED, as the real library answers for a combination it lacks.
  for (auto e :
       {CUBLASLT_EPILOGUE_GELU, CUBLASLT_EPILOGUE_GELU_AUX, CUBLASLT_EPILOGUE_DGELU_BGRAD, CUBLASLT_EPILOGUE_RELU}) {
    EpilogueProduct p(e);
    p.set_bias_and_aux();
    CHECK(p.run() == CUBLAS_STATUS_NOT_SUPPORTED);
  }
  {  // a bias or aux of another type than D (fp32 here)
    EpilogueProduct p(CUBLASLT_EPILOGUE_GELU_AUX_BIAS);
    p.set_bias_and_aux();
    REQUIRE(p.set(CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, CUDA_R_16BF) == CUBLAS_STATUS_SUCCESS);
    CHECK(p.run() == CUBLAS_STATUS_NOT_SUPPORTED);
    REQUIRE(p.set(CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(p.set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, CUDA_R_16BF) == CUBLAS_STATUS_SUCCESS);
    CHECK(p.run() == CUBLAS_STATUS_NOT_SUPPORTED);
  }
  // An aux leading dimension that is not a multiple of 8, or below D's rows.
  for (const int64_t ld : {12, 0}) {
    EpilogueProduct p(CUBLASLT_EPILOGUE_DGELU);
    p.set_bias_and_aux(ld);
    CHECK(p.run() == CUBLAS_STATUS_INVALID_VALUE);
  }
  {  // Pointers moved after the heuristic chose for their alignment, or outside device memory, fail the product.
    EpilogueProduct p(CUBLASLT_EPILOGUE_GELU_AUX_BIAS);
    p.set_bias_and_aux();
    cublasLtMatmulAlgo_t algo;
    REQUIRE(p.heuristic(&algo) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(p.matmul(algo) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(p.set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, p.dbias + 1) == CUBLAS_STATUS_SUCCESS);
    CHECK(p.matmul(algo) == CUBLAS_STATUS_INVALID_VALUE);
    REQUIRE(p.set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, p.dbias) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(p.set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, p.daux + 4) == CUBLAS_STATUS_SUCCESS);
    CHECK(p.matmul(algo) == CUBLAS_STATUS_INVALID_VALUE);  // 16 bytes past: less aligned than the 256 promised
    std::vector<float> host_aux(size_t(p.m * p.n));
    REQUIRE(p.set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, host_aux.data()) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(p.heuristic(&algo) == CUBLAS_STATUS_SUCCESS);
    CHECK(p.matmul(algo) == CUBLAS_STATUS_INVALID_VALUE);
  }
}

namespace {

// Thread 0 stages in[0..16) into shared memory in two cp.async groups and records what it reads there: before any
// wait (out[0..4)), after wait_group 1 (the first group: out[4..8); the second: out[8..12)) and after wait_all
// (out[12..28)). The second group zero-fills: 8 of 16 bytes read, a 4-byte .ca copy, then a 16-byte copy of 0 bytes.
__global__ void async_copy_kernel(float* out, const float* in) {
  ZT_DYNAMIC_SHARED(float, buf);
  if (threadIdx.x != 0) return;
  zt_sim::cp_async(buf, in, 16, 16, true);
  zt_sim::cp_async_commit();
  zt_sim::cp_async(buf + 4, in + 4, 16, 8, true);
  zt_sim::cp_async(buf + 8, in + 8, 4, 4, false);
  zt_sim::cp_async(buf + 12, in + 12, 16, 0, false);
  zt_sim::cp_async_commit();
  for (int i = 0; i < 4; ++i) out[i] = buf[i];
  zt_sim::cp_async_wait(1);
  for (int i = 0; i < 4; ++i) out[4 + i] = buf[i], out[8 + i] = buf[4 + i];
  zt_sim::cp_async_wait_all();
  for (int i = 0; i < 16; ++i) out[12 + i] = buf[i];
}

// n_tiles tiles of 64 floats, double-buffered as the fa2 attention streams K and V: warp 0 copies tile k + 1 into one
// buffer while both warps read tile k from the other; thread i reads element 63 - i (another warp's copy).
// barrier_before_reuse false leaves out the barrier that keeps a buffer from being refilled while it is still read.
__global__ void pipeline_kernel(float* out, const float* in, int n_tiles, bool barrier_before_reuse) {
  ZT_DYNAMIC_SHARED(float, buf);
  auto issue = [&](int tile) {
    if (threadIdx.x < 16)
      zt_sim::cp_async(buf + (tile % 2) * 64 + 4 * threadIdx.x, in + tile * 64 + 4 * threadIdx.x, 16, 16, true);
    zt_sim::cp_async_commit();
  };
  issue(0);
  for (int tile = 0; tile < n_tiles; ++tile) {
    if (tile + 1 < n_tiles) issue(tile + 1);
    zt_sim::cp_async_wait(tile + 1 < n_tiles ? 1 : 0);
    __syncthreads();
    out[tile * 64 + threadIdx.x] = buf[(tile % 2) * 64 + 63 - threadIdx.x];
    if (barrier_before_reuse) __syncthreads();
  }
}

// A .cg copy of 4 bytes (it takes only 16), or a destination in global memory: refused.
__global__ void bad_async_copy_kernel(float* out, const float* in, bool to_global) {
  ZT_DYNAMIC_SHARED(float, buf);
  if (to_global)
    zt_sim::cp_async(out, in, 16, 16, true);
  else
    zt_sim::cp_async(buf, in, 4, 4, true);
  zt_sim::cp_async_wait_all();
}

std::vector<float> run_pipeline(const std::vector<float>& in, bool barrier, bool reverse) {
  zt_sim::set_reverse_order(reverse);
  const float* d_in = device_copy(in);
  float* out = device_copy(std::vector<float>(in.size(), 0.0f));
  ZT_LAUNCH(pipeline_kernel, 1, 64, 128 * sizeof(float), nullptr)(out, d_in, int(in.size() / 64), barrier);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  std::vector<float> host = host_copy(out, in.size());
  cudaFree(out);
  cudaFree(const_cast<float*>(d_in));
  zt_sim::set_reverse_order(false);
  return host;
}

}  // namespace

TEST_CASE("cp.async lands at its wait_group: read before it, the destination is NaN", "[cuda_sim][cp_async]") {
  std::vector<float> in(16);
  for (int i = 0; i < 16; ++i) in[i] = float(i + 1);
  const float* d_in = device_copy(in);
  float* out = device_copy(std::vector<float>(28, -1.0f));
  ZT_LAUNCH(async_copy_kernel, 1, 32, 16 * sizeof(float), nullptr)(out, d_in);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const auto h = host_copy(out, 28);
  // Zero-fill past src_bytes; buf[9..11], which no copy writes, keep the block's NaN.
  const float nan = std::nanf(""), landed[16] = {1, 2, 3, 4, 5, 6, 0, 0, 9, nan, nan, nan, 0, 0, 0, 0};
  for (int i = 0; i < 4; ++i) {
    CHECK(std::isnan(h[i]));      // read before any wait
    CHECK(h[4 + i] == in[i]);     // group 0 landed by wait_group 1 ...
    CHECK(std::isnan(h[8 + i]));  // ... group 1 not
  }
  for (int i = 0; i < 16; ++i) CHECK((std::isnan(landed[i]) ? std::isnan(h[12 + i]) : h[12 + i] == landed[i]));

  // Double buffering: right in both thread orders with the barrier before a buffer is refilled; without it, warp 0
  // refills the buffer warp 1 has yet to read, which reads NaN in one of the orders.
  std::vector<float> tiles(4 * 64), want(4 * 64);
  for (size_t i = 0; i < tiles.size(); ++i) tiles[i] = float(i);
  for (size_t i = 0; i < want.size(); ++i) want[i] = tiles[i / 64 * 64 + 63 - i % 64];
  CHECK(run_pipeline(tiles, true, false) == want);
  CHECK(run_pipeline(tiles, true, true) == want);
  CHECK((run_pipeline(tiles, false, false) != want || run_pipeline(tiles, false, true) != want));

  for (bool to_global : {false, true}) {
    ZT_LAUNCH(bad_async_copy_kernel, 1, 32, 64, nullptr)(out, d_in, to_global);
    CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
    CHECK_THAT(zt_sim::last_failure(),
               Catch::Contains(to_global ? "outside the block's shared memory" : ".cg copies 16"));
  }
  cudaGetLastError();
  cudaFree(out);
  cudaFree(const_cast<float*>(d_in));
}
