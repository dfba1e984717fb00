// --cuda_activations bf16: ranges held in bf16 only (keep_activation_bf16) and the ops that write and read them, the
// GPT-2 step that holds every activation but the residual stream. Part of test_cuda_ops (and test_cuda_ops_sim).
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/backend.hpp"
#include "core/flat_units.hpp"
#include "core/gpt2.hpp"
#include "core/model.hpp"
#include "test/cuda/cuda_test_util.hpp"
#include "test/ops/backends_under_test.hpp"
#include "test/test_util.hpp"
#ifdef ZT_CUDA_SIM
#include "test/cuda_sim/sim_runtime.hpp"
#endif

namespace {

using VecF = std::vector<float>;
using VecI = std::vector<int32_t>;
using zt::FlatUnits;
using zt::test::BackendArray;
using zt::test::BackendTokens;
using zt::test::bf16_rounded;
using zt::test::cuda_backend;
using zt::test::cuda_backend_activations;
using zt::test::cuda_backend_epilogues;
using zt::test::expect_close;
using zt::test::kF32;
using zt::test::MlpHold;
using zt::test::MlpResult;
using zt::test::random_tokens;
using zt::test::read_range;
using zt::test::run_mlp;
using zt::test::same_bits;
using zt::test::seeded_rng;
using zt::test::uniform;

// A held output against the unheld op's fp32 one: on the simulator exactly its rounding (its cuBLASLt rounds a bf16
// D once from the fp32 sums an fp32 D would get); on a GPU a bf16-output kernel may sum in another order, so within
// one bf16 step (2^-8 relative, 2^-7 with margin) plus the fp32 sums' own kF32 difference.
void expect_rounded(const char* what, const VecF& held, const VecF& plain) {
#ifdef ZT_CUDA_SIM
  INFO(what);
  CHECK(same_bits(held, bf16_rounded(plain)));
#else
  expect_close(what, held, plain, zt::test::Tolerance{1.0 / 128, 1e-5});
#endif
}

// cuBLASLt products with a bf16 output so far (the simulator counts them; elsewhere 0): a product into a held range
// that took the fp32 fallback gives the same bits there, so only this tells the two apart.
int bf16_output_products() {
#ifdef ZT_CUDA_SIM
  return zt_sim::bf16_output_products();
#else
  return 0;
#endif
}
#ifdef ZT_CUDA_SIM
constexpr bool kCounted = true;
#else
constexpr bool kCounted = false;
#endif

}  // namespace

