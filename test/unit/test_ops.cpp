// CPU reference ops: forward against naive formulas, backward against finite differences (double), float against
// double, padding / causal-mask invariants, AdamW against a hand-computed reference, thread-count determinism.
#include <cblas.h>
#include <omp.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/ops.hpp"
#include "test/test_util.hpp"

namespace cpu = zt::cpu;
using zt::test::random_tokens;
using Vec = std::vector<double>;
using VecF = std::vector<float>;

namespace {

Vec uniform(std::mt19937_64& rng, size_t n, double lo, double hi) {
  std::uniform_real_distribution<double> dist(lo, hi);
  Vec v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Values exactly representable in float, so a float and a double run start from the same numbers.
Vec uniform_f(std::mt19937_64& rng, size_t n, double lo, double hi) {
  Vec v = uniform(rng, n, lo, hi);
  for (auto& x : v) x = double(float(x));
  return v;
}

VecF to_float(const Vec& v) { return VecF(v.begin(), v.end()); }

// Fills outputs an op must write (not accumulate into): an element left unwritten, or read, stays NaN and fails.
const double kNaN = std::numeric_limits<double>::quiet_NaN();

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

Vec minus(const Vec& a, const Vec& b) {
  Vec d(a.size());
  for (size_t i = 0; i < a.size(); ++i) d[i] = a[i] - b[i];
  return d;
}

// Central differences, step h = 1e-5, in double: truncation error h^2/6 |L'''| plus rounding error ~1e-16 |L| / h,
// each ~1e-10 for the O(1..10) objectives here. The worst error seen over these shapes is below 3e-9 + 3e-8 |g|
// (attention, the most curved objective), so |fd - g| <= 1e-7 + 1e-6 |g| leaves a 30x margin, while a wrong
// term, factor or sign in a backward shows up as errors of order |g| (>= 1e-2 here).
constexpr double kFdStep = 1e-5;
constexpr double kFdAbsTol = 1e-7;
constexpr double kFdRelTol = 1e-6;

// Compares analytic[i] with dL/dx[i] for every element; `loss` recomputes L from the current contents of x.
void check_gradient(const std::string& name, Vec& x, const Vec& analytic, const std::function<double()>& loss) {
  REQUIRE(x.size() == analytic.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + kFdStep;
    const double lp = loss();
    x[i] = saved - kFdStep;
    const double lm = loss();
    x[i] = saved;
    const double fd = (lp - lm) / (2 * kFdStep);
    INFO(name << "[" << i << "]: analytic " << analytic[i] << ", finite difference " << fd);
    CHECK(std::abs(analytic[i] - fd) <= kFdAbsTol + kFdRelTol * std::abs(fd));
  }
}

// max |f - d| <= rel * max |d|: float keeps ~7 digits, and every op here sums at most a few hundred terms of mixed
// sign, so 1e-5 of the tensor's scale holds with room; an error relative to each element would be dominated by
// cancellation in near-zero entries (layernorm dinp, attention gradients).
void check_float_vs_double(const std::string& name, const VecF& f, const Vec& d, double rel = 1e-5) {
  REQUIRE(f.size() == d.size());
  double scale = 0, err = 0;
  for (size_t i = 0; i < d.size(); ++i) {
    scale = std::max(scale, std::abs(d[i]));
    err = std::max(err, std::abs(double(f[i]) - d[i]));
  }
  INFO(name << ": max |float - double| = " << err << ", max |double| = " << scale);
  CHECK(scale > 0);
  CHECK(err <= rel * scale);
}

// Forward results in double against a naive formula: only summation order differs, so 1e-12 is ample.
void check_close(const std::string& name, const Vec& got, const Vec& want, double tol = 1e-12) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    INFO(name << "[" << i << "]: got " << got[i] << ", want " << want[i]);
    CHECK(std::abs(got[i] - want[i]) <= tol * (1 + std::abs(want[i])));
  }
}

// Runs `run` under 1, 2 and 3 OpenMP threads and requires bit-identical results.
void check_thread_invariant(const std::string& name, const std::function<VecF()>& run) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const VecF ref = run();
  for (int n_threads : {2, 3}) {
    omp_set_num_threads(n_threads);
    const VecF got = run();
    INFO(name << " with " << n_threads << " threads");
    REQUIRE(got.size() == ref.size());
    CHECK(std::memcmp(got.data(), ref.data(), ref.size() * sizeof(float)) == 0);
  }
  omp_set_num_threads(saved);
}

// ---- naive references (double) ----
double gelu_ref(double x) { return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); }

