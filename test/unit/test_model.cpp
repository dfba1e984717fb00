// Parameter table (GPT-2 names, shapes, counts), shard-independent initialisation, LR schedule.
#include <catch2/catch.hpp>

#include <cmath>

#include "core/errors.hpp"
#include "core/lr_schedule.hpp"
#include "core/model.hpp"

using namespace zt;

TEST_CASE("GPT-2 124M has the published parameter count and names", "[model]") {
  ParamTable t(model_preset("gpt2"));
  REQUIRE(t.n_params() == 124439808);  // GPT-2 small with tied LM head, as Hugging Face reports
  REQUIRE(t.units().size() == 14);     // embeddings, 12 blocks, ln_f
  const TensorSpec& w = t.tensors()[size_t(t.find("h.3.attn.c_attn.weight"))];
  REQUIRE(w.shape == std::vector<int64_t>{768, 2304});
  REQUIRE(w.decay);
  REQUIRE_FALSE(t.tensors()[size_t(t.find("h.3.ln_1.bias"))].decay);
  const TensorSpec& wte = t.tensors()[size_t(t.find("wte"))];
  REQUIRE(wte.shape == std::vector<int64_t>{50257, 768});
  REQUIRE(wte.storage_numel == size_t(50304) * 768);  // padded to a multiple of 128 rows
  REQUIRE_THROWS_WITH(t.find("h.12.ln_1.weight"), Catch::Contains("no parameter named 'h.12.ln_1.weight'"));
  REQUIRE_THROWS_WITH(model_preset("gpt3"), Catch::Contains("unknown preset 'gpt3'"));
}

TEST_CASE("initialisation of any flat range equals the same slice of the whole unit", "[model]") {
  ModelConfig c = model_preset("tiny");
  c.vocab = 130;  // padded to 256: rows 130..255 of wte must be zero
  ParamTable t(c);
  for (size_t u = 0; u < t.units().size(); ++u) {
    const size_t n = t.units()[u].numel + 37;  // past the end: ZeRO padding
    std::vector<float> full(n);
    init_unit_range(t, int(u), 42, 0, n, full.data());
    for (size_t begin : {size_t(0), size_t(1), n / 3, n - 5}) {
      const size_t count = std::min(n - begin, size_t(101));
      std::vector<float> part(count);
      init_unit_range(t, int(u), 42, begin, count, part.data());
      for (size_t i = 0; i < count; ++i) REQUIRE(part[i] == full[begin + i]);
    }
    for (size_t i = t.units()[u].numel; i < n; ++i) REQUIRE(full[i] == 0.0f);
  }
  const TensorSpec& wte = t.tensors()[size_t(t.find("wte"))];
  std::vector<float> emb(t.units()[0].numel);
  init_unit_range(t, 0, 42, 0, emb.size(), emb.data());
  for (size_t i = wte.numel(); i < wte.storage_numel; ++i) REQUIRE(emb[i] == 0.0f);
  // Normal init statistics: std 0.02 within 5% over 33k samples (sampling error ~0.4%).
  double s2 = 0;
  for (size_t i = 0; i < wte.numel(); ++i) s2 += double(emb[i]) * emb[i];
  REQUIRE(std::sqrt(s2 / double(wte.numel())) == Approx(0.02).epsilon(0.05));
  // A different seed gives different weights.
  std::vector<float> other(emb.size());
  init_unit_range(t, 0, 43, 0, other.size(), other.data());
  REQUIRE(other[5] != emb[5]);
}

TEST_CASE("LR schedule: linear warmup, cosine to the floor", "[model]") {
  REQUIRE(lr_at(0, 1.0, 10, 100, 0.1) == Approx(0.1));
  REQUIRE(lr_at(9, 1.0, 10, 100, 0.1) == Approx(1.0));
  REQUIRE(lr_at(10, 1.0, 10, 100, 0.1) == Approx(1.0));
  REQUIRE(lr_at(55, 1.0, 10, 100, 0.1) == Approx(0.55));  // half way: (1 + 0.1) / 2
  REQUIRE(lr_at(100, 1.0, 10, 100, 0.1) == Approx(0.1));
  REQUIRE(lr_at(5, 2.0, 0, 10, 0.0) == Approx(1.0));
}

TEST_CASE("the default global batch splits over any number of ranks", "[config]") {
  // Issue 15: a fixed default (8) failed on 3 ranks, or on the Slurm template's 4 with micro-batch 4.
  TrainConfig t;
  for (int world = 1; world <= 64; ++world) {
    REQUIRE_NOTHROW(t.validate(world));
    REQUIRE(t.global_batch(world) == t.micro_batch_size * world);
    REQUIRE(t.grad_accum_steps(world) == 1);
  }
  t.global_batch_size = 24;  // given: used as is, gradient accumulation fills it
  REQUIRE(t.global_batch(3) == 24);
  REQUIRE(t.grad_accum_steps(3) == 2);
  t.global_batch_size = -1;
  REQUIRE_THROWS_WITH(t.validate(1), Catch::Contains("global_batch_size"));
}

TEST_CASE("freeze patterns select tensors by GPT-2 name, and a typo or freezing everything is an error", "[model]") {
  ModelConfig c = model_preset("tiny");
  c.n_layer = 12;  // h.1* must not reach h.10, h.11 unless the glob says so
  ParamTable t(c);
  auto names = [&](const std::vector<bool>& f) {
    std::vector<std::string> out;
    for (size_t i = 0; i < f.size(); ++i)
      if (f[i]) out.push_back(t.tensors()[i].name);
    return out;
  };
  REQUIRE(names(match_frozen(t, {"wte", "wpe"})) == std::vector<std::string>{"wte", "wpe"});
  // fnmatch without FNM_PATHNAME: '*' crosses dots, so h.[0-9].* is every tensor of blocks 0-9 and no other.
  const std::vector<bool> f = match_frozen(t, {"h.[0-9].*"});
  REQUIRE(names(f).size() == 10 * 12);
  REQUIRE(f[size_t(t.find("h.9.mlp.c_proj.bias"))]);
  REQUIRE_FALSE(f[size_t(t.find("h.10.ln_1.weight"))]);
  REQUIRE(names(match_frozen(t, {" h.?.attn.c_attn.weight "})).size() == 10);  // spaces around a pattern ignored
  REQUIRE(match_frozen(t, {"*.bias", "wte"})[size_t(t.find("ln_f.bias"))]);
  REQUIRE_THROWS_WITH(match_frozen(t, {"wte", "h.0.attn.weight"}),
                      Catch::Contains("--freeze pattern 'h.0.attn.weight' matches no tensor") &&
                          Catch::Contains("h.0.attn.c_attn.weight"));
  REQUIRE_THROWS_WITH(match_frozen(t, {"wte", ""}), Catch::Contains("--freeze has an empty pattern"));
  REQUIRE_THROWS_WITH(match_frozen(t, {"*"}), Catch::Contains("--freeze * freezes every tensor"));
  REQUIRE_THROWS_WITH(match_frozen(t, {"wte", "wpe", "h.*", "ln_f.*"}), Catch::Contains("freezes every tensor"));
}
