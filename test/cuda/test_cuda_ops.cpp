// Every CUDA op against its CPU twin (zt::cpu) in fp32 and bf16 mode, on random sizes from a printed seed, then
// whole GPT-2 steps (loss and every gradient) on CUDA against the CPU. Exits 77 (CTest: skipped) with no device.
#define CATCH_CONFIG_RUNNER
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/backend.hpp"
#include "core/errors.hpp"
#include "core/gpt2.hpp"
#include "core/model.hpp"
#include "core/ops.hpp"
#include "cuda/cuda_backend.hpp"
#include "test/cuda/flat_units.hpp"

namespace cpu = zt::cpu;
using VecF = std::vector<float>;
using VecI = std::vector<int32_t>;
using zt::FlatUnits;

namespace {

// ---- tolerances: |got - ref| <= rel * |ref| + abs * max|ref| over the tensor ----
struct Tolerance {
  double rel;
  double abs;
};
// The same operations in the same order as the CPU: one add per element (embedding forward, residual), sums that
// walk rows in the CPU's order (embedding backward), AdamW written with round-to-nearest intrinsics so nothing is
// contracted into an FMA. Anything but identical bits is a bug.
constexpr Tolerance kExact{0.0, 0.0};
// fp32 with another summation order (warp trees, cuBLAS tiles, two-stage column sums) or another exp (CUDA's expf
// is within 2 ulp; the CPU GELU uses its own 2-ulp polynomial). Over the few hundred to few thousand terms summed
// here that moves results by ~1e-7 of the tensor's scale and elementwise ones by a few ulp; 1e-5 leaves a wide
// margin, while a wrong index, term or sign shows up at 1e-2 and beyond.
constexpr Tolerance kF32{1e-5, 1e-5};
// bf16-mode matmul outputs: both operands are rounded to bf16 (8-bit mantissa, relative error <= 2^-9 each) and
// the products summed in fp32, so a K-term dot product errs by ~2^-8 of the root-sum-square of its terms, which
// is 1e-3 of the output's largest value (typically 4e-3 at the worst element). 1e-2 gives 2.5x margin.
constexpr Tolerance kBf16Matmul{1e-2, 1e-2};
// bf16-mode attention on the tensor cores (head sizes 32 and 64): Q, K, V, dO and the probabilities P (and dS) are
// rounded to bf16 for the products, softmax statistics and sums stay fp32. A score errs by ~2^-8 of the rss of its
// hs terms times 1/sqrt(hs) (~1.3e-3 for hs = 64 with inputs in [-1, 1]), so P by ~1e-3 relative, and an output or
// gradient, a P- or dS-weighted sum of bf16 rows, by a few 1e-3 of its tensor's largest value; the backward
// compounds two such products (dP, then dS·K). 2e-2 leaves a 3-5x margin; a wrong index, mask or term is off by
// O(1) of the scale.
constexpr Tolerance kBf16Attention{2e-2, 2e-2};
// Sums of squares accumulated in double on both sides, only the order differs.
constexpr Tolerance kDouble{1e-12, 0.0};
// A whole fp32 GPT-2 step: the per-op differences above compound through ~30 ops (two blocks forward and back)
// and the LM head's 256-wide softmax; 1e-4 of each gradient tensor's scale still catches any wrong op.
constexpr Tolerance kF32Model{1e-4, 1e-4};
// A whole bf16 step against the fp32 CPU: each matmul contributes kBf16Matmul-sized differences that compound
// through the blocks. 5e-2 of the scale: a wrong gradient path is off by O(1).
constexpr Tolerance kBf16Model{5e-2, 5e-2};

// ---- seeds: one per run, printed by main; ZT_TEST_SEED=<n> replays ----
uint64_t test_seed() {
  static const uint64_t seed = [] {
    if (const char* env = std::getenv("ZT_TEST_SEED")) return uint64_t(std::stoull(env));
    return (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
  }();
  return seed;
}

std::mt19937_64 seeded_rng() {
  const std::string name = Catch::getResultCapture().getCurrentTestName();
  return std::mt19937_64(test_seed() ^ std::hash<std::string>{}(name));
}

int uniform_int(std::mt19937_64& rng, int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }

VecF uniform(std::mt19937_64& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  VecF v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

VecI random_tokens(std::mt19937_64& rng, size_t n, int vocab) {
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  VecI t(n);
  for (auto& x : t) x = dist(rng);
  return t;
}

const float kPoison = std::numeric_limits<float>::quiet_NaN();

// Device floats with a NaN guard of kGuard elements after them: an op that writes past its output is caught when
// the guard is read back, one that reads past its input meets NaN. `misalign` shifts the start by that many
// floats, so pointers that are not 16-byte aligned (as inside the model's activation arena) are exercised too.
constexpr size_t kGuard = 64;

class DeviceArray {
 public:
  DeviceArray(zt::Backend& be, size_t n, size_t misalign = 0)
      : be_(be), n_(n), misalign_(misalign), base_(be.alloc(n + misalign + kGuard)) {
    poison();
  }
  ~DeviceArray() { be_.release(base_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  float* get() const { return base_ + misalign_; }
  void upload(const VecF& host) {
    REQUIRE(host.size() == n_);
    VecF full(misalign_, kPoison);
    full.insert(full.end(), host.begin(), host.end());
    full.resize(misalign_ + n_ + kGuard, kPoison);
    be_.from_host(base_, full.data(), full.size());
  }
  void poison() { upload(VecF(n_, kPoison)); }
  VecF download() const {
    VecF full(misalign_ + n_ + kGuard);
    be_.to_host(full.data(), base_, full.size());
    size_t n_touched = 0;
    for (size_t i = 0; i < misalign_; ++i) n_touched += std::isnan(full[i]) ? 0 : 1;
    for (size_t i = misalign_ + n_; i < full.size(); ++i) n_touched += std::isnan(full[i]) ? 0 : 1;
    INFO("guard elements around a buffer of " << n_ << " were written");
    CHECK(n_touched == 0);
    return VecF(full.begin() + long(misalign_), full.begin() + long(misalign_ + n_));
  }

 private:
  zt::Backend& be_;
  size_t n_, misalign_;
  float* base_;
};

class DeviceTokens {
 public:
  DeviceTokens(zt::Backend& be, const VecI& host) : be_(be), p_(be.alloc_int(host.size())) {
    be.tokens_from_host(p_, host.data(), host.size());
  }
  ~DeviceTokens() { be_.release(p_); }
  DeviceTokens(const DeviceTokens&) = delete;
  DeviceTokens& operator=(const DeviceTokens&) = delete;
  const int32_t* get() const { return p_; }

 private:
  zt::Backend& be_;
  int32_t* p_;
};

void expect_close(const std::string& what, const VecF& got, const VecF& ref, Tolerance tol) {
  REQUIRE(got.size() == ref.size());
  double scale = 0.0;
  for (float r : ref) scale = std::max(scale, double(std::fabs(r)));
  size_t n_bad = 0, worst = 0;
  double worst_excess = -1.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double err = std::fabs(double(got[i]) - double(ref[i]));
    const double allowed = tol.rel * std::fabs(double(ref[i])) + tol.abs * scale;
    const bool ok = err <= allowed;  // false for NaN
    if (!ok) ++n_bad;
    const double excess = std::isnan(err) ? std::numeric_limits<double>::infinity() : err - allowed;
    if (!ok && excess > worst_excess) {
      worst_excess = excess;
      worst = i;
    }
  }
  INFO(what << ": " << n_bad << " of " << ref.size() << " elements outside rel " << tol.rel << " + abs " << tol.abs
            << " x scale " << scale
            << (n_bad ? "; worst at " + std::to_string(worst) + ": got " + std::to_string(got[worst]) + ", want " +
                            std::to_string(ref[worst])
                      : std::string()));
  CHECK(n_bad == 0);
}

std::unique_ptr<zt::Backend> cuda_backend(bool bf16) { return zt::make_cuda_backend(0, bf16); }

// A bf16 backend made with the environment variable `name` set to `value`, and the error that making one with it
// set to `bad_value` gives. The backend reads the variable when it is made; it is unset before anything can fail.
struct EnvBackend {
  std::unique_ptr<zt::Backend> backend;
  std::string bad_value_error;
};
EnvBackend bf16_backend_with_env(const char* name, const char* value, const char* bad_value) {
  EnvBackend made;
  ::setenv(name, value, 1);
  try {
    made.backend = cuda_backend(true);
    ::setenv(name, bad_value, 1);
    cuda_backend(true);
  } catch (const std::exception& e) {
    made.bad_value_error = e.what();
  }
  ::unsetenv(name);
  INFO(name << "=" << value << ": " << made.bad_value_error);
  REQUIRE(made.backend != nullptr);
  return made;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("embedding forward and backward match the CPU bit for bit", "[cuda][embedding]") {
  const bool bf16 = GENERATE(false, true);
  auto rng = seeded_rng();
  auto be = cuda_backend(bf16);
  for (int trial = 0; trial < 6; ++trial) {
    const int B = uniform_int(rng, 1, 4), T = uniform_int(rng, 1, 70), C = uniform_int(rng, 1, 300);
    // Small vocabularies make every token repeat many times (long buckets); large ones leave most rows unused.
    const int V = trial % 2 == 0 ? uniform_int(rng, 1, 8) : uniform_int(rng, 9, 600);
    INFO("bf16=" << bf16 << " B=" << B << " T=" << T << " C=" << C << " V=" << V);
    const size_t BT = size_t(B) * T;
    const VecI tokens = random_tokens(rng, BT, V);
    const VecF wte = uniform(rng, size_t(V) * C, -1, 1), wpe = uniform(rng, size_t(T) * C, -1, 1);
    const VecF dout = uniform(rng, BT * C, -1, 1);
    const VecF dwte0 = uniform(rng, size_t(V) * C, -1, 1), dwpe0 = uniform(rng, size_t(T) * C, -1, 1);

    VecF out_ref(BT * C), dwte_ref(dwte0), dwpe_ref(dwpe0);
    cpu::embedding_forward(out_ref.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
    cpu::embedding_backward(dwte_ref.data(), dwpe_ref.data(), dout.data(), tokens.data(), B, T, C);

    DeviceTokens d_tokens(*be, tokens);
    DeviceArray d_wte(*be, wte.size()), d_wpe(*be, wpe.size()), d_out(*be, BT * C, size_t(trial % 3));
    DeviceArray d_dout(*be, dout.size()), d_dwte(*be, dwte0.size()), d_dwpe(*be, dwpe0.size());
    d_wte.upload(wte);
    d_wpe.upload(wpe);
    d_dout.upload(dout);
    d_dwte.upload(dwte0);
    d_dwpe.upload(dwpe0);
    be->embedding_forward(d_out.get(), d_tokens.get(), d_wte.get(), d_wpe.get(), B, T, C);
    be->embedding_backward(d_dwte.get(), d_dwpe.get(), d_dout.get(), d_tokens.get(), B, T, C);
    expect_close("embedding out", d_out.download(), out_ref, kExact);
    expect_close("embedding dwte", d_dwte.download(), dwte_ref, kExact);
    expect_close("embedding dwpe", d_dwpe.download(), dwpe_ref, kExact);
  }
}

TEST_CASE("layernorm forward and backward match the CPU", "[cuda][layernorm]") {
  const bool bf16 = GENERATE(false, true);
  auto rng = seeded_rng();
  auto be = cuda_backend(bf16);
  for (int trial = 0; trial < 6; ++trial) {
    const int N = uniform_int(rng, 1, 300), C = uniform_int(rng, 1, 800);
    INFO("bf16=" << bf16 << " N=" << N << " C=" << C);
    VecF inp = uniform(rng, size_t(N) * C, -2, 2);
    for (auto& x : inp) x += 3.0f;  // a mean far from 0: the two-pass variance must not cancel
    const VecF weight = uniform(rng, size_t(C), 0.5f, 1.5f), bias = uniform(rng, size_t(C), -1, 1);
    const VecF dout = uniform(rng, size_t(N) * C, -1, 1);
    const VecF dinp0 = uniform(rng, size_t(N) * C, -1, 1);
    const VecF dweight0 = uniform(rng, size_t(C), -1, 1), dbias0 = uniform(rng, size_t(C), -1, 1);

    VecF out_ref(size_t(N) * C), mean_ref(static_cast<size_t>(N)), rstd_ref(static_cast<size_t>(N));
    cpu::layernorm_forward(out_ref.data(), mean_ref.data(), rstd_ref.data(), inp.data(), weight.data(), bias.data(), N,
                           C);
    VecF dinp_ref(dinp0), dweight_ref(dweight0), dbias_ref(dbias0);
    cpu::layernorm_backward(dinp_ref.data(), dweight_ref.data(), dbias_ref.data(), dout.data(), inp.data(),
                            weight.data(), mean_ref.data(), rstd_ref.data(), N, C);

    const size_t mis = size_t(trial % 2);
    DeviceArray d_inp(*be, inp.size(), mis), d_w(*be, size_t(C)), d_b(*be, size_t(C)), d_out(*be, inp.size(), mis);
    DeviceArray d_mean(*be, size_t(N)), d_rstd(*be, size_t(N)), d_dout(*be, dout.size(), mis);
    DeviceArray d_dinp(*be, dinp0.size(), mis), d_dw(*be, size_t(C)), d_db(*be, size_t(C));
    d_inp.upload(inp);
    d_w.upload(weight);
    d_b.upload(bias);
    d_dout.upload(dout);
    d_dinp.upload(dinp0);
    d_dw.upload(dweight0);
    d_db.upload(dbias0);
    be->layernorm_forward(d_out.get(), d_mean.get(), d_rstd.get(), d_inp.get(), d_w.get(), d_b.get(), N, C);
    expect_close("layernorm out", d_out.download(), out_ref, kF32);
    expect_close("layernorm mean", d_mean.download(), mean_ref, kF32);
    expect_close("layernorm rstd", d_rstd.download(), rstd_ref, kF32);
    // The backward reads the CPU's mean / rstd, so it is compared on identical inputs.
    d_mean.upload(mean_ref);
    d_rstd.upload(rstd_ref);
    be->layernorm_backward(d_dinp.get(), d_dw.get(), d_db.get(), d_dout.get(), d_inp.get(), d_w.get(), d_mean.get(),
                           d_rstd.get(), N, C);
    expect_close("layernorm dinp", d_dinp.download(), dinp_ref, kF32);
    expect_close("layernorm dweight", d_dw.download(), dweight_ref, kF32);
    expect_close("layernorm dbias", d_db.download(), dbias_ref, kF32);
  }
}

TEST_CASE("fused residual + layernorm matches the CPU and the two CUDA ops in turn", "[cuda][layernorm][residual]") {
  const bool bf16 = GENERATE(false, true);
  auto rng = seeded_rng();
  auto be = cuda_backend(bf16);
  for (int trial = 0; trial < 6; ++trial) {
    const int N = uniform_int(rng, 1, 300), C = trial == 0 ? 768 : uniform_int(rng, 1, 800);
    INFO("bf16=" << bf16 << " N=" << N << " C=" << C);
    const size_t n = size_t(N) * C;
    VecF a = uniform(rng, n, -2, 2);
    for (auto& x : a) x += 3.0f;  // a mean far from 0, as in layernorm's test
    const VecF b = uniform(rng, n, -1, 1);
    const VecF weight = uniform(rng, size_t(C), 0.5f, 1.5f), bias = uniform(rng, size_t(C), -1, 1);
    VecF res_ref(n), out_ref(n), mean_ref(static_cast<size_t>(N)), rstd_ref(static_cast<size_t>(N));
    cpu::residual_layernorm_forward(res_ref.data(), out_ref.data(), mean_ref.data(), rstd_ref.data(), a.data(),
                                    b.data(), weight.data(), bias.data(), N, C);

    const size_t mis = size_t(trial % 2);
    DeviceArray d_a(*be, n, mis), d_b(*be, n), d_w(*be, size_t(C)), d_bias(*be, size_t(C));
    DeviceArray d_res(*be, n, mis), d_out(*be, n), d_mean(*be, size_t(N)), d_rstd(*be, size_t(N));
    d_a.upload(a);
    d_b.upload(b);
    d_w.upload(weight);
    d_bias.upload(bias);
    be->residual_layernorm_forward(d_res.get(), d_out.get(), d_mean.get(), d_rstd.get(), d_a.get(), d_b.get(),
                                   d_w.get(), d_bias.get(), N, C);
    const VecF res = d_res.download(), out = d_out.download(), mean = d_mean.download(), rstd = d_rstd.download();
    expect_close("fused residual", res, res_ref, kExact);
    expect_close("fused layernorm out", out, out_ref, kF32);
    expect_close("fused layernorm mean", mean, mean_ref, kF32);
    expect_close("fused layernorm rstd", rstd, rstd_ref, kF32);

    // The same kernels' arithmetic as residual_forward then layernorm_forward on this device: identical bits.
    DeviceArray d_res2(*be, n), d_out2(*be, n), d_mean2(*be, size_t(N)), d_rstd2(*be, size_t(N));
    be->residual_forward(d_res2.get(), d_a.get(), d_b.get(), n);
    be->layernorm_forward(d_out2.get(), d_mean2.get(), d_rstd2.get(), d_res2.get(), d_w.get(), d_bias.get(), N, C);
    const VecF out2 = d_out2.download(), mean2 = d_mean2.download(), rstd2 = d_rstd2.download();
    CHECK(std::memcmp(out.data(), out2.data(), n * sizeof(float)) == 0);
    CHECK(std::memcmp(mean.data(), mean2.data(), size_t(N) * sizeof(float)) == 0);
    CHECK(std::memcmp(rstd.data(), rstd2.data(), size_t(N) * sizeof(float)) == 0);
  }
}

TEST_CASE("matmul forward and backward match the CPU", "[cuda][matmul]") {
  const bool bf16 = GENERATE(false, true);
  auto rng = seeded_rng();
  auto be = cuda_backend(bf16);
  const Tolerance product_tol = bf16 ? kBf16Matmul : kF32;
  for (int trial = 0; trial < 8; ++trial) {
    const int N = uniform_int(rng, 1, 300), C = uniform_int(rng, 1, 300), OC = uniform_int(rng, 1, 300);
    const bool transposed = trial % 2 == 1, with_bias = trial % 4 < 2, with_dinp = trial % 3 != 2;
    const size_t mis = size_t(trial % 3 == 1);  // 4-byte-aligned operands: cuBLASLt must be told
    INFO("bf16=" << bf16 << " N=" << N << " C=" << C << " OC=" << OC << " transposed=" << transposed
                 << " bias=" << with_bias << " dinp=" << with_dinp << " misaligned=" << mis);
    const VecF inp = uniform(rng, size_t(N) * C, -1, 1), weight = uniform(rng, size_t(C) * OC, -1, 1);
    const VecF bias = uniform(rng, size_t(OC), -1, 1), dout = uniform(rng, size_t(N) * OC, -1, 1);
    const VecF dweight0 = uniform(rng, size_t(C) * OC, -1, 1), dbias0 = uniform(rng, size_t(OC), -1, 1);

    // dinp is written (its device buffer stays poisoned until then), dweight and dbias accumulate.
    VecF out_ref(size_t(N) * OC), dinp_ref(size_t(N) * C), dweight_ref(dweight0), dbias_ref(dbias0);
    cpu::matmul_forward(out_ref.data(), inp.data(), weight.data(), with_bias ? bias.data() : nullptr, N, C, OC,
                        transposed);
    cpu::matmul_backward(with_dinp ? dinp_ref.data() : nullptr, dweight_ref.data(),
                         with_bias ? dbias_ref.data() : nullptr, dout.data(), inp.data(), weight.data(), N, C, OC,
                         transposed);

    DeviceArray d_inp(*be, inp.size(), mis), d_w(*be, weight.size(), mis), d_b(*be, bias.size(), mis);
    DeviceArray d_out(*be, out_ref.size(), mis), d_dout(*be, dout.size(), mis), d_dinp(*be, dinp_ref.size(), mis);
    DeviceArray d_dw(*be, dweight0.size(), mis), d_db(*be, dbias0.size(), mis);
    d_inp.upload(inp);
    d_w.upload(weight);
    d_b.upload(bias);
    d_dout.upload(dout);
    d_dw.upload(dweight0);
    d_db.upload(dbias0);
    be->matmul_forward(d_out.get(), d_inp.get(), d_w.get(), with_bias ? d_b.get() : nullptr, N, C, OC, transposed);
    expect_close("matmul out", d_out.download(), out_ref, product_tol);
    be->matmul_backward(with_dinp ? d_dinp.get() : nullptr, d_dw.get(), with_bias ? d_db.get() : nullptr, d_dout.get(),
                        d_inp.get(), d_w.get(), N, C, OC, transposed);
    const VecF dinp = d_dinp.download();
    if (with_dinp) {
      expect_close("matmul dinp", dinp, dinp_ref, product_tol);
    } else {  // a null dinp: nothing else was written in its place
      CHECK(std::all_of(dinp.begin(), dinp.end(), [](float x) { return std::isnan(x); }));
    }
    expect_close("matmul dweight", d_dw.download(), dweight_ref, product_tol);
    // The bias gradient is a column sum of the fp32 dout in both modes.
    expect_close("matmul dbias", d_db.download(), dbias_ref, kF32);
  }
}

TEST_CASE("attention forward and backward match the CPU", "[cuda][attention]") {
  const bool bf16 = GENERATE(false, true);
  auto rng = seeded_rng();
  auto be = cuda_backend(bf16);
  const int head_dims[] = {1, 8, 16, 24, 32, 40, 64, 72, 96, 128};
  for (int trial = 0; trial < 11; ++trial) {
    // Trials 8-10 take hs = 64, the tensor-core kernels' GPT-2 size, at T > 64 (several tiles, a partial last
    // one); trials 9 and 10 shift qkv, then dout, off 16-byte alignment (the tensor-core path rounds both into
    // aligned bf16 buffers first, so it takes any alignment).
    const int hs = trial >= 8 ? 64 : head_dims[uniform_int(rng, 0, 9)];
    const int B = uniform_int(rng, 1, 3), NH = uniform_int(rng, 1, 4);
    // Half the trials have T <= hs, where att cannot hold the output copy and the backward recomputes it.
    const int T = trial >= 8       ? uniform_int(rng, 65, 200)
                  : trial % 2 == 0 ? uniform_int(rng, 1, std::max(1, hs))
                                   : uniform_int(rng, hs + 1, hs + 100);
    const size_t misalign = trial == 9 ? 1 : 0, misalign_dout = trial == 10 ? 1 : 0;
    const bool tensor_cores = bf16 && (hs == 32 || hs == 64);
    const Tolerance tol = tensor_cores ? kBf16Attention : kF32;
    const int C = NH * hs;
    INFO("bf16=" << bf16 << " B=" << B << " T=" << T << " NH=" << NH << " hs=" << hs << " misalign=" << misalign
                 << " misalign_dout=" << misalign_dout << " tensor_cores=" << tensor_cores);
    const size_t BT = size_t(B) * T, n_att = size_t(B) * NH * T * T;
    const VecF qkv = uniform(rng, BT * 3 * C, -1, 1), dout = uniform(rng, BT * C, -1, 1);

    VecF out_ref(BT * C), att_ref(n_att), dqkv_ref(BT * 3 * C);
    cpu::attention_forward(out_ref.data(), att_ref.data(), qkv.data(), B, T, C, NH);
    cpu::attention_backward(dqkv_ref.data(), dout.data(), qkv.data(), att_ref.data(), B, T, C, NH);

    // att stays poisoned except what the CUDA forward writes: the backward reading anything else would show NaN.
    // It is exactly as large as the backend says it needs (not the CPU's n_att): the guard behind it catches a
    // forward that writes more.
    const size_t n_state = be->attention_state_elems(B, T, C, NH);
    DeviceArray d_qkv(*be, qkv.size(), misalign), d_out(*be, out_ref.size()), d_att(*be, n_state),
        d_dout(*be, dout.size(), misalign_dout);
    DeviceArray d_dqkv(*be, dqkv_ref.size());  // poisoned: the backward writes every element
    d_qkv.upload(qkv);
    d_dout.upload(dout);
    be->attention_forward(d_out.get(), d_att.get(), d_qkv.get(), B, T, C, NH);
    (void)d_att.download();  // reads the guard behind att back: the forward wrote nothing past n_state
    expect_close("attention out", d_out.download(), out_ref, tol);
    be->attention_backward(d_dqkv.get(), d_dout.get(), d_qkv.get(), d_att.get(), B, T, C, NH);
    // The gradient itself (written, not added to anything): bf16's tolerance is relative to its own scale.
    expect_close("attention dqkv", d_dqkv.download(), dqkv_ref, tol);
  }
}

TEST_CASE(
    "bf16 attention runs on the tensor cores unless ZT_CUDA_ATTENTION=fp32; ZT_CUDA_ATTENTION_DKV_BLOCKS=3 agrees",
    "[cuda][attention]") {
  auto rng = seeded_rng();
  const int B = 2, T = 130, NH = 2, hs = 64, C = NH * hs;
  const size_t BT = size_t(B) * T;
  const VecF qkv = uniform(rng, BT * 3 * C, -1, 1), dout = uniform(rng, BT * C, -1, 1);
  // out and dqkv of one forward + backward from zero.
  auto run = [&](zt::Backend& be) {
    DeviceArray d_qkv(be, qkv.size()), d_out(be, BT * C), d_att(be, be.attention_state_elems(B, T, C, NH)),
        d_dout(be, dout.size());
    DeviceArray d_dqkv(be, qkv.size());
    d_qkv.upload(qkv);
    d_dout.upload(dout);
    be.attention_forward(d_out.get(), d_att.get(), d_qkv.get(), B, T, C, NH);
    be.attention_backward(d_dqkv.get(), d_dout.get(), d_qkv.get(), d_att.get(), B, T, C, NH);
    return std::vector<VecF>{d_out.download(), d_dqkv.download()};
  };
  auto fp32_mode = cuda_backend(false);
  auto tc_mode = cuda_backend(true);
  const auto fp32_result = run(*fp32_mode);
  const auto tc_result = run(*tc_mode);
  const auto tc_again = run(*tc_mode);
  const EnvBackend bf16_fp32_attention = bf16_backend_with_env("ZT_CUDA_ATTENTION", "fp32", "tensor");
  CHECK_THAT(bf16_fp32_attention.bad_value_error, Catch::Contains("ZT_CUDA_ATTENTION=tensor: expected auto"));
  const auto forced_fp32 = run(*bf16_fp32_attention.backend);
  // The dK/dV kernel built for 3 blocks an SM (fewer registers): the same source, so the same values, up to the
  // ulp or so ptxas may change where it contracts a multiply-add differently under the register cap (kF32).
  const EnvBackend capped_dkv = bf16_backend_with_env("ZT_CUDA_ATTENTION_DKV_BLOCKS", "3", "4");
  CHECK_THAT(capped_dkv.bad_value_error, Catch::Contains("ZT_CUDA_ATTENTION_DKV_BLOCKS=4: expected auto"));
  const auto tc_capped = run(*capped_dkv.backend);
  // The flag (--cuda_attention fp32, as CudaVariants) picks the same kernels, and once given the variable is not read.
  ::setenv("ZT_CUDA_ATTENTION", "tensor", 1);
  std::unique_ptr<zt::Backend> flag_fp32;
  CHECK_NOTHROW(flag_fp32 = zt::make_cuda_backend(0, true, {"fp32", "auto", "auto"}));
  ::unsetenv("ZT_CUDA_ATTENTION");
  REQUIRE(flag_fp32 != nullptr);
  const auto flag_forced_fp32 = run(*flag_fp32);
  for (size_t k = 0; k < 2; ++k) {
    INFO((k == 0 ? "out" : "dqkv"));
    // bf16 mode with ZT_CUDA_ATTENTION=fp32 runs the fp32 kernels: the fp32 mode's bits.
    CHECK(std::memcmp(forced_fp32[k].data(), fp32_result[k].data(), fp32_result[k].size() * sizeof(float)) == 0);
    CHECK(std::memcmp(flag_forced_fp32[k].data(), fp32_result[k].data(), fp32_result[k].size() * sizeof(float)) == 0);
    // The tensor-core kernels are another computation (bf16 products) of nearly the same values, bitwise repeatable.
    CHECK(std::memcmp(tc_result[k].data(), fp32_result[k].data(), fp32_result[k].size() * sizeof(float)) != 0);
    expect_close("tensor cores vs fp32", tc_result[k], fp32_result[k], kBf16Attention);
    CHECK(std::memcmp(tc_result[k].data(), tc_again[k].data(), tc_result[k].size() * sizeof(float)) == 0);
    expect_close("capped dK/dV kernel vs default", tc_capped[k], tc_result[k], kF32);
  }
}

TEST_CASE("gelu, residual and accumulate match the CPU", "[cuda][gelu][residual]") {
  const bool bf16 = GENERATE(false, true);
  auto rng = seeded_rng();
  auto be = cuda_backend(bf16);
  for (int trial = 0; trial < 4; ++trial) {
    const size_t n = size_t(uniform_int(rng, 1, 20000));
    INFO("bf16=" << bf16 << " n=" << n);
    VecF x = uniform(rng, n, -6, 6);
    x[0] = -30.0f;  // deep in the tails, where 1 + tanh cancels and exp must stay finite
    if (n > 1) x[1] = 30.0f;
    const VecF y = uniform(rng, n, -1, 1);
    VecF gelu_ref(n), dinp_ref(n), sum_ref(n);
    cpu::gelu_forward(gelu_ref.data(), x.data(), n);
    cpu::gelu_backward(dinp_ref.data(), x.data(), y.data(), n);
    cpu::residual_forward(sum_ref.data(), x.data(), y.data(), n);

    DeviceArray d_x(*be, n), d_y(*be, n), d_out(*be, n, 1), d_dinp(*be, n), d_sum(*be, n);
    d_x.upload(x);
    d_y.upload(y);  // d_dinp stays poisoned: gelu_backward writes it
    be->gelu_forward(d_out.get(), d_x.get(), n);
    expect_close("gelu out", d_out.download(), gelu_ref, kF32);
    be->gelu_backward(d_dinp.get(), d_x.get(), d_y.get(), n);
    expect_close("gelu dinp", d_dinp.download(), dinp_ref, kF32);
    be->residual_forward(d_sum.get(), d_x.get(), d_y.get(), n);
    expect_close("residual out", d_sum.download(), sum_ref, kExact);
    be->accumulate(d_x.get(), d_y.get(), n);
    expect_close("accumulate", d_x.download(), sum_ref, kExact);
  }
}

TEST_CASE("softmax_cross_entropy matches the CPU and rejects a bad target", "[cuda][softmax_cross_entropy]") {
  const bool bf16 = GENERATE(false, true);
  auto rng = seeded_rng();
  auto be = cuda_backend(bf16);
  for (int trial = 0; trial < 6; ++trial) {
    const int N = uniform_int(rng, 1, 64), V = uniform_int(rng, 1, trial < 3 ? 300 : 5000);
    const int Vp = (V + 127) / 128 * 128;
    const float dloss = std::uniform_real_distribution<float>(0.01f, 2.0f)(rng);
    INFO("bf16=" << bf16 << " N=" << N << " V=" << V << " Vp=" << Vp << " dloss=" << dloss);
    const VecF logits = uniform(rng, size_t(N) * Vp, -8, 8);  // padded columns hold garbage, never read
    const VecI targets = random_tokens(rng, size_t(N), V);
    VecF grad_ref(logits), losses_ref(static_cast<size_t>(N));
    cpu::softmax_cross_entropy(grad_ref.data(), losses_ref.data(), targets.data(), N, V, Vp, dloss);

    DeviceTokens d_targets(*be, targets);
    DeviceArray d_logits(*be, logits.size()), d_losses(*be, size_t(N));
    d_logits.upload(logits);
    be->softmax_cross_entropy(d_logits.get(), d_losses.get(), d_targets.get(), N, V, Vp, dloss);
    expect_close("softmax_cross_entropy losses", d_losses.download(), losses_ref, kF32);
    expect_close("softmax_cross_entropy dlogits", d_logits.download(), grad_ref, kF32);
  }
  // A target outside [0, V) cannot throw inside a kernel: the next synchronize reports it, then the backend works.
  VecI bad = {0, 300};
  DeviceTokens d_bad(*be, bad);
  DeviceArray d_logits(*be, 2 * 128), d_losses(*be, 2);
  d_logits.upload(VecF(2 * 128, 0.5f));
  be->softmax_cross_entropy(d_logits.get(), d_losses.get(), d_bad.get(), 2, 100, 128, 1.0f);
  CHECK_THROWS_AS(be->synchronize(), zt::Error);
  CHECK_NOTHROW(be->synchronize());
}

TEST_CASE("adamw_update matches the CPU bit for bit", "[cuda][adamw]") {
  const bool bf16 = GENERATE(false, true);
  auto rng = seeded_rng();
  auto be = cuda_backend(bf16);
  for (int trial = 0; trial < 4; ++trial) {
    const size_t n = size_t(uniform_int(rng, 1, 50000));
    const float lr = std::uniform_real_distribution<float>(1e-5f, 1e-2f)(rng);
    const float wd = trial % 2 == 0 ? 0.0f : 0.1f, grad_scale = trial < 2 ? 1.0f : 0.37f;
    const int64_t step = uniform_int(rng, 1, 2000);
    INFO("bf16=" << bf16 << " n=" << n << " lr=" << lr << " wd=" << wd << " grad_scale=" << grad_scale
                 << " step=" << step);
    VecF param = uniform(rng, n, -1, 1), m = uniform(rng, n, -0.1f, 0.1f), v = uniform(rng, n, 0, 0.01f);
    const VecF grad = uniform(rng, n, -1, 1);
    DeviceArray d_p(*be, n), d_g(*be, n), d_m(*be, n), d_v(*be, n);
    d_p.upload(param);
    d_g.upload(grad);
    d_m.upload(m);
    d_v.upload(v);
    cpu::adamw_update(param.data(), grad.data(), m.data(), v.data(), n, lr, 0.9f, 0.95f, 1e-8f, wd, grad_scale, step);
    be->adamw_update(d_p.get(), d_g.get(), d_m.get(), d_v.get(), n, lr, 0.9f, 0.95f, 1e-8f, wd, grad_scale, step);
    expect_close("adamw param", d_p.download(), param, kExact);
    expect_close("adamw m", d_m.download(), m, kExact);
    expect_close("adamw v", d_v.download(), v, kExact);
  }
  DeviceArray d(*be, 4);
  CHECK_THROWS_AS(be->adamw_update(d.get(), d.get(), d.get(), d.get(), 4, 1e-3f, 0.9f, 0.95f, 1e-8f, 0, 1, 0),
                  zt::Error);
}

TEST_CASE("squared_norm matches the CPU and repeats bit for bit", "[cuda][squared_norm]") {
  auto rng = seeded_rng();
  auto be = cuda_backend(false);
  for (int trial = 0; trial < 5; ++trial) {
    const size_t n = trial == 0 ? 0 : size_t(uniform_int(rng, 1, 600000));
    INFO("n=" << n);
    const VecF x = uniform(rng, n, -3, 3);
    DeviceArray d_x(*be, n);
    d_x.upload(x);
    const double ref = cpu::squared_norm(x.data(), n);
    const double got = be->squared_norm(d_x.get(), n);
    INFO("got " << got << ", CPU " << ref);
    CHECK(std::fabs(got - ref) <= kDouble.rel * std::fabs(ref));
    const double again = be->squared_norm(d_x.get(), n);
    CHECK(std::memcmp(&got, &again, sizeof(got)) == 0);
  }
}

TEST_CASE("backward ops repeat bit for bit (no atomics)", "[cuda][determinism]") {
  auto rng = seeded_rng();
  auto be = cuda_backend(false);
  const int B = 3, T = 67, NH = 3, hs = 64, C = NH * hs, N = B * T, V = 11;
  const VecI tokens = random_tokens(rng, size_t(N), V);
  const VecF qkv = uniform(rng, size_t(N) * 3 * C, -1, 1), dout = uniform(rng, size_t(N) * C, -1, 1);
  const VecF inp = uniform(rng, size_t(N) * C, -1, 1), weight = uniform(rng, size_t(C), -1, 1);
  DeviceTokens d_tokens(*be, tokens);
  DeviceArray d_qkv(*be, qkv.size()), d_dout(*be, dout.size()), d_inp(*be, inp.size()), d_w(*be, size_t(C));
  DeviceArray d_out(*be, dout.size()), d_att(*be, be->attention_state_elems(B, T, C, NH)), d_mean(*be, size_t(N)),
      d_rstd(*be, size_t(N));
  d_qkv.upload(qkv);
  d_dout.upload(dout);
  d_inp.upload(inp);
  d_w.upload(weight);
  be->attention_forward(d_out.get(), d_att.get(), d_qkv.get(), B, T, C, NH);
  be->layernorm_forward(d_out.get(), d_mean.get(), d_rstd.get(), d_inp.get(), d_w.get(), d_w.get(), N, C);
  std::vector<VecF> runs[2];
  for (auto& run : runs) {
    DeviceArray d_dqkv(*be, qkv.size()), d_dinp(*be, inp.size()), d_dw(*be, size_t(C)), d_db(*be, size_t(C));
    DeviceArray d_dinp_mm(*be, inp.size()), d_dwte(*be, size_t(V) * C), d_dwpe(*be, size_t(T) * C);
    be->zero(d_dinp.get(), inp.size());
    be->zero(d_dw.get(), size_t(C));
    be->zero(d_db.get(), size_t(C));
    be->zero(d_dwte.get(), size_t(V) * C);
    be->zero(d_dwpe.get(), size_t(T) * C);
    be->attention_backward(d_dqkv.get(), d_dout.get(), d_qkv.get(), d_att.get(), B, T, C, NH);
    be->layernorm_backward(d_dinp.get(), d_dw.get(), d_db.get(), d_dout.get(), d_inp.get(), d_w.get(), d_mean.get(),
                           d_rstd.get(), N, C);
    be->matmul_backward(d_dinp_mm.get(), d_dw.get(), d_db.get(), d_dout.get(), d_inp.get(), d_w.get(), N, C, 1, false);
    be->embedding_backward(d_dwte.get(), d_dwpe.get(), d_dout.get(), d_tokens.get(), B, T, C);
    for (DeviceArray* d : {&d_dqkv, &d_dinp, &d_dinp_mm, &d_dw, &d_db, &d_dwte, &d_dwpe}) run.push_back(d->download());
  }
  for (size_t k = 0; k < runs[0].size(); ++k) {
    INFO("output " << k << " of the backward ops");
    CHECK(std::memcmp(runs[0][k].data(), runs[1][k].data(), runs[0][k].size() * sizeof(float)) == 0);
  }
}

TEST_CASE(
    "bf16 parameter and activation copies: AdamW and the forward ops keep them current, matmuls read them, same "
    "bits as rounding per call",
    "[cuda][copies]") {
  const zt::ParamTable table(zt::model_preset("tiny"));
  const int B = 2, T = 32, steps = 3;
  auto rng = seeded_rng();
  const VecI inputs = random_tokens(rng, size_t(B) * T, table.config().vocab);
  const VecI targets = random_tokens(rng, size_t(B) * T, table.config().vocab);
  // Losses and final parameters of `steps` steps of forward, backward and AdamW over whole units.
  auto train = [&](zt::Backend& be) {
    FlatUnits units(be, table, 99);
    zt::Gpt2 model(table, be, B, T);
    std::vector<float*> m, v;
    for (size_t u = 0; u < units.n_units(); ++u) {
      m.push_back(be.alloc(units.numel(int(u))));
      v.push_back(be.alloc(units.numel(int(u))));
    }
    std::vector<VecF> result;
    VecF losses;
    for (int step = 1; step <= steps; ++step) {
      units.start_micro_step();
      losses.push_back(float(model.step(units, inputs.data(), targets.data(), true, 1.0f / float(B * T))));
      for (size_t u = 0; u < units.n_units(); ++u)
        be.adamw_update(units.params(int(u)), units.grads(int(u)), m[u], v[u], units.numel(int(u)), 1e-2f, 0.9f, 0.95f,
                        1e-8f, 0.1f, 1.0f, step);
    }
    result.push_back(losses);
    for (size_t u = 0; u < units.n_units(); ++u) {
      VecF p(units.numel(int(u)));
      be.to_host(p.data(), units.params(int(u)), p.size());
      result.push_back(p);
      be.release(m[u]);
      be.release(v[u]);
    }
    return result;
  };
  auto with_copies = cuda_backend(true);
  REQUIRE(with_copies->param_copy_bytes() == 2);
  const EnvBackend per_call = bf16_backend_with_env("ZT_CUDA_PARAM_COPY", "0", "yes");
  CHECK(per_call.backend->param_copy_bytes() == 0);
  CHECK_THAT(per_call.bad_value_error, Catch::Contains("ZT_CUDA_PARAM_COPY=yes: expected 1 (default) or 0"));
  CHECK(cuda_backend(false)->param_copy_bytes() == 0);  // fp32 mode reads the fp32 weights
  // --cuda_param_copy (CudaVariants) decides when given: off without the variable, on against ZT_CUDA_PARAM_COPY=0.
  CHECK(zt::make_cuda_backend(0, true, {"auto", "auto", "off"})->param_copy_bytes() == 0);
  ::setenv("ZT_CUDA_PARAM_COPY", "0", 1);
  const size_t flag_on_bytes = zt::make_cuda_backend(0, true, {"auto", "auto", "on"})->param_copy_bytes();
  ::unsetenv("ZT_CUDA_PARAM_COPY");
  CHECK(flag_on_bytes == 2);

  const auto a = train(*with_copies), b = train(*per_call.backend);
  REQUIRE(a.size() == b.size());
  for (size_t k = 0; k < a.size(); ++k) {
    INFO((k == 0 ? std::string("losses") : "unit " + std::to_string(k - 1) + " parameters"));
    CHECK(std::memcmp(a[k].data(), b[k].data(), a[k].size() * sizeof(float)) == 0);
  }
  // Activation copies (keep_activation_copy, which the model above asks for on every matmul operand): the op that
  // writes a kept range writes its copy, and the matmul reads the copy. Shown by breaking the contract on purpose:
  // after layernorm_forward (or gelu_backward) the fp32 buffer is overwritten behind the backend's back; a matmul
  // over a kept range still multiplies that op's output, one over an unkept range multiplies what was written last.
  {
    const int N = 32, C = 64, OC = 48;
    const VecF x = uniform(rng, size_t(N) * C, -2, 2), gamma = uniform(rng, size_t(C), 0.5f, 1.5f),
               beta = uniform(rng, size_t(C), -1, 1), w = uniform(rng, size_t(C) * OC, -1, 1),
               other = uniform(rng, size_t(N) * C, -1, 1);
    // keep: 0 no copy, 1 a copy beside the fp32 values, 2 a copy only (fp32_read false, as the model's LayerNorm,
    // attention and GELU outputs). Returns the product, and how many fp32 LayerNorm outputs are still NaN (unwritten).
    auto ln_matmul = [&](zt::Backend& be, int keep, bool overwrite) {
      DeviceArray d_x(be, x.size()), d_g(be, gamma.size()), d_b(be, beta.size()), d_ln(be, x.size());
      DeviceArray d_mean(be, size_t(N)), d_rstd(be, size_t(N)), d_w(be, w.size()), d_out(be, size_t(N) * OC);
      d_x.upload(x);
      d_g.upload(gamma);
      d_b.upload(beta);
      d_w.upload(w);
      if (keep > 0) be.keep_activation_copy(d_ln.get(), x.size(), keep == 1);
      be.layernorm_forward(d_ln.get(), d_mean.get(), d_rstd.get(), d_x.get(), d_g.get(), d_b.get(), N, C);
      const VecF ln = d_ln.download();
      if (overwrite) d_ln.upload(other);
      be.matmul_forward(d_out.get(), d_ln.get(), d_w.get(), nullptr, N, C, OC, false);
      return std::make_pair(d_out.download(),
                            size_t(std::count_if(ln.begin(), ln.end(), [](float v) { return std::isnan(v); })));
    };
    auto ln_then_matmul = [&](zt::Backend& be, bool keep, bool overwrite) {
      return ln_matmul(be, keep ? 1 : 0, overwrite).first;
    };
    {
      // Copy only: the fp32 buffer keeps its NaN poison and the product is the same; without copies every fp32
      // element is written as always.
      const VecF honest = ln_then_matmul(*per_call.backend, false, false);
      const auto kept = ln_matmul(*with_copies, 2, false), unkept = ln_matmul(*per_call.backend, 2, false);
      CHECK(std::memcmp(kept.first.data(), honest.data(), honest.size() * sizeof(float)) == 0);
      CHECK(kept.second == x.size());
      CHECK(std::memcmp(unkept.first.data(), honest.data(), honest.size() * sizeof(float)) == 0);
      CHECK(unkept.second == 0);
    }
    // An output gradient likewise: gelu_backward writes the copy, matmul_backward reads it as dout.
    const VecF pre = uniform(rng, size_t(N) * OC, -3, 3), up = uniform(rng, size_t(N) * OC, -1, 1),
               other_grad = uniform(rng, size_t(N) * OC, -1, 1);
    auto gelu_then_backward = [&](zt::Backend& be, bool keep, bool overwrite) {
      DeviceArray d_pre(be, pre.size()), d_up(be, up.size()), d_grad(be, pre.size()), d_x(be, x.size());
      DeviceArray d_w(be, w.size()), d_dx(be, x.size()), d_dw(be, w.size());
      d_pre.upload(pre);
      d_up.upload(up);
      d_x.upload(x);
      d_w.upload(w);
      be.zero(d_dw.get(), w.size());
      if (keep) be.keep_activation_copy(d_grad.get(), pre.size(), true);
      be.gelu_backward(d_grad.get(), d_pre.get(), d_up.get(), pre.size());
      if (overwrite) d_grad.upload(other_grad);
      be.matmul_backward(d_dx.get(), d_dw.get(), nullptr, d_grad.get(), d_x.get(), d_w.get(), N, C, OC, false);
      VecF result = d_dx.download(), dw = d_dw.download();
      result.insert(result.end(), dw.begin(), dw.end());
      return result;
    };
    for (const auto& run : {std::function<VecF(zt::Backend&, bool, bool)>(ln_then_matmul),
                            std::function<VecF(zt::Backend&, bool, bool)>(gelu_then_backward)}) {
      const VecF honest = run(*per_call.backend, false, false);
      const VecF from_copy = run(*with_copies, true, true);
      const VecF unkept = run(*with_copies, false, true);
      CHECK(std::memcmp(from_copy.data(), honest.data(), honest.size() * sizeof(float)) == 0);
      CHECK(std::memcmp(unkept.data(), honest.data(), honest.size() * sizeof(float)) != 0);
    }
  }
  // The contract's errors: a refresh outside kept memory, a second keep of an overlapping range.
  DeviceArray d(*with_copies, 64);
  with_copies->keep_param_copy(d.get(), 32);
  CHECK_THROWS_WITH(with_copies->keep_param_copy(d.get() + 16, 32), Catch::Contains("overlaps a range already kept"));
  CHECK_THROWS_WITH(with_copies->keep_activation_copy(d.get() + 30, 8, false),
                    Catch::Contains("overlaps a range already kept"));
  // An op on a range that covers kept memory in part would leave the copy stale: refused, naming the range.
  CHECK_THROWS_WITH(with_copies->zero(d.get() + 24, 16), Catch::Contains("overlaps a bf16 copy's range"));
  CHECK_THROWS_WITH(with_copies->gelu_forward(d.get() + 24, d.get() + 40, 16),
                    Catch::Contains("is not inside a kept range"));
  CHECK_THROWS_WITH(with_copies->refresh_param_copy(d.get() + 16, 32), Catch::Contains("is not inside a kept range"));
  with_copies->refresh_param_copy(d.get() + 8, 24);
}

namespace {

// One GPT-2 step (random tokens, parameters from one seed) on the CPU and on CUDA, checked against each other when
// it is made: the loss and every gradient within kF32Model / kBf16Model. The CUDA side stays, to step again.
struct CudaStep {
  CudaStep(const zt::ParamTable& table, int B, int T, bool bf16, std::mt19937_64& rng)
      : inputs(random_tokens(rng, size_t(B) * T, table.config().vocab)),
        targets(random_tokens(rng, size_t(B) * T, table.config().vocab)),
        dloss(1.0f / float(B * T)),
        init_seed(rng()),
        be(cuda_backend(bf16)),
        units(*be, table, init_seed),
        model(table, *be, B, T) {
    auto cpu_be = zt::make_cpu_backend(0);
    FlatUnits cpu_units(*cpu_be, table, init_seed);
    zt::Gpt2 cpu_model(table, *cpu_be, B, T);
    const double loss_ref = cpu_model.step(cpu_units, inputs.data(), targets.data(), true, dloss);
    loss = model.step(units, inputs.data(), targets.data(), true, dloss);
    const Tolerance tol = bf16 ? kBf16Model : kF32Model;
    INFO("loss " << loss << " vs CPU " << loss_ref);
    CHECK(std::fabs(loss - loss_ref) <= tol.rel * std::fabs(loss_ref));
    for (size_t u = 0; u < units.n_units(); ++u) {
      grads.push_back(units.grads_to_host(int(u)));
      expect_close("grads of unit " + table.units()[u].name, grads.back(), cpu_units.grads_to_host(int(u)), tol);
    }
  }
  const VecI inputs, targets;
  const float dloss;
  const uint64_t init_seed;
  std::unique_ptr<zt::Backend> be;
  FlatUnits units;
  zt::Gpt2 model;
  double loss = 0;
  std::vector<VecF> grads;  // the CUDA gradients of the step, per unit
};

}  // namespace

TEST_CASE("a whole GPT-2 step on CUDA matches the CPU: loss and every gradient", "[cuda][model]") {
  const bool bf16 = GENERATE(false, true);
  // Head size 16: at T = 32 (>= 16 + 1) att holds the attention output copy; at T = 12 the backward recomputes it.
  const int T = GENERATE(32, 12);
  auto rng = seeded_rng();
  zt::ModelConfig cfg;
  cfg.n_layer = 2;
  cfg.n_head = 4;
  cfg.d_model = 64;
  cfg.vocab = 200;  // padded to 256: the padded logits must get no probability
  cfg.seq_len = 32;
  const zt::ParamTable table(cfg);
  const int B = 3;
  INFO("bf16=" << bf16 << " B=" << B << " T=" << T);
  CudaStep step(table, B, T, bf16, rng);
  // The same step again gives the same bits: nothing in the step depends on timing.
  step.units.start_micro_step();
  const double loss_again = step.model.step(step.units, step.inputs.data(), step.targets.data(), true, step.dloss);
  CHECK(std::memcmp(&step.loss, &loss_again, sizeof(loss_again)) == 0);
  for (size_t u = 0; u < step.units.n_units(); ++u) {
    INFO("unit " << table.units()[u].name << " repeated");
    const VecF again = step.units.grads_to_host(int(u));
    CHECK(std::memcmp(again.data(), step.grads[u].data(), again.size() * sizeof(float)) == 0);
  }
}

// GPT-2 124M's shapes (d_model 768, 12 heads of 64, vocabulary 50257 padded to 50304, T = 1024) on 2 of its 12
// layers (the rest repeat them) and one sequence: the sizes the GPU check's throughput run first meets, which the
// small random sizes above do not reach (1024 x 50304 logits, 16 tiles of tensor-core attention per head). Hidden
// ([.]): run by the GPU check and by the simulator's CTest entry cuda_sim_gpt2_shapes. Same tolerances as above:
// the longer sums (768 and 3072 terms; a 50304-way softmax) stay far inside them.
TEST_CASE("GPT-2 124M shapes: one step on CUDA matches the CPU", "[.][gpt2]") {
  const bool bf16 = GENERATE(false, true);
  auto rng = seeded_rng();
  zt::ModelConfig cfg;
  cfg.n_layer = 2;
  cfg.n_head = 12;
  cfg.d_model = 768;
  cfg.vocab = 50257;
  cfg.seq_len = 1024;
  const zt::ParamTable table(cfg);
  INFO("bf16=" << bf16);
  CudaStep step(table, 1, 1024, bf16, rng);
}

namespace {

// Prints the names of the failed test cases last ("FAILED CASES: a; b"), so the GPU check's summary row says which
// ops failed without anyone reading the log.
struct FailedCaseLister : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  std::vector<std::string> failed;
  void testCaseEnded(const Catch::TestCaseStats& stats) override {
    if (stats.totals.assertions.failed > 0) failed.push_back(stats.testInfo.name);
  }
  void testRunEnded(const Catch::TestRunStats&) override {
    if (failed.empty()) return;
    std::string names;
    for (const auto& name : failed) names += (names.empty() ? "" : "; ") + name;
    std::printf("FAILED CASES: %s\n", names.c_str());
  }
};

}  // namespace

CATCH_REGISTER_LISTENER(FailedCaseLister)

int main(int argc, char** argv) {
  const int n_devices = zt::cuda_device_count();
  if (n_devices == 0) {
    std::printf("SKIPPED: no CUDA device\n");
    return 77;  // CTest's SKIP_RETURN_CODE for this test
  }
  std::printf("CUDA device 0: %s\n", zt::cuda_device_description(0).c_str());
  std::printf("random inputs from seed %llu (replay with ZT_TEST_SEED=%llu)\n", (unsigned long long)test_seed(),
              (unsigned long long)test_seed());
  std::fflush(stdout);
  return Catch::Session().run(argc, argv);
}