// out[B,T,C], att[B,NH,T,T] by the textbook formula, one (b, h, t) at a time.
void attention_ref(Vec& out, Vec& att, const Vec& qkv, int B, int T, int C, int NH) {
  const int hs = C / NH;
  out.assign(size_t(B) * T * C, 0);
  att.assign(size_t(B) * NH * T * T, 0);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int t = 0; t < T; ++t) {
        const double* q = &qkv[(size_t(b) * T + t) * 3 * C + h * hs];
        std::vector<double> s(t + 1);
        double mx = -1e300, sum = 0;
        for (int j = 0; j <= t; ++j) {
          const double* k = &qkv[(size_t(b) * T + j) * 3 * C + C + h * hs];
          s[j] = 0;
          for (int d = 0; d < hs; ++d) s[j] += q[d] * k[d] / std::sqrt(double(hs));
          mx = std::max(mx, s[j]);
        }
        for (int j = 0; j <= t; ++j) sum += std::exp(s[j] - mx);
        for (int j = 0; j <= t; ++j) {
          const double p = std::exp(s[j] - mx) / sum;
          att[((size_t(b) * NH + h) * T + t) * T + j] = p;
          const double* v = &qkv[(size_t(b) * T + j) * 3 * C + 2 * C + h * hs];
          for (int d = 0; d < hs; ++d) out[(size_t(b) * T + t) * C + h * hs + d] += p * v[d];
        }
      }
}

}  // namespace

TEST_CASE("embedding: forward, finite-difference backward, float vs double", "[ops]") {
  auto rng = zt::test::seeded_rng();
  // 10 tokens from 6 ids: repeats are certain; C = 40 spans two of the backward's 32-channel slices.
  const int B = 2, T = 5, C = 40, V = 6;
  auto tokens = random_tokens(rng, B * T, V);
  Vec wte = uniform(rng, V * C, -1, 1), wpe = uniform(rng, T * C, -1, 1), w = uniform(rng, B * T * C, -1, 1);
  Vec out(B * T * C);
  auto loss = [&] {
    cpu::embedding_forward(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
    return dot(w, out);
  };
  loss();
  Vec want(out.size());
  for (int bt = 0; bt < B * T; ++bt)
    for (int c = 0; c < C; ++c) want[bt * C + c] = wte[tokens[bt] * C + c] + wpe[(bt % T) * C + c];
  check_close("out", out, want, 0);

  // Gradients start from random values: the op must add to them, not overwrite.
  const Vec dwte0 = uniform(rng, wte.size(), -1, 1), dwpe0 = uniform(rng, wpe.size(), -1, 1);
  Vec dwte = dwte0, dwpe = dwpe0;
  cpu::embedding_backward(dwte.data(), dwpe.data(), w.data(), tokens.data(), B, T, C);
  check_gradient("dwte", wte, minus(dwte, dwte0), loss);
  check_gradient("dwpe", wpe, minus(dwpe, dwpe0), loss);

  VecF outf(out.size()), dwtef(wte.size(), 0), dwpef(wpe.size(), 0);
  Vec dwte_d(wte.size(), 0), dwpe_d(wpe.size(), 0);
  const VecF wtef = to_float(wte), wpef = to_float(wpe), wf = to_float(w);
  cpu::embedding_backward(dwtef.data(), dwpef.data(), wf.data(), tokens.data(), B, T, C);
  cpu::embedding_backward(dwte_d.data(), dwpe_d.data(), Vec(wf.begin(), wf.end()).data(), tokens.data(), B, T, C);
  check_float_vs_double("dwte", dwtef, dwte_d);
  check_float_vs_double("dwpe", dwpef, dwpe_d);
}

TEST_CASE("layernorm: forward, finite-difference backward, float vs double", "[ops]") {
  auto rng = zt::test::seeded_rng();
  const int N = 7, C = 40;              // two of the backward's 32-channel slices
  Vec inp = uniform(rng, N * C, 1, 3);  // mean far from 0: the centring matters
  Vec weight = uniform(rng, C, 0.5, 1.5), bias = uniform(rng, C, -1, 1), w = uniform(rng, N * C, -1, 1);
  Vec out(N * C), mean(N), rstd(N);
  auto loss = [&] {
    cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), weight.data(), bias.data(), N, C);
    return dot(w, out);
  };
  loss();
  Vec want(N * C);
  for (int i = 0; i < N; ++i) {
    double m = 0, var = 0;
    for (int c = 0; c < C; ++c) m += inp[i * C + c] / C;
    for (int c = 0; c < C; ++c) var += (inp[i * C + c] - m) * (inp[i * C + c] - m) / C;
    for (int c = 0; c < C; ++c) want[i * C + c] = (inp[i * C + c] - m) / std::sqrt(var + 1e-5) * weight[c] + bias[c];
    CHECK(std::abs(mean[i] - m) <= 1e-12);
    CHECK(std::abs(rstd[i] - 1 / std::sqrt(var + 1e-5)) <= 1e-12 * rstd[i]);
  }
  check_close("out", out, want);

  const Vec mean0 = mean, rstd0 = rstd;
  const Vec dinp0 = uniform(rng, inp.size(), -1, 1), dw0 = uniform(rng, C, -1, 1), db0 = uniform(rng, C, -1, 1);
  Vec dinp = dinp0, dw = dw0, db = db0;
  cpu::layernorm_backward(dinp.data(), dw.data(), db.data(), w.data(), inp.data(), weight.data(), mean0.data(),
                          rstd0.data(), N, C);
  check_gradient("dinp", inp, minus(dinp, dinp0), loss);
  check_gradient("dweight", weight, minus(dw, dw0), loss);
  check_gradient("dbias", bias, minus(db, db0), loss);

  // float vs double on larger rows
  const int Nf = 33, Cf = 96;
  const Vec x = uniform_f(rng, Nf * Cf, -2, 2), g = uniform_f(rng, Cf, 0.5, 1.5), bb = uniform_f(rng, Cf, -1, 1),
            dout = uniform_f(rng, Nf * Cf, -1, 1);
  Vec od(x.size()), md(Nf), rd(Nf), dxd(x.size(), 0), dgd(Cf, 0), dbd(Cf, 0);
  VecF of(x.size()), mf(Nf), rf(Nf), dxf(x.size(), 0), dgf(Cf, 0), dbf(Cf, 0);
  const VecF xf = to_float(x), gf = to_float(g), bf = to_float(bb), doutf = to_float(dout);
  cpu::layernorm_forward(od.data(), md.data(), rd.data(), x.data(), g.data(), bb.data(), Nf, Cf);
  cpu::layernorm_forward(of.data(), mf.data(), rf.data(), xf.data(), gf.data(), bf.data(), Nf, Cf);
  cpu::layernorm_backward(dxd.data(), dgd.data(), dbd.data(), dout.data(), x.data(), g.data(), md.data(), rd.data(), Nf,
                          Cf);
  cpu::layernorm_backward(dxf.data(), dgf.data(), dbf.data(), doutf.data(), xf.data(), gf.data(), mf.data(), rf.data(),
                          Nf, Cf);
  check_float_vs_double("out", of, od);
  check_float_vs_double("dinp", dxf, dxd);
  check_float_vs_double("dweight", dgf, dgd);
  check_float_vs_double("dbias", dbf, dbd);
}

