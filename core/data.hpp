// Token sources (built-in synthetic corpus, byte-level text, llm.c shards) and the deterministic batch loader.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace zt {

/// A flat sequence of tokens in [0, vocab).
class TokenSource {
 public:
  virtual ~TokenSource() = default;
  /// Number of tokens in the whole source.
  virtual size_t n_tokens() const = 0;
  /// Copies tokens [offset, offset + count) into out; the range must lie inside the source (else aborts).
  virtual void read(size_t offset, size_t count, int32_t* out) const = 0;
  /// One line for logs: the kind of source, where it came from, and its size.
  virtual std::string describe() const = 0;
};

/// "synthetic" -> built-in corpus; a path to an existing regular file (not *.bin) -> bytes as tokens 0..255;
/// anything else ending in .bin or containing * ? [ -> glob of llm.c shards (sorted bytewise, concatenated).
/// Throws zt::Error (naming the path/glob and the problem) on: no file matched, unreadable file, bad llm.c magic
/// (20240520) / version (1) / size (file bytes != 256*4 + 2*count), a token >= vocab, text data with vocab < 256,
/// an empty source. (A corpus shorter than seq_len+1 tokens is rejected by DataLoader, which knows seq_len.)
std::unique_ptr<TokenSource> open_token_source(const std::string& spec, int vocab);

/// Number of tokens in the built-in synthetic corpus (2^21).
constexpr size_t kSyntheticTokens = size_t(1) << 21;

/// The built-in synthetic corpus over symbols [0, n_symbols), n_symbols in [2, 256]: a pure function of
/// n_symbols (fixed internal seed), generated once per n_symbols and cached for the life of the process.
std::shared_ptr<const std::vector<uint8_t>> synthetic_corpus(int n_symbols);

/// Deterministic batches of fixed-length sequences: the order is a pure function of (seed, epoch), and a
/// global batch is addressed by its index alone, so the saved cursor is independent of world size.
class DataLoader {
 public:
  /// Sequences are windows of seq_len+1 tokens at stride seq_len over the source (llm.c convention).
  /// If val is null, the LAST max(1, round(val_fraction*n_seq)) sequences are held out for validation
  /// (val_fraction may be 0 -> no validation set); the only token they share with training is the
  /// boundary token, which is a training target and a validation input, never a validation target.
  /// Throws if a source is shorter than seq_len+1 tokens or fewer than 1 training sequence remains.
  DataLoader(std::shared_ptr<const TokenSource> train, std::shared_ptr<const TokenSource> val, int seq_len,
             double val_fraction, uint64_t seed);

  /// Training sequences per epoch.
  int64_t n_train_sequences() const { return n_train_; }
  /// Validation sequences (0 when there is no validation set).
  int64_t n_val_sequences() const { return n_val_; }
  /// Tokens per sequence row (inputs and targets each hold seq_len tokens per sequence).
  int seq_len() const { return seq_len_; }
  /// The seed the epoch permutations are keyed with.
  uint64_t seed() const { return seed_; }
  /// One line for logs: sources, split and sequence counts.
  std::string describe() const;

  /// Fills inputs/targets [n_seqs * seq_len] with sequences first_seq .. first_seq+n_seqs-1 of training global
  /// batch `batch_index` (global batch = global_batch_size sequences). Pure function of (seed, batch_index,
  /// global_batch_size): sequence k = batch_index*global_batch_size + i of an endless stream whose epoch
  /// e = k / n_train is a Philox-keyed (seed, e) permutation of the training sequences. Any rank can
  /// compute any slice without the others. Thread-safe.
  void train_batch(int64_t batch_index, int global_batch_size, int first_seq, int n_seqs, int32_t* inputs,
                   int32_t* targets) const;
  /// Same for validation, unshuffled, wrapping around. Throws when there is no validation set.
  void val_batch(int64_t batch_index, int global_batch_size, int first_seq, int n_seqs, int32_t* inputs,
                 int32_t* targets) const;
  /// Epoch of the first sequence of a training global batch (for logging).
  int64_t epoch_of(int64_t batch_index, int global_batch_size) const;
  /// Training sequence (index into the training split) at position `k` of the endless shuffled stream.
  int64_t train_sequence_at(int64_t k) const;

 private:
  /// The permutation of training sequences for `epoch` (cached; the two most recent epochs are kept).
  std::shared_ptr<const std::vector<uint32_t>> epoch_permutation(int64_t epoch) const;
  /// Writes sequence `seq` of `src` (token offset seq*seq_len) as one row of inputs and targets.
  void read_sequence(const TokenSource& src, int64_t seq, int32_t* inputs, int32_t* targets) const;

  std::shared_ptr<const TokenSource> train_;
  std::shared_ptr<const TokenSource> val_;  ///< equals train_ when validation is held out of it
  int seq_len_;
  uint64_t seed_;
  int64_t n_train_ = 0;
  int64_t n_val_ = 0;
  int64_t val_first_seq_ = 0;  ///< index in val_ of validation sequence 0

  mutable std::mutex perm_mutex_;
  mutable int64_t perm_epoch_[2] = {-1, -1};
  mutable std::shared_ptr<const std::vector<uint32_t>> perm_[2];
};

}  // namespace zt
