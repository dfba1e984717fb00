// The backends the op tests (test/ops/test_backend_ops.cpp) run, each with how close to the CPU reference each op
// must come: a binary registers the backends it links, and every op test case runs once per registered backend.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "core/backend.hpp"
#include "test/test_util.hpp"

namespace zt::test {

// ---- tolerances against the CPU reference (rel: of each element, abs: of the tensor's largest value) ----

// The same operations in the same order as the CPU: one add per element (embedding forward, residual), sums that
// walk rows in the CPU's order (embedding backward), AdamW written with round-to-nearest intrinsics so nothing is
// contracted into an FMA. Anything but identical bits is a bug. The CPU backend and its decorators meet it for
// every op: they run the reference functions themselves.
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

/// How close each op's results must come to the CPU reference's; the defaults are the reference's own bits.
struct OpTolerances {
  Tolerance embedding = kExact;  ///< forward and backward
  Tolerance layernorm = kExact;  ///< out, mean, rstd, dinp, dweight, dbias (also of residual_layernorm_forward)
  Tolerance residual = kExact;   ///< residual_forward, accumulate, residual_layernorm_forward's sum
  Tolerance matmul = kExact;     ///< out, dinp, dweight
  Tolerance matmul_dbias = kExact;
  Tolerance attention = kExact;  ///< out and dqkv, at head sizes other than those below
  /// Head sizes the backend computes attention at in reduced precision (the CUDA tensor cores), to attention_reduced.
  std::vector<int> reduced_attention_head_sizes;
  Tolerance attention_reduced = kExact;
  Tolerance gelu = kExact;
  Tolerance softmax_cross_entropy = kExact;  ///< losses and dlogits
  Tolerance adamw = kExact;                  ///< param, m, v
  Tolerance squared_norm = kExact;           ///< rel only: a double
  Tolerance model_step = kExact;             ///< a whole GPT-2 step: the loss (rel only) and every gradient
};

/// One backend the op tests run: `make` gives a fresh one for each test case.
struct BackendUnderTest {
  std::string name;  ///< in every failure message, e.g. "cuda bf16"
  std::function<std::unique_ptr<Backend>()> make;
  OpTolerances tol;
  /// Empty: every op test case runs it; else only the cases whose name starts with one of these (a variant that
  /// changes nothing the other cases reach: they would repeat another entry's run).
  std::vector<std::string> only_cases = {};
};

/// Whether the running test case is one `backend` runs (BackendUnderTest::only_cases).
inline bool runs_current_case(const BackendUnderTest& backend) {
  if (backend.only_cases.empty()) return true;
  const std::string name = Catch::getResultCapture().getCurrentTestName();
  for (const std::string& prefix : backend.only_cases)
    if (name.compare(0, prefix.size(), prefix) == 0) return true;
  return false;
}

/// Every backend registered in this binary, in registration order.
inline std::vector<BackendUnderTest>& backends_under_test() {
  static std::vector<BackendUnderTest> all;
  return all;
}

/// Whether backend i runs in the current test case (the generator below skips the others).
inline bool runs_in_this_case(size_t i) { return runs_current_case(backends_under_test().at(i)); }

/// A static RegisterBackend in a source file of the test binary adds a backend to every op test case, e.g.
///   const zt::test::RegisterBackend cpu{{"cpu", [] { return zt::make_cpu_backend(0); }, {}}};
struct RegisterBackend {
  explicit RegisterBackend(BackendUnderTest backend) { backends_under_test().push_back(std::move(backend)); }
};

}  // namespace zt::test

/// Inside a test case: runs the rest of it once for each registered backend (a Catch2 generator), with `var` the
/// BackendUnderTest and its name in every failure message.
#define ZT_FOR_EACH_BACKEND(var)                                                                                      \
  const ::zt::test::BackendUnderTest& var = ::zt::test::backends_under_test().at(GENERATE(                            \
      ::Catch::Generators::filter(::zt::test::runs_in_this_case,                                                      \
                                  ::Catch::Generators::range(size_t(0), ::zt::test::backends_under_test().size())))); \
  INFO("backend: " << var.name)