TEST_CASE("matmul: forward, finite-difference backward, float vs double", "[ops]") {
  auto rng = zt::test::seeded_rng();
  const int N = 7, C = 8, OC = 70;  // two of dbias's 64-column slices
  for (bool transposed : {false, true}) {
    for (bool with_bias : {true, false}) {
      INFO("weight_transposed=" << transposed << " bias=" << with_bias);
      Vec inp = uniform(rng, N * C, -1, 1), weight = uniform(rng, C * OC, -1, 1), bias = uniform(rng, OC, -1, 1);
      const Vec w = uniform(rng, N * OC, -1, 1);
      Vec out(N * OC);
      auto loss = [&] {
        cpu::matmul_forward(out.data(), inp.data(), weight.data(), with_bias ? bias.data() : nullptr, N, C, OC,
                            transposed);
        return dot(w, out);
      };
      loss();
      Vec want(N * OC);
      for (int i = 0; i < N; ++i)
        for (int o = 0; o < OC; ++o) {
          double s = with_bias ? bias[o] : 0;
          for (int c = 0; c < C; ++c) s += inp[i * C + c] * (transposed ? weight[o * C + c] : weight[c * OC + o]);
          want[i * OC + o] = s;
        }
      check_close("out", out, want);

      // dinp is written (NaN before: any element left unwritten or read fails); dweight, dbias accumulate.
      const Vec dw0 = uniform(rng, weight.size(), -1, 1), db0 = uniform(rng, OC, -1, 1);
      Vec dinp(inp.size(), kNaN), dw = dw0, db = db0;
      cpu::matmul_backward(dinp.data(), dw.data(), with_bias ? db.data() : nullptr, w.data(), inp.data(), weight.data(),
                           N, C, OC, transposed);
      check_gradient("dinp", inp, dinp, loss);
      check_gradient("dweight", weight, minus(dw, dw0), loss);
      if (with_bias) check_gradient("dbias", bias, minus(db, db0), loss);

      // dinp may be null (the first layer's input needs no gradient): dweight must not change.
      Vec dw_null = dw0;
      cpu::matmul_backward<double>(nullptr, dw_null.data(), nullptr, w.data(), inp.data(), weight.data(), N, C, OC,
                                   transposed);
      check_close("dweight with dinp=null", dw_null, dw, 0);
    }
  }

  // Every product cut into several 128 x 128 output tiles, both weight layouts, against the naive sums.
  for (bool transposed : {false, true}) {
    INFO("multi-tile, weight_transposed=" << transposed);
    const int Nt = 150, Ct = 140, OCt = 130;
    const Vec x = uniform(rng, Nt * Ct, -1, 1), W = uniform(rng, Ct * OCt, -1, 1), bias = uniform(rng, OCt, -1, 1),
              dout = uniform(rng, Nt * OCt, -1, 1), dW0 = uniform(rng, Ct * OCt, -1, 1);
    auto w_at = [&](const Vec& w, int c, int o) { return transposed ? w[size_t(o) * Ct + c] : w[size_t(c) * OCt + o]; };
    Vec out(Nt * OCt), dx(size_t(Nt) * Ct, kNaN), dW = dW0, db(OCt, 0);
    cpu::matmul_forward(out.data(), x.data(), W.data(), bias.data(), Nt, Ct, OCt, transposed);
    cpu::matmul_backward(dx.data(), dW.data(), db.data(), dout.data(), x.data(), W.data(), Nt, Ct, OCt, transposed);
    Vec out_ref(out.size()), dx_ref(dx.size(), 0), dW_ref = dW0;
    for (int i = 0; i < Nt; ++i)
      for (int o = 0; o < OCt; ++o) {
        double acc = bias[o];
        for (int c = 0; c < Ct; ++c) acc += x[size_t(i) * Ct + c] * w_at(W, c, o);
        out_ref[size_t(i) * OCt + o] = acc;
      }
    for (int i = 0; i < Nt; ++i)
      for (int c = 0; c < Ct; ++c)
        for (int o = 0; o < OCt; ++o) {
          dx_ref[size_t(i) * Ct + c] += dout[size_t(i) * OCt + o] * w_at(W, c, o);
          const double dw = x[size_t(i) * Ct + c] * dout[size_t(i) * OCt + o];
          (transposed ? dW_ref[size_t(o) * Ct + c] : dW_ref[size_t(c) * OCt + o]) += dw;
        }
    check_close("out", out, out_ref, 1e-11);
    check_close("dinp", dx, dx_ref, 1e-11);
    check_close("dweight", dW, dW_ref, 1e-11);
  }

  const int Nf = 37, Cf = 48, OCf = 130;
  const Vec x = uniform_f(rng, Nf * Cf, -1, 1), W = uniform_f(rng, Cf * OCf, -1, 1), bias = uniform_f(rng, OCf, -1, 1),
            dout = uniform_f(rng, Nf * OCf, -1, 1);
  Vec od(Nf * OCf), dxd(x.size(), 0), dWd(W.size(), 0), dbd(OCf, 0);
  VecF of(Nf * OCf), dxf(x.size(), 0), dWf(W.size(), 0), dbf(OCf, 0);
  const VecF xf = to_float(x), Wf = to_float(W), biasf = to_float(bias), doutf = to_float(dout);
  cpu::matmul_forward(od.data(), x.data(), W.data(), bias.data(), Nf, Cf, OCf, false);
  cpu::matmul_forward(of.data(), xf.data(), Wf.data(), biasf.data(), Nf, Cf, OCf, false);
  cpu::matmul_backward(dxd.data(), dWd.data(), dbd.data(), dout.data(), x.data(), W.data(), Nf, Cf, OCf, false);
  cpu::matmul_backward(dxf.data(), dWf.data(), dbf.data(), doutf.data(), xf.data(), Wf.data(), Nf, Cf, OCf, false);
  check_float_vs_double("out", of, od);
  check_float_vs_double("dinp", dxf, dxd);
  check_float_vs_double("dweight", dWf, dWd);
  check_float_vs_double("dbias", dbf, dbd);
}