// What a range held in bf16 only (keep_activation_bf16) means: what is kept, written, copied or uploaded into it is
// rounded once, reads see the rounded values, and an op with no bf16 path is refused rather than reading nothing.
// Each op that writes one is compared with the same op on an unheld buffer ("cuda bf16"): the rounded bits exactly.
TEST_CASE("cuda_activations bf16: held ranges are written and read rounded; fp32-only ops are refused",
          "[cuda][activations]") {
  CHECK_THROWS_WITH(cuda_backend_activations(true, "fp16"), Catch::Contains("--cuda_activations fp16: expected auto"));
  CHECK_THROWS_WITH(cuda_backend_activations(false, "bf16"), Catch::Contains("needs --dtype bf16"));
  for (const char* off : {"auto", "fp32"}) {
    auto be = cuda_backend_activations(true, off);
    BackendArray a(*be, 8);
    CHECK(!be->keep_activation_bf16(a.get(), 8));
    CHECK(be->alloc_held_bf16(8) == nullptr);
  }
  auto rng = seeded_rng();
  auto plain = cuda_backend(true);
  auto held = cuda_backend_activations(true, "bf16");
  const int N = 24, C = 32;
  const size_t n = size_t(N) * C;
  const VecF x = uniform(rng, n, -3, 3), y = uniform(rng, n, -3, 3), w = uniform(rng, size_t(C) * C, -1, 1);
  {
    BackendArray h(*held, n), f(*held, n), d_w(*held, w.size());
    f.upload(y);
    d_w.upload(w);
    held->from_host(h.get(), x.data(), n);
    REQUIRE(held->keep_activation_bf16(h.get(), n));
    CHECK(same_bits(read_range(*held, h.get(), n), bf16_rounded(x)));  // what it held, rounded
    held->copy(h.get(), f.get(), n);
    CHECK(same_bits(read_range(*held, h.get(), n), bf16_rounded(y)));
    held->from_host(h.get(), x.data(), n);
    const VecF xr = bf16_rounded(x);
    CHECK(same_bits(read_range(*held, h.get() + 5, 9), VecF(xr.begin() + 5, xr.begin() + 14)));
    held->copy(f.get(), h.get(), n);
    CHECK(same_bits(f.download(), bf16_rounded(x)));
    CHECK_THROWS_WITH(held->keep_activation_bf16(h.get() + 4, 8), Catch::Contains("overlaps a range already kept"));
    VecF spill(n + 8);
    CHECK_THROWS_WITH(held->to_host(spill.data(), h.get(), n + 8), Catch::Contains("covers part of a range held"));
    CHECK_THROWS_WITH(held->residual_forward(f.get(), h.get(), f.get(), n), Catch::Contains("reads it in fp32 only"));
    CHECK_THROWS_WITH(held->residual_forward(h.get(), f.get(), f.get(), n), Catch::Contains("writes it in fp32 only"));
    // A LayerNorm's weight gradients are fp32 sums: never into a held range (the model's frozen ones have their own).
    BackendArray m(*held, size_t(N)), r(*held, size_t(N)), g(*held, size_t(C));
    CHECK_THROWS_WITH(
        held->layernorm_backward(f.get(), h.get(), g.get(), f.get(), f.get(), g.get(), m.get(), r.get(), N, C),
        Catch::Contains("writes it in fp32 only"));
  }
  {
    // A held region (alloc_held_bf16): zero at first, then the same semantics over all of it and any part of it, in
    // n bf16 values of device memory; its fp32 addresses are names only (reserved, inaccessible host addresses).
    const size_t used_before = zt::cuda_device_memory_used();
    float* region = held->alloc_held_bf16(2 * n);
    REQUIRE(region != nullptr);
    CHECK(zt::cuda_device_memory_used() - used_before == 2 * n * sizeof(uint16_t));
    CHECK(read_range(*held, region, 2 * n) == VecF(2 * n, 0.0f));
    held->from_host(region + n, x.data(), n);
    const VecF xr = bf16_rounded(x);
    CHECK(same_bits(read_range(*held, region + n, n), xr));
    CHECK(same_bits(read_range(*held, region + n + 3, 5), VecF(xr.begin() + 3, xr.begin() + 8)));
    held->zero(region + n, n / 2);
    VecF expect = xr;
    std::fill(expect.begin(), expect.begin() + long(n / 2), 0.0f);
    CHECK(same_bits(read_range(*held, region + n, n), expect));
    CHECK_THROWS_WITH(held->keep_activation_bf16(region + 4, 8), Catch::Contains("overlaps a range already kept"));
    BackendArray f(*held, n);
    CHECK_THROWS_WITH(held->residual_forward(f.get(), region, f.get(), n), Catch::Contains("reads it in fp32 only"));
    const size_t used_with = zt::cuda_device_memory_used();
    held->release(region);
    CHECK(used_with - zt::cuda_device_memory_used() == 2 * n * sizeof(uint16_t));
  }
  // Ops that write a held range: the fp32 result of the same op on an unheld buffer, rounded. The gradients then go
  // on into a matmul_backward, whose products read the same bf16 values either way (the same bits) and whose bias
  // gradient sums the held, rounded values (kF32 of the host's sum of them; the unheld run sums fp32 values).
  const int B = 2, T = 12, NH = 2, OC = 3 * C;
  const VecF qkv = uniform(rng, size_t(B) * T * OC, -1, 1), dout = uniform(rng, n, -1, 1),
             gamma = uniform(rng, size_t(C), 0.5f, 1.5f), beta = uniform(rng, size_t(C), -1, 1),
             w_qkv = uniform(rng, size_t(C) * OC, -1, 1);
  auto run = [&](zt::Backend& be, bool hold) {
    BackendArray d_x(be, n), d_g(be, size_t(C)), d_b(be, size_t(C)), d_mean(be, size_t(N)), d_rstd(be, size_t(N));
    BackendArray d_qkv(be, qkv.size()), d_att(be, be.attention_state_elems(B, T, C, NH)), d_dout(be, n);
    BackendArray d_wq(be, w_qkv.size()), d_dx(be, n), d_dw(be, w_qkv.size()), d_db(be, size_t(OC));
    BackendArray d_ln(be, n), d_atty(be, n), d_dqkv(be, qkv.size());
    d_x.upload(x);
    d_g.upload(gamma);
    d_b.upload(beta);
    d_qkv.upload(qkv);
    d_dout.upload(dout);
    d_wq.upload(w_qkv);
    be.zero(d_dw.get(), w_qkv.size());
    be.zero(d_db.get(), size_t(OC));
    if (hold)
      for (BackendArray* a : {&d_ln, &d_atty, &d_dqkv}) REQUIRE(be.keep_activation_bf16(a->get(), a->size()));
    be.layernorm_forward(d_ln.get(), d_mean.get(), d_rstd.get(), d_x.get(), d_g.get(), d_b.get(), N, C);
    be.attention_forward(d_atty.get(), d_att.get(), d_qkv.get(), B, T, C, NH);
    be.attention_backward(d_dqkv.get(), d_dout.get(), d_qkv.get(), d_att.get(), B, T, C, NH);
    be.matmul_backward(d_dx.get(), d_dw.get(), d_db.get(), d_dqkv.get(), d_ln.get(), d_wq.get(), N, C, OC, false);
    std::vector<VecF> r;
    for (BackendArray* a : {&d_ln, &d_atty, &d_dqkv}) r.push_back(read_range(be, a->get(), a->size()));
    for (BackendArray* a : {&d_dx, &d_dw, &d_db}) r.push_back(a->download());
    return r;
  };
  const auto a = run(*plain, false), b = run(*held, true);
  const char* names[] = {"layernorm out", "attention out", "dqkv", "dinp", "dweight"};
  for (size_t k = 0; k < 5; ++k) {
    INFO(names[k]);
    CHECK(same_bits(b[k], k < 3 ? bf16_rounded(a[k]) : a[k]));
  }
  VecF colsum(size_t(OC), 0.0f);
  for (int r = 0; r < N; ++r)
    for (int c = 0; c < OC; ++c) colsum[size_t(c)] += b[2][size_t(r) * OC + c];
  expect_close("dbias from the held dqkv", b[5], colsum, kF32);
  CHECK(!same_bits(b[5], a[5]));
  // The MLP's fused ops, epilogues off and on: the GELU output and dpre held, the rest the same bits (with the
  // epilogues on, the GELU epilogue's output and DGELU's product go to scratch and are rounded from there).
  for (const char* epilogues : {"off", "on"}) {
    INFO("--cuda_epilogues " << epilogues);
    auto unheld_mlp = cuda_backend_epilogues(true, epilogues);
    auto held_mlp = cuda_backend_activations(true, "bf16", epilogues);
    const MlpResult m = run_mlp(*unheld_mlp, N, C, 160, 9), h = run_mlp(*held_mlp, N, C, 160, 9, MlpHold::out_dpre);
    CHECK(same_bits(h.out, bf16_rounded(m.out)));
    CHECK(same_bits(h.dpre, bf16_rounded(m.dpre)));
    for (const auto& [u, v] :
         {std::pair(&m.pre, &h.pre), std::pair(&m.dweight, &h.dweight), std::pair(&m.dbias, &h.dbias)})
      CHECK(same_bits(*u, *v));
  }
}

