// Generation: the GPT-2 forward for one sequence with a per-layer K/V cache, and top-k / temperature sampling.
#include "core/generate.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/errors.hpp"
#include "core/rng.hpp"

namespace zt {

FullParams::FullParams(const ParamTable& table, Backend& backend) : table_(table), be_(backend) {
  for (const UnitSpec& u : table.units()) {
    units_.push_back(be_.alloc(u.numel));
    be_.zero(units_.back(), u.numel);
  }
}

FullParams::~FullParams() {
  for (float* p : units_) be_.release(p);
}

float* FullParams::unit_grads(int unit) {
  (void)unit;
  ZT_ASSERT(!"FullParams holds no gradients: generation runs no backward");
  return nullptr;
}

namespace {
constexpr size_t kAlign = 64;  // floats: every buffer starts 256 bytes apart, as in Gpt2's arena
size_t rounded(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
}  // namespace

Generator::Generator(const ParamTable& table, Backend& backend, int max_T)
    : table_(table), be_(backend), max_T_(max_T) {
  const ModelConfig& c = table.config();
  ZT_CHECK(max_T >= 1 && max_T <= c.seq_len, "generation length {} must be in [1, seq_len = {}]", max_T, c.seq_len);
  const size_t T = size_t(max_T), C = size_t(c.d_model), L = size_t(c.n_layer);
  const size_t att = backend.attention_state_elems(1, max_T, c.d_model, c.n_head);
  const size_t sizes[] = {T * C, T * C, T * C, T,         T,         T * 3 * C,
                          att,   T * C, T * C, T * 4 * C, T * 4 * C, size_t(c.padded_vocab())};
  float** slots[] = {&x_, &x2_, &ln_, &mean_, &rstd_, &qkv_, &att_, &atty_, &proj_, &fch_, &fch_gelu_, &logits_};
  size_t total = 2 * L * rounded(T * C);
  for (size_t n : sizes) total += rounded(n);
  arena_ = be_.alloc(total);
  float* p = arena_;
  for (size_t i = 0; i < std::size(slots); ++i) {
    *slots[i] = p;
    p += rounded(sizes[i]);
  }
  for (size_t l = 0; l < L; ++l) {
    k_cache_.push_back(p);
    v_cache_.push_back(p + rounded(T * C));
    p += 2 * rounded(T * C);
  }
  tokens_ = be_.alloc_int(T);
  logits_host_.resize(size_t(c.padded_vocab()));
}

Generator::~Generator() {
  be_.release(arena_);
  be_.release(tokens_);
}

void Generator::forward(UnitProvider& params, const int32_t* tokens, int n, int pos, bool cached) {
  const ModelConfig& c = table_.config();
  const int C = c.d_model, NH = c.n_head, Vp = c.padded_vocab();
  const BlockOffsets& o = table_.block_offsets();
  const int emb = table_.embedding_unit(), fin = table_.final_norm_unit();
  ZT_ASSERT(n >= 1 && pos >= 0 && pos + n <= max_T_);
  be_.tokens_from_host(tokens_, tokens, size_t(n));
  {
    const float* p = params.unit_params(emb);
    // Positions pos .. pos + n - 1: the embedding op adds wpe rows 0 .. n - 1 of the table it is given.
    be_.embedding_forward(x_, tokens_, p + table_.wte_offset(), p + table_.wpe_offset() + size_t(pos) * C, 1, n, C);
    params.release_params(emb);
  }
  // The op sequence of Gpt2::step's forward, for rows [pos, pos + n) only: x is the residual stream, x2 the stream
  // after attention, proj the last projection's output (each residual add fused into the LayerNorm after it).
  for (int l = 0; l < c.n_layer; ++l) {
    const float* p = params.unit_params(table_.block_unit(l));
    if (l == 0)
      be_.layernorm_forward(ln_, mean_, rstd_, x_, p + o.ln_1_w, p + o.ln_1_b, n, C);
    else
      be_.residual_layernorm_forward(x_, ln_, mean_, rstd_, x2_, proj_, p + o.ln_1_w, p + o.ln_1_b, n, C);
    be_.matmul_forward(qkv_, ln_, p + o.attn_w, p + o.attn_b, n, C, 3 * C, false);
    if (cached)
      be_.attention_cached(atty_, k_cache_[size_t(l)], v_cache_[size_t(l)], qkv_, 1, n, pos, max_T_, C, NH);
    else
      be_.attention_forward(atty_, att_, qkv_, 1, n, C, NH);
    be_.matmul_forward(proj_, atty_, p + o.attn_proj_w, p + o.attn_proj_b, n, C, C, false);
    be_.residual_layernorm_forward(x2_, ln_, mean_, rstd_, x_, proj_, p + o.ln_2_w, p + o.ln_2_b, n, C);
    be_.matmul_forward(fch_, ln_, p + o.fc_w, p + o.fc_b, n, C, 4 * C, false);
    be_.gelu_forward(fch_gelu_, fch_, size_t(n) * 4 * C);
    be_.matmul_forward(proj_, fch_gelu_, p + o.fc_proj_w, p + o.fc_proj_b, n, 4 * C, C, false);
    params.release_params(table_.block_unit(l));
  }
  // Only the last row's logits are wanted: its final residual add, ln_f and LM-head product.
  const size_t last = size_t(n - 1) * C;
  {
    const float* p = params.unit_params(fin);
    be_.residual_layernorm_forward(x_ + last, ln_, mean_, rstd_, x2_ + last, proj_ + last, p, p + C, 1, C);
    params.release_params(fin);
  }
  {
    const float* p = params.unit_params(emb);
    be_.matmul_forward(logits_, ln_, p + table_.wte_offset(), nullptr, 1, C, Vp, true);
    params.release_params(emb);
  }
  be_.to_host(logits_host_.data(), logits_, size_t(Vp));
  logits_host_.resize(size_t(c.vocab));  // the padded columns are never a token (docs/architecture.md)
}

const std::vector<float>& Generator::feed(UnitProvider& params, const int32_t* tokens, int n) {
  ZT_CHECK(n >= 1 && pos_ + n <= max_T_, "cannot feed {} token(s) at position {}: the generator holds {} positions", n,
           pos_, max_T_);
  logits_host_.resize(size_t(table_.config().padded_vocab()));
  forward(params, tokens, n, pos_, true);
  pos_ += n;
  return logits_host_;
}

const std::vector<float>& Generator::logits_uncached(UnitProvider& params, const int32_t* tokens, int n) {
  ZT_CHECK(n >= 1 && n <= max_T_, "cannot run {} token(s): the generator holds {} positions", n, max_T_);
  logits_host_.resize(size_t(table_.config().padded_vocab()));
  forward(params, tokens, n, 0, false);
  return logits_host_;
}

double sampling_uniform(uint64_t seed, uint64_t index) {
  return double(philox_u64(seed, stable_hash("sample"), index) >> 11) * 0x1.0p-53;
}

int32_t sample_token(const float* logits, int n_vocab, float temperature, int top_k, double u) {
  ZT_CHECK(n_vocab >= 1, "cannot sample from an empty vocabulary");
  if (temperature <= 0.0f) return int32_t(std::max_element(logits, logits + n_vocab) - logits);
  std::vector<int32_t> ids(static_cast<size_t>(n_vocab));
  std::iota(ids.begin(), ids.end(), 0);
  size_t n = ids.size();
  if (top_k > 0 && top_k < n_vocab) {
    n = size_t(top_k);
    std::partial_sort(ids.begin(), ids.begin() + long(n), ids.end(),
                      [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  }
  float mx = logits[ids[0]];
  for (size_t i = 1; i < n; ++i) mx = std::max(mx, logits[ids[i]]);
  // Double: the cumulative sum over 50k probabilities must not lose the small ones.
  std::vector<double> cdf(n);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) {
    sum += std::exp((double(logits[ids[i]]) - double(mx)) / double(temperature));
    cdf[i] = sum;
  }
  const size_t i = size_t(std::upper_bound(cdf.begin(), cdf.end(), u * sum) - cdf.begin());
  return ids[std::min(i, n - 1)];
}

std::vector<int32_t> generate(Generator& gen, UnitProvider& params, const std::vector<int32_t>& prompt,
                              const SamplingOptions& opts, const std::function<void(int32_t)>& on_token) {
  ZT_CHECK(!prompt.empty(), "generation needs at least one prompt token");
  ZT_CHECK(int(prompt.size()) <= gen.max_T(), "the prompt has {} tokens; the model's context holds {}", prompt.size(),
           gen.max_T());
  std::vector<int32_t> seq = prompt;
  gen.reset();
  const std::vector<float>* logits = opts.use_cache ? &gen.feed(params, seq.data(), int(seq.size()))
                                                    : &gen.logits_uncached(params, seq.data(), int(seq.size()));
  const int n_vocab = int(logits->size());
  for (int i = 0; i < opts.max_new_tokens; ++i) {
    const int32_t next =
        sample_token(logits->data(), n_vocab, opts.temperature, opts.top_k, sampling_uniform(opts.seed, uint64_t(i)));
    seq.push_back(next);
    if (on_token) on_token(next);
    if (i + 1 == opts.max_new_tokens || int(seq.size()) >= gen.max_T()) break;
    logits = opts.use_cache ? &gen.feed(params, &next, 1) : &gen.logits_uncached(params, seq.data(), int(seq.size()));
  }
  return seq;
}

}  // namespace zt