TEST_CASE("attention: forward, causal mask, finite-difference backward, float vs double", "[ops]") {
  auto rng = zt::test::seeded_rng();
  // Shapes reach every kernel path in double (4-lane vectors, 4-row tiles): T=5, 19, 33 leave 1, 3, 1 rows after
  // the 4-row tiles and need 1, 3, 5 score tiles of 8 columns; head sizes 4, 6, 36 run the 1-vector, scalar and
  // 2-vector (+ 1-vector) accumulations.
  struct Shape {
    int B, T, C, NH;
  };
  for (const Shape s : {Shape{2, 5, 8, 2}, Shape{1, 19, 18, 3}, Shape{1, 33, 72, 2}}) {
    const int B = s.B, T = s.T, C = s.C, NH = s.NH;
    INFO("B=" << B << " T=" << T << " C=" << C << " NH=" << NH);
    Vec qkv = uniform(rng, size_t(B) * T * 3 * C, -1.5, 1.5);
    const Vec w = uniform(rng, size_t(B) * T * C, -1, 1);
    Vec out(size_t(B) * T * C), att(size_t(B) * NH * T * T, -7.0);  // -7: stale values must be overwritten
    auto loss = [&] {
      cpu::attention_forward(out.data(), att.data(), qkv.data(), B, T, C, NH);
      return dot(w, out);
    };
    loss();
    Vec out_ref, att_ref;
    attention_ref(out_ref, att_ref, qkv, B, T, C, NH);
    check_close("out", out, out_ref);
    check_close("att", att, att_ref);
    for (int bh = 0; bh < B * NH; ++bh)
      for (int t = 0; t < T; ++t) {
        double row_sum = 0;
        for (int j = 0; j < T; ++j) {
          const double p = att[(size_t(bh) * T + t) * T + j];
          if (j > t) {
            INFO("att above the diagonal at bh=" << bh << " t=" << t << " j=" << j);
            CHECK(p == 0.0);
          }
          row_sum += p;
        }
        CHECK(std::abs(row_sum - 1) <= 1e-12);
      }

    // Causality: changing the last position's q, k, v leaves every earlier output bit-identical.
    const Vec out_before = out;
    Vec qkv_changed = qkv;
    for (int b = 0; b < B; ++b)
      for (int c = 0; c < 3 * C; ++c) qkv_changed[(size_t(b) * T + T - 1) * 3 * C + c] += 0.5;
    Vec out_changed(out.size()), att_changed(att.size());
    cpu::attention_forward(out_changed.data(), att_changed.data(), qkv_changed.data(), B, T, C, NH);
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T - 1; ++t)
        for (int c = 0; c < C; ++c)
          CHECK(out_changed[(size_t(b) * T + t) * C + c] == out_before[(size_t(b) * T + t) * C + c]);

    const Vec att0 = att;
    Vec dqkv(qkv.size(), kNaN);  // written, not accumulated: every element must be replaced
    cpu::attention_backward(dqkv.data(), w.data(), qkv.data(), att0.data(), B, T, C, NH);
    check_gradient("dqkv", qkv, dqkv, loss);
  }

  // float: 8-lane vectors; head size 64 runs 16-column tiles, T=70 leaves 2 rows after the 4-row tiles.
  const int B = 2, T = 70, C = 128, NH = 2;
  const Vec qkv = uniform_f(rng, size_t(B) * T * 3 * C, -2, 2), dout = uniform_f(rng, size_t(B) * T * C, -1, 1);
  Vec od(dout.size()), ad(size_t(B) * NH * T * T), dqd(qkv.size(), 0);
  VecF of(dout.size()), af(ad.size()), dqf(qkv.size(), 0);
  const VecF qkvf = to_float(qkv), doutf = to_float(dout);
  cpu::attention_forward(od.data(), ad.data(), qkv.data(), B, T, C, NH);
  cpu::attention_forward(of.data(), af.data(), qkvf.data(), B, T, C, NH);
  cpu::attention_backward(dqd.data(), dout.data(), qkv.data(), ad.data(), B, T, C, NH);
  cpu::attention_backward(dqf.data(), doutf.data(), qkvf.data(), af.data(), B, T, C, NH);
  check_float_vs_double("out", of, od);
  check_float_vs_double("att", af, ad);
  check_float_vs_double("dqkv", dqf, dqd);
}