// The whole step with every buffer the model offers held (epilogues off and on): the loss and gradients of "cuda
// bf16" within kBf16Model (the roundings of every product's output compound through the blocks, as the bf16
// operands' do against the CPU); every activation held but the residual stream's, in half its fp32 memory, and the
// copies the held buffers replace no longer allocated.
TEST_CASE("cuda_activations bf16: a GPT-2 step holds every activation but the residual stream, close to cuda bf16's",
          "[cuda][activations]") {
  const zt::ParamTable table(zt::test::two_block_model());
  const zt::ModelConfig& cfg = table.config();
  const int B = 2, T = 16;
  auto rng = seeded_rng();
  const VecI inputs = random_tokens(rng, size_t(B) * T, cfg.vocab),
             targets = random_tokens(rng, size_t(B) * T, cfg.vocab);
  struct Step {
    double loss;
    std::vector<VecF> grads;
    size_t copy_bytes, held_bytes, saved_bytes, model_device_bytes;
  };
  auto step = [&](zt::Backend& be, zt::Recompute recompute = zt::Recompute::none) {
    FlatUnits units(be, table, 5);
    const size_t before = zt::cuda_device_memory_used();
    zt::Gpt2 model(table, be, B, T, recompute);
    const size_t model_bytes = zt::cuda_device_memory_used() - before;  // its buffers and the backend's copies
    Step s{model.step(units, inputs.data(), targets.data(), true, 1.0f / float(B * T)),
           {},
           model.activation_copy_bytes(),
           model.activation_bf16_bytes(),
           model.held_bf16_saved_bytes(),
           model_bytes};
    for (size_t u = 0; u < units.n_units(); ++u) s.grads.push_back(units.grads_to_host(int(u)));
    return s;
  };
  const size_t BT = size_t(B) * T, C = size_t(cfg.d_model), L = size_t(cfg.n_layer), Vp = size_t(cfg.padded_vocab());
  for (const char* epilogues : {"off", "on"}) {
    INFO("--cuda_epilogues " << epilogues);
    auto plain = cuda_backend_epilogues(true, epilogues);
    auto held = cuda_backend_activations(true, "bf16", epilogues);
    const Step a = step(*plain);
    const int before = bf16_output_products();
    const Step b = step(*held);
    // Products into held ranges: per block qkv, the projection, the expansion (with GELU's output, epilogues on) and
    // the MLP's projection forward; dact (or, folded, dpre), d_ln twice and d_atty backward; the logits and d_lnf.
    if (kCounted) CHECK(bf16_output_products() - before == int(8 * L + 2));
    // The mean loss from bf16 logits: each token's loss moves by about 2^-9 of its logits' size (here within a few
    // units) with either sign, so the mean by well under 1e-2; a softmax of the wrong values moves it by O(1).
    CHECK(std::fabs(b.loss - a.loss) <= 1e-2);
    CHECK(b.loss != a.loss);  // the logits were rounded
    // Held, per block: ln_1, attention out, ln_2, the projections' outputs (C each), qkv (3C), the pre-activation
    // and GELU output (4C each); once: ln_f, d_lnf, d_ln, d_atty (C each), d_qkv (3C), d_fch, d_fch_gelu (4C each)
    // and the logits (Vp). Copies left: d_res's alone (read in fp32 by LayerNorm's backward).
    CHECK(b.held_bytes == BT * ((16 * L + 15) * C + Vp) * sizeof(float));
    CHECK(b.copy_bytes == BT * C * sizeof(uint16_t));
    CHECK(a.copy_bytes == BT * ((7 * L + 9) * C + Vp) * sizeof(uint16_t));
    CHECK(a.held_bytes == 0);
    // The held buffers take half their fp32 size, in memory of their own (alloc_held_bf16): what the model's
    // construction allocates falls by that half and by the copies no longer made (these sizes need no padding).
    CHECK(b.saved_bytes == b.held_bytes / 2);
    CHECK(a.saved_bytes == 0);
    CHECK(a.model_device_bytes - b.model_device_bytes == b.saved_bytes + (a.copy_bytes - b.copy_bytes));
    for (size_t u = 0; u < a.grads.size(); ++u) {
      INFO("unit " << table.units()[u].name);
      expect_close("gradient", b.grads[u], a.grads[u], zt::test::kBf16Model);
    }
  }
  {  // bf16_residual: the residual stream (encoded, res2, res3) and d_res held too; no copy left
    INFO("--cuda_activations bf16_residual");
    auto plain = cuda_backend(true);
    auto held = cuda_backend_activations(true, "bf16_residual");
    const Step a = step(*plain);
    const int before = bf16_output_products();
    const Step b = step(*held);
    if (kCounted) CHECK(bf16_output_products() - before == int(8 * L + 2));
    CHECK(std::fabs(b.loss - a.loss) <= 1e-2);
    CHECK(b.held_bytes == BT * ((18 * L + 17) * C + Vp) * sizeof(float));
    CHECK(b.copy_bytes == 0);
    CHECK(b.saved_bytes == b.held_bytes / 2);
    CHECK(a.model_device_bytes - b.model_device_bytes == b.saved_bytes + a.copy_bytes);
    for (size_t u = 0; u < a.grads.size(); ++u) {
      INFO("unit " << table.units()[u].name);
      expect_close("gradient", b.grads[u], a.grads[u], zt::test::kBf16Model);
    }
  }
  // Recomputation shares one set of buffers among the blocks (the held region then holds the shared set once): the
  // same closeness, and the same loss as without recomputation (the same ops again).
  for (const zt::Recompute recompute : {zt::Recompute::attention, zt::Recompute::block}) {
    INFO("--recompute " << zt::recompute_name(recompute));
    auto plain = cuda_backend(true);
    auto held = cuda_backend_activations(true, recompute == zt::Recompute::block ? "bf16_residual" : "bf16");
    const Step a = step(*plain, recompute), b = step(*held, recompute), c = step(*held);
    CHECK(b.loss == c.loss);
    CHECK(b.saved_bytes > 0);
    CHECK(b.model_device_bytes < a.model_device_bytes);
    for (size_t u = 0; u < a.grads.size(); ++u) {
      INFO("unit " << table.units()[u].name);
      expect_close("gradient", b.grads[u], a.grads[u], zt::test::kBf16Model);
      CHECK(same_bits(b.grads[u], c.grads[u]));
    }
  }
}

