// The fused ops of the backend contract (matmul_gelu_forward, matmul_gelu_backward: the MLP's expansion with its GELU)
// on every registered backend against the CPU reference's two ops in turn, on shapes where a backend can fold GELU
// into the product (widths a multiple of 8) and where it cannot (it must fall back to the same values).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "core/backend.hpp"
#include "core/ops.hpp"
#include "test/ops/backends_under_test.hpp"
#include "test/test_util.hpp"

namespace cpu = zt::cpu;
using VecF = std::vector<float>;
using zt::test::BackendArray;
using zt::test::expect_close;
using zt::test::seeded_rng;
using zt::test::uniform;
using zt::test::uniform_int;

TEST_CASE("matmul_gelu forward and backward match the CPU's matmul and GELU in turn", "[backend][matmul][gelu]") {
  ZT_FOR_EACH_BACKEND(target);
  auto rng = seeded_rng();
  auto be = target.make();
  // GELU's output sits within the product's tolerance: its slope is at most 1.13.
  const zt::test::Tolerance tol = target.tol.matmul;
  for (int trial = 0; trial < 6; ++trial) {
    // Even trials: the hidden width (OC forward, C backward) a multiple of 8, as a cuBLASLt GELU epilogue needs for
    // its auxiliary matrix; odd trials: not, so a backend that folds GELU must fall back.
    const int N = uniform_int(rng, 1, 200), C = uniform_int(rng, 1, 64);
    const int H = trial % 2 == 0 ? 8 * uniform_int(rng, 1, 40) : 8 * uniform_int(rng, 1, 40) + uniform_int(rng, 1, 7);
    const bool with_dweight = trial != 4;  // a frozen projection: no weight or bias gradient
    INFO("N=" << N << " C=" << C << " hidden=" << H << " dweight=" << with_dweight);
    const VecF x = uniform(rng, size_t(N) * C, -1, 1), w_fc = uniform(rng, size_t(C) * H, -0.5f, 0.5f),
               b_fc = uniform(rng, size_t(H), -1, 1), w_proj = uniform(rng, size_t(H) * C, -0.5f, 0.5f),
               dout = uniform(rng, size_t(N) * C, -1, 1), dw0 = uniform(rng, size_t(H) * C, -1, 1),
               db0 = uniform(rng, size_t(C), -1, 1);
    // The reference: expansion, GELU, then the projection's backward (input: the GELU output) and GELU's.
    VecF pre_ref(size_t(N) * H), act_ref(pre_ref.size()), dact_ref(pre_ref.size()), dpre_ref(pre_ref.size());
    VecF dw_ref(dw0), db_ref(db0);
    cpu::matmul_forward(pre_ref.data(), x.data(), w_fc.data(), b_fc.data(), N, C, H, false);
    cpu::gelu_forward(act_ref.data(), pre_ref.data(), pre_ref.size());
    cpu::matmul_backward(dact_ref.data(), with_dweight ? dw_ref.data() : nullptr,
                         with_dweight ? db_ref.data() : nullptr, dout.data(), act_ref.data(), w_proj.data(), N, H, C,
                         false);
    cpu::gelu_backward(dpre_ref.data(), pre_ref.data(), dact_ref.data(), pre_ref.size());

    BackendArray d_x(*be, x.size()), d_wfc(*be, w_fc.size()), d_bfc(*be, b_fc.size()), d_wproj(*be, w_proj.size());
    BackendArray d_pre(*be, pre_ref.size()), d_act(*be, pre_ref.size()), d_dout(*be, dout.size());
    BackendArray d_dact(*be, pre_ref.size()), d_dpre(*be, pre_ref.size()), d_dw(*be, dw0.size()), d_db(*be, C);
    d_x.upload(x);
    d_wfc.upload(w_fc);
    d_bfc.upload(b_fc);
    d_wproj.upload(w_proj);
    d_dout.upload(dout);
    d_dw.upload(dw0);
    d_db.upload(db0);
    be->matmul_gelu_forward(d_pre.get(), d_act.get(), d_x.get(), d_wfc.get(), d_bfc.get(), N, C, H);
    expect_close("matmul_gelu pre-activation", d_pre.download(), pre_ref, tol);
    expect_close("matmul_gelu out", d_act.download(), act_ref, tol);
    // The backward reads the reference's GELU output, so only its own arithmetic is compared.
    d_act.upload(act_ref);
    d_pre.upload(pre_ref);
    be->matmul_gelu_backward(d_dpre.get(), d_dact.get(), with_dweight ? d_dw.get() : nullptr,
                             with_dweight ? d_db.get() : nullptr, d_dout.get(), d_act.get(), d_wproj.get(), d_pre.get(),
                             N, H, C);
    expect_close("matmul_gelu dpre", d_dpre.download(), dpre_ref, tol);
    expect_close("matmul_gelu dweight", d_dw.download(), dw_ref, tol);
    expect_close("matmul_gelu dbias", d_db.download(), db_ref, target.tol.matmul_dbias);
    // dact is scratch: written or not, but nothing outside it (download checks the guards either way).
    (void)d_dact.download();
  }
}