TEST_CASE("gelu: forward against the tanh formula, finite-difference backward, float vs double", "[ops]") {
  auto rng = zt::test::seeded_rng();
  Vec x = uniform(rng, 60, -6, 6);
  for (double edge : {-30.0, -10.0, 0.0, 10.0, 30.0}) x.push_back(edge);  // saturated ends and the origin
  const Vec w = uniform(rng, x.size(), -1, 1);
  Vec out(x.size());
  auto loss = [&] {
    cpu::gelu_forward(out.data(), x.data(), x.size());
    return dot(w, out);
  };
  loss();
  Vec want(x.size());
  for (size_t i = 0; i < x.size(); ++i) want[i] = gelu_ref(x[i]);
  check_close("out", out, want);
  Vec dinp(x.size(), kNaN);  // written, not accumulated
  cpu::gelu_backward(dinp.data(), x.data(), w.data(), x.size());
  check_gradient("dinp", x, dinp, loss);

  // float against double, element by element over the whole useful range and where exp would overflow. The
  // forward is compared relatively (the sigmoid form never cancels): float rounds z = 2u to |z| 2^-24 and exp turns
  // that into a relative error of the same size, so the bound is 1e-6 + 4e-7 |z| (measured worst: half of it).
  // dinp is bounded by 1.13 |dout|; its float error was measured at 2e-7 |dout| over [-15, 15].
  Vec xs = uniform_f(rng, 4000, -12, 12);
  for (double edge : {-200.0, -90.0, -45.0, 45.0, 90.0, 200.0, 0.0}) xs.push_back(edge);
  const Vec dout = uniform_f(rng, xs.size(), -1, 1);
  Vec od(xs.size()), dd(xs.size(), 0);
  VecF of(xs.size()), df(xs.size(), 0);
  const VecF xf = to_float(xs), doutf = to_float(dout);
  cpu::gelu_forward(od.data(), xs.data(), xs.size());
  cpu::gelu_forward(of.data(), xf.data(), xf.size());
  cpu::gelu_backward(dd.data(), xs.data(), dout.data(), xs.size());
  cpu::gelu_backward(df.data(), xf.data(), doutf.data(), xf.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    INFO("x=" << xs[i] << " out float " << of[i] << " double " << od[i] << "; dinp float " << df[i] << " double "
              << dd[i]);
    CHECK(std::isfinite(of[i]));
    CHECK(std::isfinite(df[i]));
    const double z = std::abs(2 * std::sqrt(2 / M_PI) * (xs[i] + 0.044715 * xs[i] * xs[i] * xs[i]));
    // Absolute floor: exp is clamped at e^88, so far-negative x give x / (1 + e^88) ~ 6e-39 x instead of ~0.
    const double floor = 1e-38 * std::abs(xs[i]);
    CHECK(std::abs(of[i] - od[i]) <= (1e-6 + 4e-7 * z) * std::abs(od[i]) + floor);
    CHECK(std::abs(df[i] - dd[i]) <= 1e-6 * std::abs(dout[i]) + floor);
  }
}

TEST_CASE("residual: out = a + b", "[ops]") {
  auto rng = zt::test::seeded_rng();
  const Vec a = uniform_f(rng, 1001, -1, 1), b = uniform_f(rng, 1001, -1, 1);
  const VecF af = to_float(a), bf = to_float(b);
  VecF out(a.size());
  cpu::residual_forward(out.data(), af.data(), bf.data(), out.size());
  for (size_t i = 0; i < out.size(); ++i) CHECK(out[i] == af[i] + bf[i]);  // one rounding: exact equality
}