// The buffers products write and kernels read, held since the model holds every activation but the residual
// stream: a product into a held range (qkv, the projections, the logits, the input gradients) writes its output
// rounded once, with the bias in bf16; a kernel reading held values (the fused residual add's projection, LayerNorm's
// and GELU's gradients, the logits, attention's qkv and dO) gives, bit for bit, what it gives on fp32 buffers holding
// the same rounded values (the fp32 attention kernels of head size 16 read them widened; the tensor cores of head
// size 32 read them as they are). Both runs get the rounded values; only where they live differs.
TEST_CASE("cuda_activations bf16: products write held outputs once rounded; kernels read held inputs as their values",
          "[cuda][activations]") {
  auto rng = seeded_rng();
  const int N = 24, C = 32, OC = 48, V = 40, Vp = 64, B = 2, T = 12;
  const size_t n = size_t(N) * C;
  const VecF x = uniform(rng, n, -1, 1), w = uniform(rng, size_t(C) * OC, -1, 1),
             bias = bf16_rounded(uniform(rng, size_t(OC), -1, 1)), dout = uniform(rng, size_t(N) * OC, -1, 1),
             resid = uniform(rng, n, -2, 2), proj = bf16_rounded(uniform(rng, n, -2, 2)),
             gamma = uniform(rng, size_t(C), 0.5f, 1.5f), beta = uniform(rng, size_t(C), -1, 1),
             d_ln_in = bf16_rounded(uniform(rng, n, -1, 1)), pre = bf16_rounded(uniform(rng, n, -3, 3)),
             d_gelu_in = bf16_rounded(uniform(rng, n, -1, 1)),
             logits = bf16_rounded(uniform(rng, size_t(N) * Vp, -4, 4));
  const VecI targets = random_tokens(rng, size_t(N), V);
  const VecF att_qkv[2] = {bf16_rounded(uniform(rng, size_t(B) * T * 3 * C, -1, 1)),
                           bf16_rounded(uniform(rng, size_t(B) * T * 3 * C, -1, 1))},
             att_dout[2] = {bf16_rounded(uniform(rng, size_t(B) * T * C, -1, 1)),
                            bf16_rounded(uniform(rng, size_t(B) * T * C, -1, 1))};
  // Results in order; `held_out` marks the outputs that live in a held range in the held run.
  struct Results {
    std::vector<VecF> v;
    std::vector<bool> held_out;
    std::vector<const char*> names;
    void add(const char* name, VecF r, bool held) {
      names.push_back(name);
      v.push_back(std::move(r));
      held_out.push_back(held);
    }
  };
  auto run = [&](zt::Backend& be, bool hold) {
    Results r;
    auto keep = [&](std::initializer_list<const BackendArray*> arrays) {
      if (hold)
        for (const BackendArray* a : arrays) REQUIRE(be.keep_activation_bf16(a->get(), a->size()));
    };
    auto values = [&](const BackendArray& a, bool held) {
      return held && hold ? read_range(be, a.get(), a.size()) : a.download();
    };
    {  // products: W [C,OC] with a bias (c_attn's shape), W^T [OC,C] without one (the LM head's), the input gradient
      BackendArray d_x(be, n), d_w(be, w.size()), d_bias(be, bias.size()), d_out(be, size_t(N) * OC),
          d_out_t(be, size_t(N) * OC), d_w_t(be, w.size()), d_dout(be, dout.size()), d_dinp(be, n), d_dw(be, w.size()),
          d_db(be, bias.size());
      d_x.upload(x);
      d_w.upload(w);
      d_w_t.upload(w);
      d_bias.upload(bias);
      d_dout.upload(dout);
      be.zero(d_dw.get(), w.size());
      be.zero(d_db.get(), bias.size());
      keep({&d_out, &d_out_t, &d_dinp});
      be.matmul_forward(d_out.get(), d_x.get(), d_w.get(), d_bias.get(), N, C, OC, false);
      be.matmul_forward(d_out_t.get(), d_x.get(), d_w_t.get(), nullptr, N, C, OC, true);
      be.matmul_backward(d_dinp.get(), d_dw.get(), d_db.get(), d_dout.get(), d_x.get(), d_w.get(), N, C, OC, false);
      r.add("matmul out", values(d_out, true), true);
      r.add("matmul out, W transposed", values(d_out_t, true), true);
      r.add("matmul dinp", values(d_dinp, true), true);
      r.add("matmul dweight", d_dw.download(), false);
      r.add("matmul dbias", d_db.download(), false);
    }
    {  // the fused residual add reading a held projection; LayerNorm's backward reading a held dout
      BackendArray d_a(be, n), d_b(be, n), d_res(be, n), d_ln(be, n), d_mean(be, size_t(N)), d_rstd(be, size_t(N)),
          d_g(be, size_t(C)), d_be(be, size_t(C)), d_dln(be, n), d_dres(be, n), d_dg(be, size_t(C)),
          d_dbe(be, size_t(C));
      d_a.upload(resid);
      d_g.upload(gamma);
      d_be.upload(beta);
      keep({&d_b, &d_dln});
      be.from_host(d_b.get(), proj.data(), n);
      be.from_host(d_dln.get(), d_ln_in.data(), n);
      be.residual_layernorm_forward(d_res.get(), d_ln.get(), d_mean.get(), d_rstd.get(), d_a.get(), d_b.get(),
                                    d_g.get(), d_be.get(), N, C);
      be.zero(d_dres.get(), n);
      be.zero(d_dg.get(), size_t(C));
      be.zero(d_dbe.get(), size_t(C));
      be.layernorm_backward(d_dres.get(), d_dg.get(), d_dbe.get(), d_dln.get(), d_res.get(), d_g.get(), d_mean.get(),
                            d_rstd.get(), N, C);
      for (const auto& [name, a] :
           {std::pair("residual", &d_res), std::pair("layernorm out", &d_ln), std::pair("mean", &d_mean),
            std::pair("rstd", &d_rstd), std::pair("layernorm dinp", &d_dres), std::pair("layernorm dweight", &d_dg),
            std::pair("layernorm dbias", &d_dbe)})
        r.add(name, a->download(), false);
    }
    {  // GELU reading a held pre-activation and a held output gradient
      BackendArray d_pre(be, n), d_out(be, n), d_dout(be, n), d_dinp(be, n);
      keep({&d_pre, &d_dout});
      be.from_host(d_pre.get(), pre.data(), n);
      be.from_host(d_dout.get(), d_gelu_in.data(), n);
      be.gelu_forward(d_out.get(), d_pre.get(), n);
      be.gelu_backward(d_dinp.get(), d_pre.get(), d_dout.get(), n);
      r.add("gelu out", d_out.download(), false);
      r.add("gelu dinp", d_dinp.download(), false);
    }
    {  // the softmax reading held logits and replacing them with their gradient
      BackendArray d_logits(be, logits.size()), d_losses(be, size_t(N));
      const BackendTokens d_targets(be, targets);
      keep({&d_logits});
      be.from_host(d_logits.get(), logits.data(), logits.size());
      be.softmax_cross_entropy(d_logits.get(), d_losses.get(), d_targets.get(), N, V, Vp, 1.0f / float(N));
      r.add("losses", d_losses.download(), false);
      r.add("dlogits", values(d_logits, true), true);
    }
    for (const int NH : {2, 1}) {  // attention reading held qkv and dO: head size 16 (fp32 kernels), 32 (tensor cores)
      const VecF &qkv = att_qkv[NH - 1], &da = att_dout[NH - 1];
      BackendArray d_qkv(be, qkv.size()), d_att(be, be.attention_state_elems(B, T, C, NH)), d_out(be, da.size()),
          d_dout(be, da.size()), d_dqkv(be, qkv.size());
      keep({&d_qkv, &d_dout});
      be.from_host(d_qkv.get(), qkv.data(), qkv.size());
      be.from_host(d_dout.get(), da.data(), da.size());
      be.attention_forward(d_out.get(), d_att.get(), d_qkv.get(), B, T, C, NH);
      be.attention_backward(d_dqkv.get(), d_dout.get(), d_qkv.get(), d_att.get(), B, T, C, NH);
      r.add(NH == 2 ? "attention out, fp32 kernels" : "attention out, tensor cores", d_out.download(), false);
      r.add(NH == 2 ? "attention dqkv, fp32 kernels" : "attention dqkv, tensor cores", d_dqkv.download(), false);
    }
    return r;
  };
  auto plain = cuda_backend(true);
  auto held = cuda_backend_activations(true, "bf16");
  const int before = bf16_output_products();
  const Results a = run(*plain, false);
  const int between = bf16_output_products();
  const Results b = run(*held, true);
  if (kCounted) {  // the three products into held ranges wrote bf16 themselves; the unheld run wrote none
    CHECK(between == before);
    CHECK(bf16_output_products() - between == 3);
  }
  REQUIRE(a.v.size() == b.v.size());
  for (size_t k = 0; k < a.v.size(); ++k) {
    INFO(a.names[k]);
    if (!a.held_out[k]) {
      CHECK(same_bits(b.v[k], a.v[k]));
    } else if (std::string(a.names[k]) == "dlogits") {  // one kernel either way: exactly its rounding
      CHECK(same_bits(b.v[k], bf16_rounded(a.v[k])));
    } else {
      expect_rounded(a.names[k], b.v[k], a.v[k]);
    }
  }
}

