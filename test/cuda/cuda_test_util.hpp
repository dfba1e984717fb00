// What the CUDA backend's test files share (test_cuda_ops.cpp, test_cuda_activations.cpp): backends made with one
// switch set, bf16 rounding as a held range stores it, whole-range transfers, and one run of the MLP's fused ops.
#pragma once

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "core/backend.hpp"
#include "cuda/cuda_backend.hpp"
#include "test/test_util.hpp"

namespace zt::test {

inline std::unique_ptr<Backend> cuda_backend(bool bf16) { return make_cuda_backend(0, bf16); }
inline std::unique_ptr<Backend> cuda_backend_epilogues(bool bf16, const char* epilogues) {
  return make_cuda_backend(0, bf16, {"auto", "auto", "auto", epilogues});
}
inline std::unique_ptr<Backend> cuda_backend_activations(bool bf16, const char* activations,
                                                         const char* epilogues = "auto") {
  return make_cuda_backend(0, bf16, {"auto", "auto", "auto", epilogues, activations});
}

// x rounded to bf16, nearest even (as __float2bfloat16_rn; no NaN here): what a range held in bf16 stores.
inline float bf16_rounded(float x) {
  uint32_t bits = 0;
  std::memcpy(&bits, &x, sizeof(bits));
  bits = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
}
inline std::vector<float> bf16_rounded(std::vector<float> v) {
  for (float& x : v) x = bf16_rounded(x);
  return v;
}
// Exactly [p, p + n) to and from the host: a held range is moved whole (BackendArray's transfers cover its guards).
inline std::vector<float> read_range(Backend& be, const float* p, size_t n) {
  std::vector<float> v(n);
  be.to_host(v.data(), p, n);
  return v;
}

inline bool all_nan(const std::vector<float>& v) {
  return std::all_of(v.begin(), v.end(), [](float x) { return std::isnan(x); });
}
inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// What run_mlp holds in bf16 (keep_activation_bf16): nothing; the GELU output and dpre (the buffers the model held
// first); or also the pre-activation and dact (the products' outputs, as the model holds them now).
enum class MlpHold { none, out_dpre, all };

// What the MLP's fused ops produce from one set of inputs: the forward's pre-activation and GELU output, then the
// backward's (from a given GELU output) dpre, its dact scratch (poisoned before), and the projection's dweight and
// dbias accumulated from zero. Held ranges are moved whole. The bias is a bf16 value, so a product into a held
// range (which adds it in bf16) adds what an fp32 one does.
struct MlpResult {
  std::vector<float> pre, out, dpre, dact, dweight, dbias;
};
inline MlpResult run_mlp(Backend& be, int N, int C, int H, uint32_t seed, MlpHold hold = MlpHold::none) {
  std::mt19937_64 rng(seed);
  const std::vector<float> x = uniform(rng, size_t(N) * C, -1, 1), w_fc = uniform(rng, size_t(C) * H, -0.5f, 0.5f),
                           b_fc = bf16_rounded(uniform(rng, size_t(H), -1, 1)),
                           w_proj = uniform(rng, size_t(H) * C, -0.5f, 0.5f), dout = uniform(rng, size_t(N) * C, -1, 1),
                           act = uniform(rng, size_t(N) * H, -0.2f, 1);
  BackendArray d_x(be, x.size()), d_wfc(be, w_fc.size()), d_bfc(be, b_fc.size()), d_wproj(be, w_proj.size());
  BackendArray d_pre(be, size_t(N) * H), d_out(be, size_t(N) * H), d_dout(be, dout.size());
  BackendArray d_dpre(be, size_t(N) * H), d_dact(be, size_t(N) * H), d_dw(be, w_proj.size()), d_db(be, size_t(C));
  d_x.upload(x);
  d_wfc.upload(w_fc);
  d_bfc.upload(b_fc);
  d_wproj.upload(w_proj);
  d_dout.upload(dout);
  be.zero(d_dw.get(), w_proj.size());
  be.zero(d_db.get(), size_t(C));
  std::vector<const BackendArray*> held;
  if (hold != MlpHold::none) held = {&d_out, &d_dpre};
  if (hold == MlpHold::all) held.insert(held.end(), {&d_pre, &d_dact});
  for (const BackendArray* a : held) REQUIRE(be.keep_activation_bf16(a->get(), a->size()));
  auto download = [&](const BackendArray& a) {
    const bool is_held = std::find(held.begin(), held.end(), &a) != held.end();
    return is_held ? read_range(be, a.get(), a.size()) : a.download();
  };
  be.matmul_gelu_forward(d_pre.get(), d_out.get(), d_x.get(), d_wfc.get(), d_bfc.get(), N, C, H);
  const std::vector<float> out = download(d_out);
  // The backward's input the same in every run, so its products can be compared bit for bit (held: rounded, as
  // the bf16 product rounds it anyway).
  be.from_host(d_out.get(), act.data(), act.size());
  be.matmul_gelu_backward(d_dpre.get(), d_dact.get(), d_dw.get(), d_db.get(), d_dout.get(), d_out.get(), d_wproj.get(),
                          d_pre.get(), N, H, C);
  return {download(d_pre), out, download(d_dpre), download(d_dact), d_dw.download(), d_db.download()};
}

}  // namespace zt::test