// The fused op against the two it replaces, bit for bit, in float and double, on rows whose sum has a mean far from
// 0 (the two-pass variance) and a C that is not a multiple of the vector width.
template <typename T>
void check_residual_layernorm_fused(std::mt19937_64& rng, int N, int C) {
  auto draw = [&](size_t n, double lo, double hi) {
    const Vec d = uniform(rng, n, lo, hi);
    return std::vector<T>(d.begin(), d.end());
  };
  const std::vector<T> a = draw(size_t(N) * C, 1, 5), b = draw(size_t(N) * C, -1, 1), w = draw(size_t(C), 0.5, 1.5),
                       bias = draw(size_t(C), -1, 1);
  std::vector<T> res(a.size(), T(-7)), out(a.size(), T(-7)), mean(size_t(N), T(-7)), rstd(size_t(N), T(-7));
  std::vector<T> res2(a.size()), out2(a.size()), mean2(static_cast<size_t>(N)), rstd2(static_cast<size_t>(N));
  cpu::residual_layernorm_forward(res.data(), out.data(), mean.data(), rstd.data(), a.data(), b.data(), w.data(),
                                  bias.data(), N, C);
  cpu::residual_forward(res2.data(), a.data(), b.data(), res2.size());
  cpu::layernorm_forward(out2.data(), mean2.data(), rstd2.data(), res2.data(), w.data(), bias.data(), N, C);
  INFO("sizeof(T)=" << sizeof(T) << " N=" << N << " C=" << C);
  CHECK(res == res2);
  CHECK(out == out2);
  CHECK(mean == mean2);
  CHECK(rstd == rstd2);
  // And it is a LayerNorm: every output row of weight 1, bias 0 would have mean 0; here, undo weight and bias.
  double worst = 0;
  for (int i = 0; i < N; ++i) {
    double m = 0;
    for (int c = 0; c < C; ++c) m += (double(out[size_t(i) * C + c]) - double(bias[size_t(c)])) / double(w[size_t(c)]);
    worst = std::max(worst, std::abs(m / C));
  }
  CHECK(worst < 1e-5);  // the normalised rows' mean, in float's precision (~1e-7 per term)
}

TEST_CASE("residual_layernorm_forward: the residual add then layernorm_forward, bit for bit", "[ops]") {
  auto rng = zt::test::seeded_rng();
  for (int C : {1, 7, 96, 131}) {
    check_residual_layernorm_fused<float>(rng, 9, C);
    check_residual_layernorm_fused<double>(rng, 9, C);
  }
}

TEST_CASE("softmax_cross_entropy: losses, finite-difference gradient, padded columns", "[ops]") {
  auto rng = zt::test::seeded_rng();
  const int N = 7, V = 13, Vp = 16;
  const double dloss = 0.37;  // not 1, so a missing dloss factor fails
  auto targets = random_tokens(rng, N, V);
  Vec logits = uniform(rng, N * Vp, -3, 3);
  // Padding holds the largest values of the row: if they leaked into the max or the sum, the losses would move.
  for (int i = 0; i < N; ++i)
    for (int j = V; j < Vp; ++j) logits[i * Vp + j] = 50.0 + j;
  Vec losses(N);
  auto loss = [&] {
    Vec scratch = logits;
    cpu::softmax_cross_entropy(scratch.data(), losses.data(), targets.data(), N, V, Vp, dloss);
    double s = 0;
    for (double l : losses) s += dloss * l;
    return s;
  };
  Vec grad = logits;
  cpu::softmax_cross_entropy(grad.data(), losses.data(), targets.data(), N, V, Vp, dloss);
  for (int i = 0; i < N; ++i) {
    double sum = 0;
    for (int j = 0; j < V; ++j) sum += std::exp(logits[i * Vp + j]);
    CHECK(std::abs(losses[i] - (std::log(sum) - logits[i * Vp + targets[i]])) <= 1e-12);
    for (int j = V; j < Vp; ++j) CHECK(grad[i * Vp + j] == 0.0);
  }
  // Finite differences over the real columns only (the padded ones are not inputs of the loss).
  for (int i = 0; i < N; ++i) {
    Vec row(logits.begin() + i * Vp, logits.begin() + i * Vp + V);
    const Vec g(grad.begin() + i * Vp, grad.begin() + i * Vp + V);
    check_gradient("dlogits row " + std::to_string(i), row, g, [&] {
      std::copy(row.begin(), row.end(), logits.begin() + i * Vp);
      return loss();
    });
    std::copy(row.begin(), row.end(), logits.begin() + i * Vp);
  }

  // Numerical stability: logits around 1e4 would overflow exp without the max subtraction.
  VecF big(size_t(N) * Vp), lossf(N);
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < Vp; ++j) big[i * Vp + j] = float(1e4 + (j < V ? logits[i * Vp + j] : -1e30));
  const VecF big0 = big;
  cpu::softmax_cross_entropy(big.data(), lossf.data(), targets.data(), N, V, Vp, 1.0f);
  for (int i = 0; i < N; ++i) {
    CHECK(std::isfinite(lossf[i]));
    double s = 0;
    for (int j = 0; j < V; ++j) s += big[i * Vp + j];
    CHECK(std::abs(s) <= 1e-5);  // softmax - onehot sums to zero
  }

  // float vs double on a realistic row length
  const int Nf = 9, Vf = 300, Vpf = 384;
  auto tf = random_tokens(rng, Nf, Vf);
  const Vec lg = uniform_f(rng, size_t(Nf) * Vpf, -4, 4);
  Vec gd = lg, ld(Nf);
  VecF gf = to_float(lg), lf(Nf);
  cpu::softmax_cross_entropy(gd.data(), ld.data(), tf.data(), Nf, Vf, Vpf, 1.0 / Nf);
  cpu::softmax_cross_entropy(gf.data(), lf.data(), tf.data(), Nf, Vf, Vpf, 1.0f / Nf);
  check_float_vs_double("losses", lf, ld);
  check_float_vs_double("dlogits", gf, gd);
}