// The MLP's fused ops with every buffer held (the pre-activation and dact too, as the model holds them): the products
// write them in bf16 (with the epilogues, GELU_AUX_BIAS writes both outputs in bf16 and DGELU reads the bf16
// pre-activation); the weight products read what they read unheld (the same bits), and the GELU outputs and dpre
// move only by the rounding of what they are computed from (GELU' <= 1.13; the relative error stays within 2^-7).
TEST_CASE("cuda_activations bf16: the MLP's fused ops with the pre-activation and dact held too",
          "[cuda][activations]") {
  const int N = 24, C = 32, H = 160;
  for (const char* epilogues : {"off", "on"}) {
    INFO("--cuda_epilogues " << epilogues);
    auto unheld = cuda_backend_epilogues(true, epilogues);
    auto held = cuda_backend_activations(true, "bf16", epilogues);
    const MlpResult m = run_mlp(*unheld, N, C, H, 11);
    const int before = bf16_output_products();
    const MlpResult h = run_mlp(*held, N, C, H, 11, MlpHold::all);
    // One bf16 product each way: the forward's (the pre-activation, or with the epilogues both outputs), and the
    // backward's input gradient (dact, or with the epilogues dpre).
    if (kCounted) CHECK(bf16_output_products() - before == 2);
    expect_rounded("pre", h.pre, m.pre);
    const bool fused = std::string(epilogues) == "on";
    if (fused) {
      expect_rounded("out", h.out, m.out);  // GELU of the unrounded product, rounded
    } else {
      expect_close("out", h.out, m.out, zt::test::Tolerance{1.0 / 128, 1e-3});
      expect_rounded("dact", h.dact, m.dact);  // the plain product into held dact
    }
    expect_close("dpre", h.dpre, m.dpre, zt::test::Tolerance{1.0 / 128, 1e-3});
    CHECK(same_bits(h.dweight, m.dweight));
    CHECK(same_bits(h.dbias, m.dbias));
  }
}

