// Generation: the cached attention op against attention_forward, cached against uncached logits, the generator
// against the training forward, and sampling (greedy, top-k, temperature, determinism).
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <vector>

#include "core/errors.hpp"
#include "core/generate.hpp"
#include "core/gpt2.hpp"
#include "core/ops.hpp"
#include "core/tokenizer.hpp"

namespace {

using zt::ModelConfig;

std::vector<float> random_floats(size_t n, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

float max_abs(const std::vector<float>& v) {
  float m = 0;
  for (float x : v) m = std::max(m, std::abs(x));
  return m;
}

float max_abs_diff(const float* a, const float* b, size_t n) {
  float m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

// The cached op and attention_forward add the same products in the same order (dot products in dimension order,
// the weighted V rows in position order); only the compiler's use of FMA and of a vector exp may differ, a few ulp
// of these O(1) outputs. 1e-5 absolute is ~100 ulp; a wrong row (a missed position, the wrong scale) moves them by
// 1e-2 or more.
constexpr float kAttentionTol = 1e-5f;

}  // namespace

TEST_CASE("attention_cached: prefill, chunks and single rows equal attention_forward's rows", "[generate][ops]") {
  const int B = 2, T = 13, C = 24, NH = 3, max_T = 16;  // head size 8; T not a multiple of any tile
  const std::vector<float> qkv = random_floats(size_t(B) * T * 3 * C, 17, 1.5f);
  std::vector<float> want(size_t(B) * T * C), att(size_t(B) * NH * T * T);
  zt::cpu::attention_forward(want.data(), att.data(), qkv.data(), B, T, C, NH);
  for (const std::vector<int>& chunks : {std::vector<int>{T}, std::vector<int>{5, 1, 7}, std::vector<int>(T, 1)}) {
    std::vector<float> kc(size_t(B) * max_T * C, NAN), vc(kc), got(size_t(B) * T * C, NAN);
    int pos = 0;
    for (int n : chunks) {
      // The op takes the chunk's rows of every sequence packed [B, n, 3C]; its output is packed the same way.
      std::vector<float> in(size_t(B) * n * 3 * C), out(size_t(B) * n * C);
      for (int b = 0; b < B; ++b)
        std::copy_n(qkv.begin() + long((size_t(b) * T + pos) * 3 * C), size_t(n) * 3 * C,
                    in.begin() + long(size_t(b) * n * 3 * C));
      zt::cpu::attention_cached(out.data(), kc.data(), vc.data(), in.data(), B, n, pos, max_T, C, NH);
      for (int b = 0; b < B; ++b)
        std::copy_n(out.begin() + long(size_t(b) * n * C), size_t(n) * C,
                    got.begin() + long((size_t(b) * T + pos) * C));
      pos += n;
    }
    INFO("chunks of " << chunks.size());
    CHECK(max_abs_diff(got.data(), want.data(), want.size()) <= kAttentionTol);
  }
}

TEST_CASE("matmul with one row (a token at a time): the matrix-vector path equals the naive sums", "[generate][ops]") {
  const int C = 40, OC = 300;  // three column tiles, the last partial
  const std::vector<float> x = random_floats(C, 1, 1.0f), W = random_floats(size_t(C) * OC, 2, 1.0f),
                           bias = random_floats(OC, 3, 1.0f), dout = random_floats(OC, 4, 1.0f);
  for (bool transposed : {false, true})
    for (bool with_bias : {false, true}) {
      INFO("weight_transposed=" << transposed << " bias=" << with_bias);
      auto w = [&](int c, int o) { return double(transposed ? W[size_t(o) * C + c] : W[size_t(c) * OC + o]); };
      std::vector<float> out(OC, NAN), dinp(C, NAN), dW(W.size(), 0.0f);
      zt::cpu::matmul_forward(out.data(), x.data(), W.data(), with_bias ? bias.data() : nullptr, 1, C, OC, transposed);
      zt::cpu::matmul_backward<float>(dinp.data(), dW.data(), nullptr, dout.data(), x.data(), W.data(), 1, C, OC,
                                      transposed);
      // Sums of 40 (forward) and 300 (dinp) products of O(1) values in float: 1e-4 is ~100 ulp of their size.
      for (int o = 0; o < OC; ++o) {
        double s = with_bias ? bias[size_t(o)] : 0;
        for (int c = 0; c < C; ++c) s += x[size_t(c)] * w(c, o);
        CHECK(std::abs(out[size_t(o)] - s) <= 1e-4);
      }
      for (int c = 0; c < C; ++c) {
        double s = 0;
        for (int o = 0; o < OC; ++o) s += dout[size_t(o)] * w(c, o);
        CHECK(std::abs(dinp[size_t(c)] - s) <= 1e-4);
      }
      const size_t probe = transposed ? size_t(7) * C + 5 : size_t(5) * OC + 7;  // dW(c=5, o=7) = x[5] * dout[7]
      CHECK(dW[probe] == x[5] * dout[7]);
    }
}

namespace {

/// A small model with random parameters (GPT-2 init), whole in one process on the CPU backend.
struct SmallModel {
  ModelConfig cfg;
  zt::ParamTable table;
  std::unique_ptr<zt::Backend> be = zt::make_cpu_backend(1);
  zt::FullParams params;
  explicit SmallModel(ModelConfig c) : cfg(c), table(c), params(table, *be) {
    for (size_t u = 0; u < table.units().size(); ++u)
      zt::init_unit_range(table, int(u), 99, 0, table.units()[u].numel, params.unit(int(u)));
  }
};

ModelConfig small_config() {
  ModelConfig c;
  c.n_layer = 2;
  c.n_head = 2;
  c.d_model = 32;
  c.vocab = 200;  // padded to 256: the padded logits must never be offered
  c.seq_len = 24;
  return c;
}

}  // namespace

TEST_CASE("generation: cached logits equal uncached ones at every position", "[generate]") {
  SmallModel m(small_config());
  std::mt19937_64 rng(5);
  std::vector<int32_t> tokens(20);
  for (auto& t : tokens) t = int32_t(rng() % 200);
  zt::Generator gen(m.table, *m.be, m.cfg.seq_len);
  // A prompt of 7 through the cache at once, then one token at a time.
  std::vector<float> cached = gen.feed(m.params, tokens.data(), 7);
  REQUIRE(cached.size() == 200);
  for (int n = 7; n <= 20; ++n) {
    const std::vector<float> full = gen.logits_uncached(m.params, tokens.data(), n);
    INFO("sequence length " << n);
    // Logits are O(1) sums over d_model products; the two paths differ only in the attention op's rounding (above)
    // and in the matmuls' row counts. 1e-5 relative to the largest logit.
    CHECK(max_abs_diff(cached.data(), full.data(), full.size()) <= 1e-5f * max_abs(full));
    if (n < 20) cached = gen.feed(m.params, &tokens[size_t(n)], 1);
  }
  CHECK(gen.position() == 20);
  CHECK_THROWS_WITH(gen.feed(m.params, tokens.data(), 5), Catch::Contains("holds 24 positions"));
}

TEST_CASE("generation: the last position's logits give the training forward's loss for that token", "[generate]") {
  SmallModel m(small_config());
  const int T = m.cfg.seq_len;
  std::mt19937_64 rng(8);
  std::vector<int32_t> inputs(static_cast<size_t>(T)), targets(static_cast<size_t>(T));
  for (int t = 0; t < T; ++t) inputs[size_t(t)] = int32_t(rng() % 200);
  for (int t = 0; t < T; ++t) targets[size_t(t)] = t + 1 < T ? inputs[size_t(t) + 1] : 7;
  zt::Gpt2 model(m.table, *m.be, 1, T);
  model.step(m.params, inputs.data(), targets.data(), false, 0.0f);
  zt::Generator gen(m.table, *m.be, T);
  for (int n : {1, 9, T}) {
    const std::vector<float> logits = gen.logits_uncached(m.params, inputs.data(), n);
    double mx = logits[0], sum = 0;
    for (float x : logits) mx = std::max(mx, double(x));
    for (float x : logits) sum += std::exp(double(x) - mx);
    const double loss = mx + std::log(sum) - logits[size_t(targets[size_t(n) - 1])];
    INFO("position " << n - 1);
    // The same model, op for op, on the rows up to n; cross-entropy ~5.3 here, recomputed in double.
    CHECK(std::abs(loss - double(model.token_losses()[size_t(n) - 1])) <= 1e-5 * loss);
  }
}

TEST_CASE("sample_token: greedy, top-k, temperature and the uniform draw", "[generate]") {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f};
  CHECK(zt::sample_token(logits.data(), 4, 0.0f, 0, 0.99) == 1);  // greedy: the first of the tied maxima
  for (double u : {0.0, 0.3, 0.999}) CHECK(zt::sample_token(logits.data(), 4, 1.0f, 1, u) == 1);
  CHECK(zt::sample_token(logits.data(), 4, 1.0f, 2, 0.49) == 1);  // top-2: ids 1 and 3, equally likely
  CHECK(zt::sample_token(logits.data(), 4, 1.0f, 2, 0.51) == 3);
  CHECK(zt::sample_token(logits.data(), 3, 1.0f, 0, 0.999999) == 2);  // n_vocab 3: id 3 is padding, never drawn
  // p = (1/4, 3/4) for logits (0, ln 3) at temperature 1; at temperature 2 the odds are sqrt(3): p0 = 0.366.
  const std::vector<float> two = {0.0f, std::log(3.0f)};
  CHECK(zt::sample_token(two.data(), 2, 1.0f, 0, 0.24) == 0);
  CHECK(zt::sample_token(two.data(), 2, 1.0f, 0, 0.26) == 1);
  CHECK(zt::sample_token(two.data(), 2, 2.0f, 0, 0.36) == 0);
  CHECK(zt::sample_token(two.data(), 2, 2.0f, 0, 0.37) == 1);
  CHECK(zt::sampling_uniform(1, 0) == zt::sampling_uniform(1, 0));
  CHECK(zt::sampling_uniform(1, 0) != zt::sampling_uniform(2, 0));
  CHECK(zt::sampling_uniform(1, 0) != zt::sampling_uniform(1, 1));
}

TEST_CASE("generate: deterministic for a seed, the cache changes nothing, the context bounds the length",
          "[generate]") {
  SmallModel m(small_config());
  zt::Generator gen(m.table, *m.be, m.cfg.seq_len);
  zt::SamplingOptions opts;
  opts.max_new_tokens = 12;
  opts.top_k = 50;
  opts.seed = 42;
  const std::vector<int32_t> prompt = {3, 141, 59};
  const auto a = zt::generate(gen, m.params, prompt, opts);
  CHECK(a.size() == 15);
  CHECK(std::equal(prompt.begin(), prompt.end(), a.begin()));
  CHECK(zt::generate(gen, m.params, prompt, opts) == a);
  for (int32_t t : a) CHECK(t < 200);
  opts.use_cache = false;
  CHECK(zt::generate(gen, m.params, prompt, opts) == a);
  opts.use_cache = true;
  opts.seed = 43;
  CHECK(zt::generate(gen, m.params, prompt, opts) != a);
  opts.max_new_tokens = 100;
  CHECK(zt::generate(gen, m.params, prompt, opts).size() == size_t(m.cfg.seq_len));
}

TEST_CASE("llm.c tokenizer files: decode, greedy encode, and malformed files named", "[generate]") {
  // The test's own writer of llm.c's format: uint32 header[256] (magic, version 2, vocab, eot), then length + bytes.
  const std::vector<std::string> pieces = {"a", "b", "ab", "abc", " ", "<|end|>"};
  char path[] = "/tmp/zt_tokenizer_XXXXXX";
  const int fd = ::mkstemp(path);
  ::close(fd);
  auto write = [&](uint32_t magic, uint32_t version, size_t drop_bytes) {
    uint32_t header[256] = {magic, version, uint32_t(pieces.size()), 5};
    std::string bytes(reinterpret_cast<const char*>(header), sizeof(header));
    for (const auto& p : pieces) bytes += char(p.size()) + p;
    std::ofstream(path, std::ios::binary) << bytes.substr(0, bytes.size() - drop_bytes);
  };
  write(20240328, 2, 0);
  const zt::Tokenizer tok = zt::Tokenizer::load(path);
  CHECK(tok.vocab_size() == 6);
  CHECK(tok.eot() == 5);
  CHECK(tok.decode({3, 4, 0, 5}) == "abc a<|end|>");
  CHECK(tok.encode("abcab ba") == std::vector<int32_t>{3, 2, 4, 1, 0});  // longest match first
  CHECK_THROWS_WITH(tok.encode("abx"), Catch::Contains("no token for byte 0x78"));
  CHECK_THROWS_WITH(tok.piece(6), Catch::Contains("outside tokenizer"));
  write(20240326, 2, 0);
  CHECK_THROWS_WITH(zt::Tokenizer::load(path), Catch::Contains(path) && Catch::Contains("magic 20240326 (header[0])"));
  write(20240328, 3, 0);
  CHECK_THROWS_WITH(zt::Tokenizer::load(path), Catch::Contains("version 3 (header[1])"));
  write(20240328, 2, 3);
  CHECK_THROWS_WITH(zt::Tokenizer::load(path), Catch::Contains("truncated at token 5 of 6"));
  std::remove(path);
  CHECK(zt::decode_bytes({104, 105}) == "hi");
  CHECK(zt::encode_bytes("hi", 256) == std::vector<int32_t>{104, 105});
  CHECK_THROWS_WITH(zt::encode_bytes("hi", 100), Catch::Contains("byte 0x68"));
  CHECK(zt::escape_bytes(std::string("a\n\x01\\", 4)) == "a\\n\\x01\\\\");
}