TEST_CASE("adamw_update: two steps against a hand-computed double reference", "[ops]") {
  auto rng = zt::test::seeded_rng();
  const size_t n = 257;
  const float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, wd = 0.1f, grad_scale = 0.5f;
  const Vec p0 = uniform_f(rng, n, -1, 1), g1 = uniform_f(rng, n, -2, 2), g2 = uniform_f(rng, n, -2, 2);
  VecF p = to_float(p0), m(n, 0), v(n, 0);
  // Reference: the textbook AdamW in double, p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p).
  Vec pr = p0, mr(n, 0), vr(n, 0);
  const double b1 = beta1, b2 = beta2;
  for (int64_t step = 1; step <= 2; ++step) {
    const Vec& g = step == 1 ? g1 : g2;
    const VecF gf = to_float(g);
    // Magnitudes of the terms each result is formed from: rounding errors scale with these, not with the result
    // (m and p can cancel to near zero).
    Vec m_scale(n), v_scale(n), p_scale(n);
    for (size_t i = 0; i < n; ++i) {
      m_scale[i] = b1 * std::abs(mr[i]) + (1 - b1) * std::abs(g[i] * double(grad_scale));
      v_scale[i] = b2 * vr[i] + (1 - b2) * g[i] * g[i] * double(grad_scale) * double(grad_scale);
      p_scale[i] = std::abs(pr[i]) + double(lr);
    }
    cpu::adamw_update(p.data(), gf.data(), m.data(), v.data(), n, lr, beta1, beta2, eps, wd, grad_scale, step);
    for (size_t i = 0; i < n; ++i) {
      const double gi = g[i] * double(grad_scale);
      mr[i] = b1 * mr[i] + (1 - b1) * gi;
      vr[i] = b2 * vr[i] + (1 - b2) * gi * gi;
      const double mhat = mr[i] / (1 - std::pow(b1, double(step))), vhat = vr[i] / (1 - std::pow(b2, double(step)));
      pr[i] -= double(lr) * (mhat / (std::sqrt(vhat) + double(eps)) + double(wd) * pr[i]);
    }
    for (size_t i = 0; i < n; ++i) {
      INFO("step " << step << " element " << i);
      // Float rounds each of a handful of operations: a few ulp (6e-8) of the terms' magnitude, so 1e-6 of it is
      // a 15x margin. A wrong bias correction moves p by ~lr = 1e-3 and a missing weight decay by lr*wd*|p| ~ 1e-4
      // |p|: both far outside.
      CHECK(std::abs(p[i] - pr[i]) <= 1e-6 * p_scale[i]);
      CHECK(std::abs(m[i] - mr[i]) <= 1e-6 * m_scale[i]);
      CHECK(std::abs(v[i] - vr[i]) <= 1e-6 * v_scale[i]);
      // Not vacuous: Adam's first step moves every parameter by lr * (sign(g) + wd * p), so by 0.9..1.1 lr.
      if (step == 1) CHECK(std::abs(std::abs(p[i] - p0[i]) - double(lr)) <= 0.11 * double(lr));
    }
  }

  // Elementwise: updating [0, k) and [k, n) separately gives the same bits as one call (ZeRO shards).
  VecF pa = to_float(p0), ma(n, 0), va(n, 0), pb = pa, mb = ma, vb = va;
  const VecF gf = to_float(g1);
  cpu::adamw_update(pa.data(), gf.data(), ma.data(), va.data(), n, lr, beta1, beta2, eps, wd, grad_scale, 1);
  const size_t k = 100;
  cpu::adamw_update(pb.data(), gf.data(), mb.data(), vb.data(), k, lr, beta1, beta2, eps, wd, grad_scale, 1);
  cpu::adamw_update(pb.data() + k, gf.data() + k, mb.data() + k, vb.data() + k, n - k, lr, beta1, beta2, eps, wd,
                    grad_scale, 1);
  CHECK(std::memcmp(pa.data(), pb.data(), n * sizeof(float)) == 0);
  CHECK(std::memcmp(ma.data(), mb.data(), n * sizeof(float)) == 0);
  CHECK(std::memcmp(va.data(), vb.data(), n * sizeof(float)) == 0);
}