// --cuda_activations bf16_residual holds the residual stream and its gradient too: the fused residual add reading a
// held stream and writing a held sum (its LayerNorm then of the rounded sum, as stored), a LayerNorm reading a held
// input, LayerNorm's backward accumulating into a held gradient (read, added to, rounded), the embedding writing a
// held output and its backward reading a held gradient. Each against the fp32 ops on the same rounded values, bit
// for bit (the same kernels, the same arithmetic), its held outputs rounded.
TEST_CASE("cuda_activations bf16_residual: the residual stream's ops read and write it held", "[cuda][activations]") {
  CHECK_THROWS_WITH(cuda_backend_activations(false, "bf16_residual"), Catch::Contains("needs --dtype bf16"));
  CHECK(!cuda_backend_activations(true, "bf16")->holds_residual_bf16());
  auto rng = seeded_rng();
  auto plain = cuda_backend(true);
  auto held = cuda_backend_activations(true, "bf16_residual");
  CHECK(held->holds_residual_bf16());
  const int N = 24, C = 32, B = 2, T = 12, V = 50;
  const size_t n = size_t(N) * C;
  const VecF a = bf16_rounded(uniform(rng, n, -2, 2)), b = bf16_rounded(uniform(rng, n, -2, 2)),
             gamma = uniform(rng, size_t(C), 0.5f, 1.5f), beta = uniform(rng, size_t(C), -1, 1),
             dres0 = bf16_rounded(uniform(rng, n, -1, 1)), dln = bf16_rounded(uniform(rng, n, -1, 1)),
             wte = uniform(rng, size_t(V) * C, -1, 1), wpe = uniform(rng, size_t(T) * C, -1, 1),
             demb = bf16_rounded(uniform(rng, size_t(B) * T * C, -1, 1));
  const VecI tokens = random_tokens(rng, size_t(B) * T, V);
  // The plain backend, step by step on fp32 buffers: the sum, then everything downstream of its rounded value.
  BackendArray p_a(*plain, n), p_b(*plain, n), p_res(*plain, n), p_ln(*plain, n), p_mean(*plain, size_t(N)),
      p_rstd(*plain, size_t(N)), p_g(*plain, size_t(C)), p_be(*plain, size_t(C)), p_rr(*plain, n), p_ln2(*plain, n),
      p_dres(*plain, n), p_dln(*plain, n), p_dg(*plain, size_t(C)), p_dbe(*plain, size_t(C));
  for (auto [arr, v] : {std::pair(&p_a, &a), std::pair(&p_b, &b), std::pair(&p_g, &gamma), std::pair(&p_be, &beta),
                        std::pair(&p_dres, &dres0), std::pair(&p_dln, &dln)})
    arr->upload(*v);
  plain->residual_layernorm_forward(p_res.get(), p_ln.get(), p_mean.get(), p_rstd.get(), p_a.get(), p_b.get(),
                                    p_g.get(), p_be.get(), N, C);
  const VecF res_rounded = bf16_rounded(p_res.download());
  p_rr.upload(res_rounded);
  plain->layernorm_forward(p_ln2.get(), p_mean.get(), p_rstd.get(), p_rr.get(), p_g.get(), p_be.get(), N, C);
  plain->zero(p_dg.get(), size_t(C));
  plain->zero(p_dbe.get(), size_t(C));
  plain->layernorm_backward(p_dres.get(), p_dg.get(), p_dbe.get(), p_dln.get(), p_rr.get(), p_g.get(), p_mean.get(),
                            p_rstd.get(), N, C);
  // The held backend: the stream, its sum and its gradient held.
  float* region = held->alloc_held_bf16(5 * n);
  REQUIRE(region != nullptr);
  float *h_a = region, *h_b = region + n, *h_res = region + 2 * n, *h_dres = region + 3 * n, *h_dln = region + 4 * n;
  BackendArray h_ln(*held, n), h_mean(*held, size_t(N)), h_rstd(*held, size_t(N)), h_g(*held, size_t(C)),
      h_be(*held, size_t(C)), h_ln2(*held, n), h_mean2(*held, size_t(N)), h_rstd2(*held, size_t(N)),
      h_dg(*held, size_t(C)), h_dbe(*held, size_t(C));
  h_g.upload(gamma);
  h_be.upload(beta);
  for (auto [p, v] : {std::pair(h_a, &a), std::pair(h_b, &b), std::pair(h_dres, &dres0), std::pair(h_dln, &dln)})
    held->from_host(p, v->data(), n);
  held->residual_layernorm_forward(h_res, h_ln.get(), h_mean.get(), h_rstd.get(), h_a, h_b, h_g.get(), h_be.get(), N,
                                   C);
  held->layernorm_forward(h_ln2.get(), h_mean2.get(), h_rstd2.get(), h_res, h_g.get(), h_be.get(), N, C);
  held->zero(h_dg.get(), size_t(C));
  held->zero(h_dbe.get(), size_t(C));
  held->layernorm_backward(h_dres, h_dg.get(), h_dbe.get(), h_dln, h_res, h_g.get(), h_mean.get(), h_rstd.get(), N, C);
  CHECK(same_bits(read_range(*held, h_res, n), res_rounded));
  const VecF ln_ref = p_ln2.download();
  CHECK(same_bits(h_ln.download(), ln_ref));  // the fused LayerNorm is of the rounded sum, as stored
  CHECK(same_bits(h_ln2.download(), ln_ref));
  CHECK(same_bits(h_mean.download(), p_mean.download()));
  CHECK(same_bits(h_rstd.download(), p_rstd.download()));
  CHECK(same_bits(read_range(*held, h_dres, n), bf16_rounded(p_dres.download())));  // accumulated, then rounded
  CHECK(same_bits(h_dg.download(), p_dg.download()));
  CHECK(same_bits(h_dbe.download(), p_dbe.download()));
  // The embedding: its output held (rounded), its backward reading a held gradient.
  auto embedding = [&](zt::Backend& be, bool hold) {
    BackendArray d_wte(be, wte.size()), d_wpe(be, wpe.size()), d_dwte(be, wte.size()), d_dwpe(be, wpe.size());
    const BackendTokens d_tok(be, tokens);
    d_wte.upload(wte);
    d_wpe.upload(wpe);
    be.zero(d_dwte.get(), wte.size());
    be.zero(d_dwpe.get(), wpe.size());
    const size_t m = demb.size();
    float* out = hold ? be.alloc_held_bf16(2 * m) : be.alloc(2 * m);
    REQUIRE(out != nullptr);
    float* dout = out + m;
    be.from_host(dout, demb.data(), m);
    be.embedding_forward(out, d_tok.get(), d_wte.get(), d_wpe.get(), B, T, C);
    be.embedding_backward(d_dwte.get(), d_dwpe.get(), dout, d_tok.get(), B, T, C);
    std::vector<VecF> r{read_range(be, out, m), d_dwte.download(), d_dwpe.download()};
    be.release(out);
    return r;
  };
  const auto e_plain = embedding(*plain, false), e_held = embedding(*held, true);
  CHECK(same_bits(e_held[0], bf16_rounded(e_plain[0])));
  CHECK(same_bits(e_held[1], e_plain[1]));
  CHECK(same_bits(e_held[2], e_plain[2]));
  held->release(region);
}
