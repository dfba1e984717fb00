// The CUDA backend in the op tests (test/ops/test_backend_ops.cpp: every op against the CPU reference, whole GPT-2
// steps), in fp32 and in bf16 mode, at the tolerances below; and what only the CUDA backend has: the tensor-core
// attention and its switches, the bf16 parameter and activation copies. Exits 77 (CTest: skipped) with no device;
// built against the CUDA simulator as test_cuda_ops_sim.
#define CATCH_CONFIG_EXTERNAL_INTERFACES  // CATCH_REGISTER_LISTENER below needs the listener interfaces
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/backend.hpp"
#include "core/errors.hpp"
#include "core/flat_units.hpp"
#include "core/gpt2.hpp"
#include "core/model.hpp"
#include "cuda/cuda_backend.hpp"
#include "test/cuda/cuda_test_util.hpp"
#include "test/ops/backends_under_test.hpp"
#include "test/test_util.hpp"
#ifdef ZT_CUDA_SIM
#include "test/cuda_sim/sim_runtime.hpp"
#endif

using VecF = std::vector<float>;
using VecI = std::vector<int32_t>;
using zt::FlatUnits;
using zt::test::all_nan;
using zt::test::BackendArray;
using zt::test::cuda_backend;
using zt::test::cuda_backend_activations;
using zt::test::cuda_backend_epilogues;
using zt::test::expect_close;
using zt::test::kBf16Attention;
using zt::test::kF32;
using zt::test::MlpResult;
using zt::test::random_tokens;
using zt::test::run_mlp;
using zt::test::same_bits;
using zt::test::seeded_rng;
using zt::test::uniform;