TEST_CASE("squared_norm: double accumulation", "[ops]") {
  auto rng = zt::test::seeded_rng();
  for (size_t n : {size_t(0), size_t(1), size_t(8191), size_t(3 * 8192 + 77)}) {
    const Vec x = uniform_f(rng, n, -1, 1);
    const VecF xf = to_float(x);
    long double want = 0;
    for (double e : x) want += (long double)e * e;
    INFO("n=" << n);
    CHECK(std::abs(cpu::squared_norm(xf.data(), n) - double(want)) <= 1e-13 * double(want) + 0.0);
  }
}

TEST_CASE("ops give bit-identical results for any thread count", "[ops]") {
  auto rng = zt::test::seeded_rng();
  {
    const int N = 257, C = 96;
    const VecF x = to_float(uniform(rng, N * C, -2, 2)), g = to_float(uniform(rng, C, 0.5, 1.5)),
               bb = to_float(uniform(rng, C, -1, 1)), dout = to_float(uniform(rng, N * C, -1, 1)),
               init = to_float(uniform(rng, N * C + 2 * C, -1, 1));
    check_thread_invariant("residual_layernorm_forward", [&] {
      VecF res(N * C), out(N * C), mean(N), rstd(N);
      cpu::residual_layernorm_forward(res.data(), out.data(), mean.data(), rstd.data(), x.data(), dout.data(), g.data(),
                                      bb.data(), N, C);
      for (VecF* v : {&out, &mean, &rstd}) res.insert(res.end(), v->begin(), v->end());
      return res;
    });
    check_thread_invariant("layernorm forward+backward", [&] {
      VecF out(N * C), mean(N), rstd(N), grads = init;
      cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), g.data(), bb.data(), N, C);
      cpu::layernorm_backward(grads.data(), grads.data() + N * C, grads.data() + N * C + C, dout.data(), x.data(),
                              g.data(), mean.data(), rstd.data(), N, C);
      grads.insert(grads.end(), out.begin(), out.end());
      return grads;
    });
  }
  {
    const int B = 4, T = 64, C = 96, V = 50;
    const auto tokens = random_tokens(rng, B * T, V);
    const VecF dout = to_float(uniform(rng, B * T * C, -1, 1)), init = to_float(uniform(rng, (V + T) * C, -1, 1));
    check_thread_invariant("embedding_backward", [&] {
      VecF grads = init;
      cpu::embedding_backward(grads.data(), grads.data() + V * C, dout.data(), tokens.data(), B, T, C);
      return grads;
    });
  }
  {
    const int B = 2, T = 40, C = 32, NH = 4;
    const VecF qkv = to_float(uniform(rng, B * T * 3 * C, -2, 2)), dout = to_float(uniform(rng, B * T * C, -1, 1)),
               init = to_float(uniform(rng, B * T * 3 * C, -1, 1));
    check_thread_invariant("attention forward+backward", [&] {
      VecF out(B * T * C), att(B * NH * T * T), dqkv = init;
      cpu::attention_forward(out.data(), att.data(), qkv.data(), B, T, C, NH);
      cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), att.data(), B, T, C, NH);
      dqkv.insert(dqkv.end(), out.begin(), out.end());
      dqkv.insert(dqkv.end(), att.begin(), att.end());
      return dqkv;
    });
  }
  {
    const int N = 130, C = 48, OC = 200;
    const VecF x = to_float(uniform(rng, N * C, -1, 1)), W = to_float(uniform(rng, C * OC, -1, 1)),
               dout = to_float(uniform(rng, N * OC, -1, 1)), init = to_float(uniform(rng, N * C + C * OC + OC, -1, 1));
    auto run = [&] {
      VecF grads = init;
      cpu::matmul_backward(grads.data(), grads.data() + N * C, grads.data() + N * C + C * OC, dout.data(), x.data(),
                           W.data(), N, C, OC, false);
      return grads;
    };
    check_thread_invariant("matmul_backward", run);
    // OpenBLAS keeps its own pool: its thread count must not change the bits either.
    const int saved = openblas_get_num_threads();
    openblas_set_num_threads(1);
    const VecF one = run();
    openblas_set_num_threads(2);
    const VecF two = run();
    openblas_set_num_threads(saved);
    CHECK(std::memcmp(one.data(), two.data(), one.size() * sizeof(float)) == 0);
  }
  {
    // 37 blocks of magnitudes spread over 10^-3..10^3, so that any regrouping of the partial sums changes bits.
    VecF x = to_float(uniform(rng, 36 * 8192 + 3, -1, 1));
    const Vec exponent = uniform(rng, x.size(), -3, 3);
    for (size_t i = 0; i < x.size(); ++i) x[i] *= float(std::pow(10.0, exponent[i]));
    check_thread_invariant("squared_norm", [&] {
      const double s = cpu::squared_norm(x.data(), x.size());
      VecF bits(2);
      std::memcpy(bits.data(), &s, sizeof(s));
      return bits;
    });
  }
  {
    const int N = 64, V = 300, Vp = 384;
    const auto targets = random_tokens(rng, N, V);
    const VecF logits = to_float(uniform(rng, N * Vp, -4, 4));
    check_thread_invariant("softmax_cross_entropy", [&] {
      VecF g = logits, losses(N);
      cpu::softmax_cross_entropy(g.data(), losses.data(), targets.data(), N, V, Vp, 1.0f / N);
      g.insert(g.end(), losses.begin(), losses.end());
      return g;
    });
  }
}
