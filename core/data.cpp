// Token sources (synthetic, mmapped text, mmapped llm.c shards by glob) and the deterministic DataLoader.
#include "core/data.hpp"

#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "core/errors.hpp"
#include "core/rng.hpp"

namespace zt {
namespace {

constexpr int32_t kShardMagic = 20240520;
constexpr int32_t kShardVersion = 1;
constexpr size_t kShardHeaderBytes = 256 * sizeof(int32_t);

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// A whole file mapped read-only; empty files have no mapping.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) : path_(path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    ZT_CHECK(fd >= 0, "cannot open data file '{}': {}", path, std::strerror(errno));
    struct stat st {};
    const bool stat_ok = ::fstat(fd, &st) == 0;
    const int err = errno;
    if (!stat_ok || !S_ISREG(st.st_mode)) {
      ::close(fd);
      ZT_FAIL("cannot read data file '{}': {}", path, stat_ok ? "not a regular file" : std::strerror(err));
    }
    n_bytes_ = size_t(st.st_size);
    if (n_bytes_ > 0) {
      void* p = ::mmap(nullptr, n_bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
      int err = errno;
      ::close(fd);
      ZT_CHECK(p != MAP_FAILED, "cannot mmap data file '{}' ({} bytes): {}", path, n_bytes_, std::strerror(err));
      data_ = static_cast<const unsigned char*>(p);
      // Sequences are read in shuffled order: tell the kernel not to read ahead much.
      ::madvise(p, n_bytes_, MADV_RANDOM);
    } else {
      ::close(fd);
    }
  }
  ~MappedFile() {
    if (data_) ::munmap(const_cast<unsigned char*>(data_), n_bytes_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const unsigned char* data() const { return data_; }
  size_t n_bytes() const { return n_bytes_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const unsigned char* data_ = nullptr;
  size_t n_bytes_ = 0;
};

/// The built-in corpus, shared with every other source of the same alphabet.
class SyntheticSource final : public TokenSource {
 public:
  explicit SyntheticSource(int n_symbols) : n_symbols_(n_symbols), tokens_(synthetic_corpus(n_symbols)) {}
  size_t n_tokens() const override { return tokens_->size(); }
  void read(size_t offset, size_t count, int32_t* out) const override {
    ZT_ASSERT(offset <= tokens_->size() && count <= tokens_->size() - offset);
    std::copy_n(tokens_->data() + offset, count, out);
  }
  std::string describe() const override {
    return fmt::format("synthetic corpus ({} tokens over {} symbols)", tokens_->size(), n_symbols_);
  }

 private:
  int n_symbols_;
  std::shared_ptr<const std::vector<uint8_t>> tokens_;
};

/// A file whose bytes are the tokens (byte-level text).
class TextSource final : public TokenSource {
 public:
  explicit TextSource(const std::string& path) : file_(path) {
    ZT_CHECK(file_.n_bytes() > 0, "text data file '{}' is empty", path);
  }
  size_t n_tokens() const override { return file_.n_bytes(); }
  void read(size_t offset, size_t count, int32_t* out) const override {
    ZT_ASSERT(offset <= file_.n_bytes() && count <= file_.n_bytes() - offset);
    std::copy_n(file_.data() + offset, count, out);
  }
  std::string describe() const override {
    return fmt::format("text file '{}' ({} byte tokens)", file_.path(), file_.n_bytes());
  }

 private:
  MappedFile file_;
};

/// llm.c token shards concatenated in order; a global offset maps to (shard, local offset).
class ShardSource final : public TokenSource {
 public:
  ShardSource(const std::string& pattern, const std::vector<std::string>& paths, int vocab) : pattern_(pattern) {
    for (const auto& path : paths) {
      auto file = std::make_unique<MappedFile>(path);
      const size_t n_bytes = file->n_bytes();
      ZT_CHECK(n_bytes >= kShardHeaderBytes, "llm.c shard '{}' is truncated: {} bytes, shorter than the {}-byte header",
               path, n_bytes, kShardHeaderBytes);
      int32_t header[3];
      std::memcpy(header, file->data(), sizeof(header));
      ZT_CHECK(header[0] == kShardMagic, "llm.c shard '{}' has bad magic {} (expected {}); not an llm.c token shard",
               path, header[0], kShardMagic);
      ZT_CHECK(header[1] == kShardVersion, "llm.c shard '{}' has unsupported version {} (expected {}: uint16 tokens)",
               path, header[1], kShardVersion);
      ZT_CHECK(header[2] >= 0, "llm.c shard '{}' has a negative token count {} in its header", path, header[2]);
      const size_t n_tok = size_t(header[2]);
      const size_t expected = kShardHeaderBytes + n_tok * sizeof(uint16_t);
      ZT_CHECK(
          n_bytes == expected,
          "llm.c shard '{}' has size {} bytes, but its header promises {} tokens = {} bytes (truncated or corrupt)",
          path, n_bytes, n_tok, expected);
      const uint16_t* tok = reinterpret_cast<const uint16_t*>(file->data() + kShardHeaderBytes);
      if (vocab <= 65535) {
        // A stray token would index past the embedding table much later; say which file and where now.
        // A branch-free max vectorises; the position is looked up only when something is out of range.
        uint16_t max_tok = 0;
        for (size_t i = 0; i < n_tok; ++i) max_tok = std::max(max_tok, tok[i]);
        if (max_tok >= vocab) {
          size_t i = 0;
          while (tok[i] < vocab) ++i;
          ZT_FAIL("llm.c shard '{}' has token {} at position {}, which is >= vocab {}", path, tok[i], i, vocab);
        }
      }
      if (n_tok == 0) continue;
      starts_.push_back(total_);
      total_ += n_tok;
      tokens_.push_back(tok);
      files_.push_back(std::move(file));
    }
    ZT_CHECK(total_ > 0, "llm.c shards matching '{}' hold no tokens", pattern);
    n_files_ = paths.size();
  }
  size_t n_tokens() const override { return total_; }
  void read(size_t offset, size_t count, int32_t* out) const override {
    ZT_ASSERT(offset <= total_ && count <= total_ - offset);
    // Last shard whose start is <= offset.
    size_t s = size_t(std::upper_bound(starts_.begin(), starts_.end(), offset) - starts_.begin()) - 1;
    while (count > 0) {
      size_t local = offset - starts_[s];
      size_t shard_len = (s + 1 < starts_.size() ? starts_[s + 1] : total_) - starts_[s];
      size_t n = std::min(count, shard_len - local);
      std::copy_n(tokens_[s] + local, n, out);
      out += n;
      offset += n;
      count -= n;
      ++s;
    }
  }
  std::string describe() const override {
    return fmt::format("llm.c shards '{}' ({} files, {} tokens)", pattern_, n_files_, total_);
  }

 private:
  std::string pattern_;
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::vector<const uint16_t*> tokens_;
  std::vector<size_t> starts_;
  size_t total_ = 0;
  size_t n_files_ = 0;
};

std::vector<std::string> glob_files(const std::string& pattern) {
  glob_t g{};
  int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
  std::vector<std::string> paths;
  if (rc == 0)
    for (size_t i = 0; i < g.gl_pathc; ++i) paths.emplace_back(g.gl_pathv[i]);
  ::globfree(&g);
  ZT_CHECK(rc == 0 || rc == GLOB_NOMATCH, "cannot expand data glob '{}' ({})", pattern,
           rc == GLOB_ABORTED ? "read error" : "out of memory");
  ZT_CHECK(!paths.empty(), "no file matched data glob '{}'", pattern);
  // Bytewise, not locale collation: every host must concatenate shards in the same order.
  std::sort(paths.begin(), paths.end());
  return paths;
}

int64_t sequences_in(const TokenSource& src, int seq_len) {
  ZT_CHECK(src.n_tokens() >= size_t(seq_len) + 1, "{} is too short: {} tokens, but seq_len {} needs at least {}",
           src.describe(), src.n_tokens(), seq_len, seq_len + 1);
  return int64_t((src.n_tokens() - 1) / size_t(seq_len));
}

/// Unbiased draw in [0, range) for Fisher-Yates step i: Lemire's multiply-shift on a 128-bit product, with
/// rejection of the (probability < range/2^64) biased low words; redraws use counter i + (attempt << 32).
uint64_t uniform_below(uint64_t seed, uint64_t stream, uint64_t i, uint64_t range) {
  uint64_t x = philox_u64(seed, stream, i);
  unsigned __int128 m = (unsigned __int128)x * range;
  uint64_t low = uint64_t(m);
  if (low < range) {
    const uint64_t threshold = (0 - range) % range;
    for (uint64_t attempt = 1; low < threshold; ++attempt) {
      x = philox_u64(seed, stream, i + (attempt << 32));
      m = (unsigned __int128)x * range;
      low = uint64_t(m);
    }
  }
  return uint64_t(m >> 64);
}

}  // namespace

std::unique_ptr<TokenSource> open_token_source(const std::string& spec, int vocab) {
  ZT_CHECK(vocab >= 2, "data '{}': vocab must be at least 2, got {}", spec, vocab);
  if (spec == "synthetic") return std::make_unique<SyntheticSource>(std::min(vocab, 256));
  struct stat st {};
  const bool is_file = ::stat(spec.c_str(), &st) == 0 && S_ISREG(st.st_mode);
  const bool is_glob = spec.find_first_of("*?[") != std::string::npos;
  if (is_file && !ends_with(spec, ".bin")) {
    ZT_CHECK(vocab >= 256, "text data '{}' is byte-level (tokens 0..255) but vocab is {}; use vocab >= 256", spec,
             vocab);
    return std::make_unique<TextSource>(spec);
  }
  ZT_CHECK(is_glob || ends_with(spec, ".bin"),
           "data '{}' is not an existing file (expected 'synthetic', a text file, or a glob of llm.c *.bin shards)",
           spec);
  return std::make_unique<ShardSource>(spec, glob_files(spec), vocab);
}

DataLoader::DataLoader(std::shared_ptr<const TokenSource> train, std::shared_ptr<const TokenSource> val, int seq_len,
                       double val_fraction, uint64_t seed)
    : train_(std::move(train)), val_(std::move(val)), seq_len_(seq_len), seed_(seed) {
  ZT_CHECK(train_ != nullptr, "DataLoader needs a training source");
  ZT_CHECK(seq_len_ >= 1, "seq_len must be at least 1, got {}", seq_len_);
  const int64_t n_seq = sequences_in(*train_, seq_len_);
  if (val_) {
    n_train_ = n_seq;
    n_val_ = sequences_in(*val_, seq_len_);
    val_first_seq_ = 0;
  } else {
    ZT_CHECK(val_fraction >= 0.0 && val_fraction < 1.0, "val_fraction must be in [0, 1), got {}", val_fraction);
    n_val_ = val_fraction > 0.0 ? std::max<int64_t>(1, std::llround(val_fraction * double(n_seq))) : 0;
    n_train_ = n_seq - n_val_;
    ZT_CHECK(n_train_ >= 1,
             "{} gives {} sequences of seq_len {}; holding out {} for validation (val_fraction {}) leaves none to "
             "train on",
             train_->describe(), n_seq, seq_len_, n_val_, val_fraction);
    val_ = train_;
    val_first_seq_ = n_train_;
  }
  ZT_CHECK(n_train_ <= int64_t(UINT32_MAX), "{} has {} training sequences; at most {} are supported",
           train_->describe(), n_train_, UINT32_MAX);
}

std::string DataLoader::describe() const {
  if (val_ == train_)
    return fmt::format("{}: {} train + {} val sequences of {} tokens", train_->describe(), n_train_, n_val_, seq_len_);
  return fmt::format("train {}: {} sequences; val {}: {} sequences; {} tokens each", train_->describe(), n_train_,
                     val_->describe(), n_val_, seq_len_);
}

std::shared_ptr<const std::vector<uint32_t>> DataLoader::epoch_permutation(int64_t epoch) const {
  std::lock_guard<std::mutex> lock(perm_mutex_);
  for (int c = 0; c < 2; ++c)
    if (perm_epoch_[c] == epoch) return perm_[c];
  auto perm = std::make_shared<std::vector<uint32_t>>(size_t(n_train_));
  for (size_t i = 0; i < perm->size(); ++i) (*perm)[i] = uint32_t(i);
  const uint64_t stream = stable_hash("data-epoch") ^ uint64_t(epoch);
  for (uint64_t i = perm->size() - 1; i > 0; --i)
    std::swap((*perm)[i], (*perm)[uniform_below(seed_, stream, i, i + 1)]);
  // Keep the newer of the two cached epochs, replace the older: a batch straddles at most two epochs.
  const int victim = perm_epoch_[0] < perm_epoch_[1] ? 0 : 1;
  perm_epoch_[victim] = epoch;
  perm_[victim] = perm;
  return perm;
}

int64_t DataLoader::train_sequence_at(int64_t k) const {
  ZT_CHECK(k >= 0, "training stream position must be >= 0, got {}", k);
  return int64_t((*epoch_permutation(k / n_train_))[size_t(k % n_train_)]);
}

void DataLoader::read_sequence(const TokenSource& src, int64_t seq, int32_t* inputs, int32_t* targets) const {
  // Targets are the inputs shifted by one, so only the last target needs another read.
  const size_t offset = size_t(seq) * size_t(seq_len_);
  src.read(offset, size_t(seq_len_), inputs);
  std::copy_n(inputs + 1, seq_len_ - 1, targets);
  src.read(offset + size_t(seq_len_), 1, targets + seq_len_ - 1);
}

namespace {
void check_slice(const char* what, int64_t batch_index, int global_batch_size, int first_seq, int n_seqs) {
  ZT_CHECK(batch_index >= 0 && global_batch_size >= 1 && first_seq >= 0 && n_seqs >= 0 &&
               int64_t(first_seq) + n_seqs <= global_batch_size,
           "{} slice out of range: batch {}, sequences [{}, {}) of a global batch of {}", what, batch_index, first_seq,
           int64_t(first_seq) + n_seqs, global_batch_size);
  ZT_CHECK(batch_index <= INT64_MAX / global_batch_size, "{} batch index {} overflows the sequence stream", what,
           batch_index);
}
}  // namespace

void DataLoader::train_batch(int64_t batch_index, int global_batch_size, int first_seq, int n_seqs, int32_t* inputs,
                             int32_t* targets) const {
  check_slice("training", batch_index, global_batch_size, first_seq, n_seqs);
  std::shared_ptr<const std::vector<uint32_t>> perm;
  int64_t perm_epoch = -1;
  for (int r = 0; r < n_seqs; ++r) {
    const int64_t k = batch_index * global_batch_size + first_seq + r;
    const int64_t epoch = k / n_train_;
    if (epoch != perm_epoch) {
      perm = epoch_permutation(epoch);
      perm_epoch = epoch;
    }
    const int64_t seq = (*perm)[size_t(k % n_train_)];
    read_sequence(*train_, seq, inputs + size_t(r) * seq_len_, targets + size_t(r) * seq_len_);
  }
}

void DataLoader::val_batch(int64_t batch_index, int global_batch_size, int first_seq, int n_seqs, int32_t* inputs,
                           int32_t* targets) const {
  ZT_CHECK(n_val_ > 0, "no validation set: val_fraction is 0 and no separate validation data was given");
  check_slice("validation", batch_index, global_batch_size, first_seq, n_seqs);
  for (int r = 0; r < n_seqs; ++r) {
    const int64_t k = batch_index * global_batch_size + first_seq + r;
    read_sequence(*val_, val_first_seq_ + k % n_val_, inputs + size_t(r) * seq_len_, targets + size_t(r) * seq_len_);
  }
}

int64_t DataLoader::epoch_of(int64_t batch_index, int global_batch_size) const {
  check_slice("training", batch_index, global_batch_size, 0, 0);
  return batch_index * global_batch_size / n_train_;
}

}  // namespace zt