namespace {

// fp32 mode: every op in fp32, matmuls in true fp32 (no TF32); the elementwise ops, the embedding and AdamW
// reproduce the CPU's arithmetic exactly. bf16 mode differs in the matmuls' operands and the tensor-core attention.
// epilogues (--cuda_epilogues on): GELU evaluated by cuBLASLt's epilogue (the tanh form, a few ulp from the CPU's
// sigmoid form: within kF32 and the product's own tolerance), and the bias gradient summed by the BGRAD epilogue
// from dout as the weight-gradient product reads it: in bf16 mode dout rounded to bf16 (2^-9 relative each), which
// puts dbias within kBf16Matmul like any bf16 product's output; in fp32 mode only the order of the sum changes.
zt::test::OpTolerances cuda_tolerances(bool bf16, bool epilogues = false) {
  zt::test::OpTolerances tol;
  tol.layernorm = kF32;
  tol.matmul = bf16 ? zt::test::kBf16Matmul : kF32;
  tol.matmul_dbias = bf16 && epilogues ? zt::test::kBf16Matmul : kF32;  // else a column sum of the fp32 dout
  tol.attention = kF32;
  if (bf16) {
    tol.reduced_attention_head_sizes = {32, 64};
    tol.attention_reduced = kBf16Attention;
  }
  tol.gelu = kF32;
  tol.softmax_cross_entropy = kF32;
  tol.squared_norm = zt::test::kDouble;
  tol.model_step = bf16 ? zt::test::kBf16Model : zt::test::kF32Model;
  return tol;
}

const zt::test::RegisterBackend cuda_fp32{{"cuda fp32", [] { return cuda_backend(false); }, cuda_tolerances(false)}};
const zt::test::RegisterBackend cuda_bf16{{"cuda bf16", [] { return cuda_backend(true); }, cuda_tolerances(true)}};
const zt::test::RegisterBackend cuda_fp32_epilogues{
    {"cuda fp32 epilogues", [] { return cuda_backend_epilogues(false, "on"); }, cuda_tolerances(false, true)}};
const zt::test::RegisterBackend cuda_bf16_epilogues{
    {"cuda bf16 epilogues", [] { return cuda_backend_epilogues(true, "on"); }, cuda_tolerances(true, true)}};
// --cuda_graphs on: the bf16 backend's kernels with the same arguments, so bf16's tolerances. Only the whole-model
// case: graphs hold micro-steps, and outside one every op runs at once, exactly as on "cuda bf16" (the op cases
// would repeat that entry's, at about 24 s of simulator time per thread order, 4x that under the sanitizers). The
// case steps twice: the first runs op by op, the second is captured and replayed, and must give the same bits.
const zt::test::RegisterBackend cuda_bf16_graphs{{"cuda bf16 graphs",
                                                  [] {
                                                    zt::CudaVariants v;
                                                    v.graphs = "on";
                                                    return zt::make_cuda_backend(0, true, v);
                                                  },
                                                  cuda_tolerances(true),
                                                  {"a whole GPT-2 step"}}};
// --cuda_attention fa2: attention_tc.cu's arithmetic in FlashAttention-2's layout, so "cuda bf16"'s tolerances.
std::unique_ptr<zt::Backend> cuda_backend_fa2(bool bf16) {
  return zt::make_cuda_backend(0, bf16, {"fa2", "auto", "auto", "auto", "auto"});
}
// Not under the sanitizers (test/run_tests.sh's ASan/UBSan pass), where every op test on it would cost about a minute
// of that pass's budget: there the fa2 kernels run in their own case below ("[fa2]", ~8 s both thread orders).
#ifndef __SANITIZE_ADDRESS__
const zt::test::RegisterBackend cuda_bf16_fa2{
    {"cuda bf16 fa2", [] { return cuda_backend_fa2(true); }, cuda_tolerances(true)}};
#endif

// --cuda_activations bf16: every activation buffer but the residual stream's held in bf16 only. The matmuls' inputs
// were bf16 copies already; the new roundings are of the products' outputs (qkv, the projections, the
// pre-activation, the logits, the input gradients: 2^-9 relative each, inside kBf16Matmul where a product's own
// error is) and of what kernels read from them, and the c_attn and c_fc bias gradients, column sums of dout held in
// bf16 (kBf16Matmul, as with the BGRAD epilogue). Only the model cases: the single-op cases never ask for a held
// range, so they would repeat "cuda bf16" (the held ranges' own cases are in test_cuda_activations.cpp).
zt::test::OpTolerances cuda_activations_tolerances() {
  zt::test::OpTolerances tol = cuda_tolerances(true);
  tol.matmul_dbias = zt::test::kBf16Matmul;
  return tol;
}
const zt::test::RegisterBackend cuda_bf16_activations{{"cuda bf16 activations",
                                                       [] { return cuda_backend_activations(true, "bf16"); },
                                                       cuda_activations_tolerances(),
                                                       {"a whole GPT-2 step"}}};
// --cuda_activations bf16_residual: the residual stream and its gradient rounded too (2L + 2 more roundings of the
// stream, 2L of its gradient's accumulation): still inside kBf16Model on two blocks.
const zt::test::RegisterBackend cuda_bf16_activations_residual{
    {"cuda bf16 activations residual",
     [] { return cuda_backend_activations(true, "bf16_residual"); },
     cuda_activations_tolerances(),
     {"a whole GPT-2 step"}}};

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

TEST_CASE(
    "bf16 attention runs on the tensor cores unless ZT_CUDA_ATTENTION=fp32; ZT_CUDA_ATTENTION_DKV_BLOCKS=3 agrees",
    "[cuda][attention]") {
  auto rng = seeded_rng();
  const int B = 2, T = 130, NH = 2, hs = 64, C = NH * hs;
  const size_t BT = size_t(B) * T;
  const VecF qkv = uniform(rng, BT * 3 * C, -1, 1), dout = uniform(rng, BT * C, -1, 1);
  // out and dqkv of one forward + backward from zero.
  auto run = [&](zt::Backend& be) {
    BackendArray d_qkv(be, qkv.size()), d_out(be, BT * C), d_att(be, be.attention_state_elems(B, T, C, NH)),
        d_dout(be, dout.size());
    BackendArray d_dqkv(be, qkv.size());
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
  CHECK_NOTHROW(flag_fp32 = zt::make_cuda_backend(0, true, {"fp32", "auto", "auto", "auto"}));
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
  CHECK(zt::make_cuda_backend(0, true, {"auto", "auto", "off", "auto"})->param_copy_bytes() == 0);
  ::setenv("ZT_CUDA_PARAM_COPY", "0", 1);
  const size_t flag_on_bytes = zt::make_cuda_backend(0, true, {"auto", "auto", "on", "auto"})->param_copy_bytes();
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
      BackendArray d_x(be, x.size()), d_g(be, gamma.size()), d_b(be, beta.size()), d_ln(be, x.size());
      BackendArray d_mean(be, size_t(N)), d_rstd(be, size_t(N)), d_w(be, w.size()), d_out(be, size_t(N) * OC);
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
      BackendArray d_pre(be, pre.size()), d_up(be, up.size()), d_grad(be, pre.size()), d_x(be, x.size());
      BackendArray d_w(be, w.size()), d_dx(be, x.size()), d_dw(be, w.size());
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
  BackendArray d(*with_copies, 64);
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

// The switch itself: which epilogue ran is seen in what it leaves (dact unwritten, GELU computed by another formula);
// the products it does not change give the same bits on the simulator, whose cuBLASLt computes every epilogue's
// product alike (on a GPU another kernel may sum in another order: there, within kF32). A width cuBLASLt cannot
// fold (its GELU aux matrix needs a leading dimension that is a multiple of 8) falls back to the separate kernels.
TEST_CASE(
    "cuda_epilogues on: GELU, GELU' and the bias gradients folded into the products, with a fallback where they cannot "
    "be",
    "[cuda][epilogues]") {
  CHECK_THROWS_WITH(cuda_backend_epilogues(true, "yes"), Catch::Contains("--cuda_epilogues yes: expected auto, on"));
  const int N = 48, C = 40;
  for (const bool bf16 : {false, true}) {
    INFO((bf16 ? "bf16 mode" : "fp32 mode"));
    auto off = cuda_backend_epilogues(bf16, "off"), on = cuda_backend_epilogues(bf16, "on");
    const MlpResult a = run_mlp(*off, N, C, 160, 7), b = run_mlp(*on, N, C, 160, 7);
    CHECK(!all_nan(a.dact));
    CHECK(all_nan(b.dact));           // DGELU: the plain product was never written
    CHECK(!same_bits(a.out, b.out));  // cuBLASLt's GELU, not gelu.cu's
    // The same fp32 pre-activation goes into both GELUs (and GELU'): only the formula differs.
    expect_close("out", b.out, a.out, kF32);
    expect_close("dpre", b.dpre, a.dpre, kF32);
    expect_close("dbias", b.dbias, a.dbias, bf16 ? zt::test::kBf16Matmul : kF32);
#ifdef ZT_CUDA_SIM
    CHECK(same_bits(a.pre, b.pre));
    CHECK(same_bits(a.dweight, b.dweight));
#else
    expect_close("pre", b.pre, a.pre, kF32);
    expect_close("dweight", b.dweight, a.dweight, kF32);
#endif
    // Width 164: no GELU epilogue (the simulator refuses the aux leading dimension; a GPU may not), so the separate
    // kernels run and give their bits; the bias gradient is still folded into the weight-gradient product.
    const MlpResult c = run_mlp(*off, N, C, 164, 8), d = run_mlp(*on, N, C, 164, 8);
#ifdef ZT_CUDA_SIM
    CHECK(!all_nan(d.dact));
    const std::pair<const VecF*, const VecF*> unfused[] = {
        {&c.pre, &d.pre}, {&c.out, &d.out}, {&c.dpre, &d.dpre}, {&c.dweight, &d.dweight}};
    for (const auto& [x, y] : unfused) CHECK(same_bits(*x, *y));
#endif
    expect_close("fallback out", d.out, c.out, kF32);
    expect_close("fallback dbias", d.dbias, c.dbias, bf16 ? zt::test::kBf16Matmul : kF32);
  }
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
  zt::test::test_seed();  // printed before the first case
  return zt::test::run_catch(argc, argv);
}

namespace {

// out, dqkv and the row statistics (lse) of one attention forward + backward on `be`, from inputs in [-1, 1].
std::vector<VecF> attention_round_trip(zt::Backend& be, int B, int T, int NH, int hs) {
  auto rng = seeded_rng();
  const int C = NH * hs;
  const size_t BT = size_t(B) * T;
  const VecF qkv = uniform(rng, BT * 3 * C, -1, 1), dout = uniform(rng, BT * C, -1, 1);
  BackendArray d_qkv(be, qkv.size()), d_out(be, BT * C), d_att(be, be.attention_state_elems(B, T, C, NH)),
      d_dout(be, dout.size()), d_dqkv(be, qkv.size());
  d_qkv.upload(qkv);
  d_dout.upload(dout);
  be.attention_forward(d_out.get(), d_att.get(), d_qkv.get(), B, T, C, NH);
  be.attention_backward(d_dqkv.get(), d_dout.get(), d_qkv.get(), d_att.get(), B, T, C, NH);
  VecF lse = d_att.download();
  lse.resize(size_t(B) * NH * T);
  return {d_out.download(), d_dqkv.download(), lse};
}

// The loss (as the float it rounds to) and every gradient of one GPT-2 step with head size 64 (1 layer, 2 heads, T 80:
// a partial 64-row tile) on `be`.
std::vector<VecF> model_step_hs64(zt::Backend& be) {
  zt::ModelConfig cfg = zt::model_preset("tiny");
  cfg.n_layer = 1;
  cfg.n_head = 2;
  cfg.d_model = 128;
  cfg.seq_len = 80;
  const zt::ParamTable table(cfg);
  auto rng = seeded_rng();
  const VecI inputs = random_tokens(rng, size_t(cfg.seq_len), cfg.vocab);
  const VecI targets = random_tokens(rng, size_t(cfg.seq_len), cfg.vocab);
  FlatUnits units(be, table, 7);
  zt::Gpt2 model(table, be, 1, cfg.seq_len);
  std::vector<VecF> result{{float(model.step(units, inputs.data(), targets.data(), true, 1.0f / float(cfg.seq_len)))}};
  for (size_t u = 0; u < units.n_units(); ++u) result.push_back(units.grads_to_host(int(u)));
  return result;
}

}  // namespace

// The fa2 kernels sum every product in attention_tc.cu's order and skip only products the mask makes zero, so they
// give the tensor-core kernels' bits on the simulator. On a GPU ptxas may contract a multiply-add differently in the
// two (kF32, as for the capped dK/dV kernel). Shapes: T past a 128-row tile and not a multiple of 64; T below one
// tile and below hs + 1 (the backward recomputes the output); several heads and batches.
TEST_CASE("fa2 attention gives the tensor-core kernels' results; fp32 mode and other head sizes fall back",
          "[cuda][attention][fa2]") {
  auto tc_mode = cuda_backend(true);
  auto fa2_mode = cuda_backend_fa2(true);
  const struct { int B, T, NH; } shapes[] = {{1, 200, 1}, {2, 37, 3}};
  for (const auto& s : shapes) {
    INFO("B " << s.B << " T " << s.T << " NH " << s.NH);
#ifdef ZT_CUDA_SIM
    const int fa2_launches = zt_sim::launch_count("fa2");
#endif
    const auto fa2 = attention_round_trip(*fa2_mode, s.B, s.T, s.NH, 64);
#ifdef ZT_CUDA_SIM
    CHECK(zt_sim::launch_count("fa2") == fa2_launches + (s.T < 65 ? 4 : 3));  // + the backward's recomputed forward
#endif
    const auto tc = attention_round_trip(*tc_mode, s.B, s.T, s.NH, 64);
    for (size_t k = 0; k < tc.size(); ++k) {
      INFO((k == 0 ? "out" : k == 1 ? "dqkv" : "lse"));
#ifdef ZT_CUDA_SIM
      CHECK(same_bits(fa2[k], tc[k]));
#else
      expect_close("fa2 vs tensor cores", fa2[k], tc[k], kF32);
#endif
    }
  }
  // A whole step (the model's use of att and of the kept bf16 copies): the loss and every gradient.
  const auto fa2_step = model_step_hs64(*fa2_mode), tc_step = model_step_hs64(*tc_mode);
  for (size_t u = 0; u < tc_step.size(); ++u) {
    INFO("model step, " << (u == 0 ? "loss" : "gradients of unit " + std::to_string(u - 1)));
#ifdef ZT_CUDA_SIM
    CHECK(same_bits(fa2_step[u], tc_step[u]));
#else
    expect_close("fa2 vs tensor cores", fa2_step[u], tc_step[u], zt::test::kF32Model);
#endif
  }
  // fp32 mode runs its fp32 kernels whatever the switch; head size 32 runs the tensor-core kernels (one log line).
  auto fp32_fa2 = cuda_backend_fa2(false);
  auto fp32_mode = cuda_backend(false);
  const auto a = attention_round_trip(*fp32_fa2, 2, 40, 2, 64), b = attention_round_trip(*fp32_mode, 2, 40, 2, 64);
  const auto c = attention_round_trip(*fa2_mode, 2, 40, 2, 32), d = attention_round_trip(*tc_mode, 2, 40, 2, 32);
  for (size_t k = 0; k < a.size(); ++k) {
    CHECK(same_bits(a[k], b[k]));
    CHECK(same_bits(c[k], d[k]));
  }
}
