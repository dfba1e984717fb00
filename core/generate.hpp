// Text generation over the Backend contract: a forward pass with a K/V cache (or, for reference, without), the
// model's whole parameters in one process, and deterministic top-k / temperature sampling.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "core/backend.hpp"
#include "core/gpt2.hpp"
#include "core/model.hpp"

namespace zt {

/// Every unit's parameters, whole, in backend memory (what a single process generating text holds).
class FullParams final : public UnitProvider {
 public:
  /// Zero-filled buffers of each unit's numel.
  FullParams(const ParamTable& table, Backend& backend);
  ~FullParams() override;
  FullParams(const FullParams&) = delete;
  FullParams& operator=(const FullParams&) = delete;

  const ParamTable& table() const { return table_; }
  Backend& backend() { return be_; }
  /// The unit's flat buffer (backend memory, table.units()[unit].numel floats) to fill.
  float* unit(int unit) { return units_[size_t(unit)]; }

  const float* unit_params(int unit) override { return units_[size_t(unit)]; }
  void release_params(int unit) override { (void)unit; }
  /// Generation has no backward pass: calling this is a bug.
  float* unit_grads(int unit) override;
  void grads_ready(int unit) override { (void)unit; }

 private:
  const ParamTable& table_;
  Backend& be_;
  std::vector<float*> units_;
};

/// Forward passes of one sequence for generation. With the cache, feed() runs only the new tokens (their K and V
/// rows are kept per layer); without it, logits_uncached() recomputes the whole prefix (the reference the cache is
/// tested against, and what --no_kv_cache runs).
class Generator {
 public:
  /// Buffers for sequences of up to max_T tokens (at most the model's seq_len).
  Generator(const ParamTable& table, Backend& backend, int max_T);
  ~Generator();
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  int max_T() const { return max_T_; }
  /// Tokens fed since the last reset() (the next token's position).
  int position() const { return pos_; }
  /// Empties the cache.
  void reset() { pos_ = 0; }
  /// Feeds tokens[0, n) at positions [position(), +n) through the cache; returns the logits (host, the model's
  /// `vocab` real entries) that predict the token after the last one.
  const std::vector<float>& feed(UnitProvider& params, const int32_t* tokens, int n);
  /// The same logits for the sequence tokens[0, n) computed from scratch (attention_forward over all n rows).
  const std::vector<float>& logits_uncached(UnitProvider& params, const int32_t* tokens, int n);

 private:
  /// Rows [pos, pos + n) through every block; attention from the cache when `cached`, else over rows [0, n).
  void forward(UnitProvider& params, const int32_t* tokens, int n, int pos, bool cached);

  const ParamTable& table_;
  Backend& be_;
  int max_T_;
  int pos_ = 0;
  float* arena_ = nullptr;
  int32_t* tokens_ = nullptr;
  float *x_, *x2_, *ln_, *mean_, *rstd_, *qkv_, *att_, *atty_, *proj_, *fch_, *fch_gelu_, *logits_;
  std::vector<float*> k_cache_, v_cache_;  // per layer, [max_T, C]
  std::vector<float> logits_host_;
};

/// How to pick each next token.
struct SamplingOptions {
  int max_new_tokens = 64;
  float temperature = 1.0f;  ///< <= 0: greedy (argmax)
  int top_k = 0;             ///< sample among the k most likely tokens; 0: the whole vocabulary
  uint64_t seed = 1337;
  bool use_cache = true;  ///< false: recompute the whole sequence for every token (slow; a reference)
};

/// The next token from `logits` (n_vocab real entries): greedy when temperature <= 0; otherwise softmax of
/// logits / temperature over the top_k largest (ties: lower id first; 0 = all), inverted at `u` in [0, 1).
int32_t sample_token(const float* logits, int n_vocab, float temperature, int top_k, double u);
/// The uniform draw for the `index`-th sampled token under `seed` (Philox: any process, any platform).
double sampling_uniform(uint64_t seed, uint64_t index);

/// Appends up to max_new_tokens sampled tokens to `prompt` (non-empty) and returns the whole sequence; stops at
/// the generator's max_T. `on_token` (optional) sees each new token as it is chosen.
std::vector<int32_t> generate(Generator& gen, UnitProvider& params, const std::vector<int32_t>& prompt,
                              const SamplingOptions& opts, const std::function<void(int32_t)>& on_token = {});

}  // namespace zt
