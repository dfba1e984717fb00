// The built-in synthetic corpus: a sparse order-2 Markov chain mixed with lexicon words and copied spans.
//
// Why this shape: a tiny transformer should show a falling loss within tens of steps, so the corpus has
// structure at every range it can pick up in order — a skewed unigram (learned first), sparse order-2
// successors (bigram/trigram statistics), fixed multi-token "words" (memorisation), and spans copied from
// recent context (what induction heads learn). Its entropy rate is far below log(n_symbols).
#include <array>
#include <cmath>
#include <map>
#include <mutex>

#include "core/data.hpp"
#include "core/errors.hpp"
#include "core/rng.hpp"

namespace zt {
namespace {

// Fixed, independent of any training seed: every run and every rank sees the same corpus.
constexpr uint64_t kCorpusSeed = 0x5a54'5359'4e54'4800ull;
constexpr int kLexiconWords = 192;
constexpr int kMaxSuccessors = 4;

/// A Philox stream read sequentially, 128 bits per block.
class PhiloxStream {
 public:
  explicit PhiloxStream(uint64_t stream) : stream_(stream) {}
  uint32_t next_u32() {
    if (used_ == 4) {
      block_ = philox4x32({uint32_t(counter_), uint32_t(counter_ >> 32), uint32_t(stream_), uint32_t(stream_ >> 32)},
                          kCorpusSeed);
      ++counter_;
      used_ = 0;
    }
    return block_[used_++];
  }
  /// Uniform in [0, 1).
  double unit() { return next_u32() * (1.0 / 4294967296.0); }
  /// Uniform integer in [lo, hi] (the tiny modulo bias is irrelevant for a corpus generator).
  int between(int lo, int hi) { return lo + int(next_u32() % uint32_t(hi - lo + 1)); }
  /// Skewed towards small values: density of v roughly proportional to v^(-2/3), so the unigram is far from flat.
  int skewed(int n) {
    double u = unit();
    return std::min(n - 1, int(n * u * u * u));
  }

 private:
  uint64_t stream_;
  uint64_t counter_ = 0;
  std::array<uint32_t, 4> block_{};
  int used_ = 4;
};

std::vector<uint8_t> generate(int n_symbols) {
  const int A = n_symbols;
  PhiloxStream rng(stable_hash("synthetic-corpus"));

  // Sparse order-2 transition table: each context (a, b) has 1..4 successors with fixed skewed probabilities.
  struct Successors {
    uint8_t n;
    std::array<uint8_t, kMaxSuccessors> tok;
  };
  static constexpr double kCumulative[kMaxSuccessors][kMaxSuccessors] = {
      {1.0, 1.0, 1.0, 1.0}, {0.75, 1.0, 1.0, 1.0}, {0.6, 0.9, 1.0, 1.0}, {0.5, 0.75, 0.9, 1.0}};
  std::vector<Successors> table(size_t(A) * A);
  for (auto& s : table) {
    s.n = uint8_t(1 + rng.next_u32() % kMaxSuccessors);
    for (int j = 0; j < kMaxSuccessors; ++j) s.tok[j] = uint8_t(rng.skewed(A));
  }

  // Lexicon of short words; frequent words are drawn far more often than rare ones.
  std::vector<std::vector<uint8_t>> lexicon(kLexiconWords);
  for (auto& w : lexicon) {
    w.resize(size_t(rng.between(2, 7)));
    for (auto& t : w) t = uint8_t(rng.skewed(A));
  }

  std::vector<uint8_t> out;
  out.reserve(kSyntheticTokens);
  out.push_back(0);
  out.push_back(uint8_t(1 % A));
  auto markov_step = [&] {
    const Successors& s = table[size_t(out[out.size() - 2]) * A + out.back()];
    double u = rng.unit();
    int j = 0;
    while (j + 1 < s.n && u >= kCumulative[s.n - 1][j]) ++j;
    out.push_back(s.tok[j]);
  };
  while (out.size() < kSyntheticTokens) {
    double kind = rng.unit();
    if (kind < 0.5) {  // Markov run
      for (int n = rng.between(4, 32); n > 0; --n) markov_step();
    } else if (kind < 0.85) {  // a lexicon word
      const auto& w = lexicon[size_t(rng.skewed(kLexiconWords))];
      out.insert(out.end(), w.begin(), w.end());
    } else if (out.size() >= 512) {  // copy a recent span (may overlap itself, like LZ77)
      size_t from = out.size() - size_t(rng.between(16, 256));
      for (int n = rng.between(8, 32); n > 0; --n) out.push_back(out[from++]);
    }
  }
  out.resize(kSyntheticTokens);
  return out;
}

}  // namespace

std::shared_ptr<const std::vector<uint8_t>> synthetic_corpus(int n_symbols) {
  ZT_CHECK(n_symbols >= 2 && n_symbols <= 256, "synthetic corpus needs 2..256 symbols, got {}", n_symbols);
  static std::mutex mutex;
  static std::map<int, std::shared_ptr<const std::vector<uint8_t>>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[n_symbols];
  if (!slot) slot = std::make_shared<const std::vector<uint8_t>>(generate(n_symbols));
  return slot;
}

}  // namespace zt
