// Data pipeline: llm.c shard validation, text files, the synthetic corpus, and the deterministic batch order.
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "core/data.hpp"
#include "core/errors.hpp"

using Catch::Contains;
using zt::DataLoader;
using zt::TokenSource;

namespace {

/// A fresh directory under $TMPDIR (or /tmp), removed with its files when the test ends.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/zt_data_XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    REQUIRE(::mkdtemp(buf.data()) != nullptr);
    path_ = buf.data();
  }
  ~TempDir() {
    for (const auto& f : files_) std::remove(f.c_str());
    ::rmdir(path_.c_str());
  }
  /// Writes `bytes` to dir/name and returns the full path.
  std::string write(const std::string& name, const std::vector<char>& bytes) {
    std::string p = path_ + "/" + name;
    std::ofstream out(p, std::ios::binary);
    out.write(bytes.data(), std::streamsize(bytes.size()));
    REQUIRE(out.good());
    files_.push_back(p);
    return p;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::vector<std::string> files_;
};

/// An llm.c token shard: 256 int32 header (magic, version, count), then uint16 tokens.
std::vector<char> shard_bytes(const std::vector<uint16_t>& tokens, int32_t magic = 20240520, int32_t version = 1,
                              int32_t count = -1) {
  std::vector<int32_t> header(256, 0);
  header[0] = magic;
  header[1] = version;
  header[2] = count >= 0 ? count : int32_t(tokens.size());
  std::vector<char> bytes(header.size() * 4 + tokens.size() * 2);
  std::memcpy(bytes.data(), header.data(), header.size() * 4);
  std::memcpy(bytes.data() + header.size() * 4, tokens.data(), tokens.size() * 2);
  return bytes;
}

std::vector<int32_t> read_all(const TokenSource& src) {
  std::vector<int32_t> out(src.n_tokens());
  src.read(0, out.size(), out.data());
  return out;
}

/// A source whose token i is i (mod 2^31): every window's content names its position.
class IotaSource final : public TokenSource {
 public:
  explicit IotaSource(size_t n) : n_(n) {}
  size_t n_tokens() const override { return n_; }
  void read(size_t offset, size_t count, int32_t* out) const override {
    REQUIRE(offset + count <= n_);
    for (size_t i = 0; i < count; ++i) out[i] = int32_t(offset + i);
  }
  std::string describe() const override { return "iota"; }

 private:
  size_t n_;
};

struct Batch {
  std::vector<int32_t> inputs, targets;
  bool operator==(const Batch& o) const { return inputs == o.inputs && targets == o.targets; }
};

Batch train_batch(const DataLoader& dl, int64_t b, int gbs, int first, int n) {
  Batch out{std::vector<int32_t>(size_t(n) * dl.seq_len()), std::vector<int32_t>(size_t(n) * dl.seq_len())};
  dl.train_batch(b, gbs, first, n, out.inputs.data(), out.targets.data());
  return out;
}

Batch val_batch(const DataLoader& dl, int64_t b, int gbs, int first, int n) {
  Batch out{std::vector<int32_t>(size_t(n) * dl.seq_len()), std::vector<int32_t>(size_t(n) * dl.seq_len())};
  dl.val_batch(b, gbs, first, n, out.inputs.data(), out.targets.data());
  return out;
}

}  // namespace

TEST_CASE("llm.c shards matched by a glob are concatenated in sorted order", "[data]") {
  TempDir dir;
  std::vector<uint16_t> a = {1, 2, 3, 4, 5}, b = {50256, 7, 8};
  // Written in reverse order so the test sees sorting, not directory order.
  dir.write("train_001.bin", shard_bytes(b));
  dir.write("train_000.bin", shard_bytes(a));
  auto src = zt::open_token_source(dir.path() + "/train_*.bin", 50257);
  REQUIRE(src->n_tokens() == 8);
  CHECK(read_all(*src) == std::vector<int32_t>{1, 2, 3, 4, 5, 50256, 7, 8});
  // A read that crosses the shard boundary.
  std::vector<int32_t> mid(4);
  src->read(3, 4, mid.data());
  CHECK(mid == std::vector<int32_t>{4, 5, 50256, 7});
  CHECK_THAT(src->describe(), Contains("2 files"));
  // A single shard named directly (no wildcard) is a one-file glob.
  auto one = zt::open_token_source(dir.path() + "/train_001.bin", 50257);
  CHECK(read_all(*one) == std::vector<int32_t>{50256, 7, 8});
}

TEST_CASE("malformed llm.c shards throw naming the file and the problem", "[data]") {
  TempDir dir;
  std::vector<uint16_t> ok = {1, 2, 3, 4};
  SECTION("wrong magic") {
    dir.write("magic.bin", shard_bytes(ok, 12345));
    REQUIRE_THROWS_WITH(zt::open_token_source(dir.path() + "/magic.bin", 50257),
                        Contains("magic.bin") && Contains("magic 12345"));
  }
  SECTION("wrong version") {
    dir.write("version.bin", shard_bytes(ok, 20240520, 2));
    REQUIRE_THROWS_WITH(zt::open_token_source(dir.path() + "/version.bin", 50257),
                        Contains("version.bin") && Contains("version 2"));
  }
  SECTION("fewer tokens than the header promises") {
    dir.write("short.bin", shard_bytes(ok, 20240520, 1, 10));
    REQUIRE_THROWS_WITH(zt::open_token_source(dir.path() + "/short.bin", 50257),
                        Contains("short.bin") && Contains("promises 10 tokens"));
  }
  SECTION("shorter than the header") {
    auto bytes = shard_bytes(ok);
    bytes.resize(100);
    dir.write("stub.bin", bytes);
    REQUIRE_THROWS_WITH(zt::open_token_source(dir.path() + "/stub.bin", 50257),
                        Contains("stub.bin") && Contains("truncated"));
  }
  SECTION("a token >= vocab, in the second shard of a glob") {
    dir.write("v_0.bin", shard_bytes(ok));
    dir.write("v_1.bin", shard_bytes({5, 6, 300, 7}));
    REQUIRE_THROWS_WITH(zt::open_token_source(dir.path() + "/v_*.bin", 256),
                        Contains("v_1.bin") && Contains("token 300 at position 2") && Contains(">= vocab 256"));
    // The same shards are fine with a vocab that covers them.
    CHECK(zt::open_token_source(dir.path() + "/v_*.bin", 301)->n_tokens() == 8);
  }
  SECTION("a glob that matches nothing names the glob") {
    std::string glob = dir.path() + "/nothing_*.bin";
    REQUIRE_THROWS_WITH(zt::open_token_source(glob, 50257), Contains("no file matched") && Contains(glob));
    std::string missing = dir.path() + "/missing.bin";
    REQUIRE_THROWS_WITH(zt::open_token_source(missing, 50257), Contains(missing));
  }
  SECTION("a path that is neither a file nor a glob") {
    std::string missing = dir.path() + "/corpus.txt";
    REQUIRE_THROWS_WITH(zt::open_token_source(missing, 256), Contains(missing) && Contains("not an existing file"));
  }
  SECTION("errors are zt::Error") {
    REQUIRE_THROWS_AS(zt::open_token_source(dir.path() + "/none_*.bin", 256), zt::Error);
  }
}

TEST_CASE("a text file's bytes are its tokens", "[data]") {
  TempDir dir;
  std::vector<char> bytes = {'h', 'i', '\n', char(0), char(200), char(255)};
  std::string path = dir.write("corpus.txt", bytes);
  auto src = zt::open_token_source(path, 256);
  CHECK(read_all(*src) == std::vector<int32_t>{'h', 'i', '\n', 0, 200, 255});
  CHECK_THAT(src->describe(), Contains("corpus.txt"));
  REQUIRE_THROWS_WITH(zt::open_token_source(path, 100), Contains("corpus.txt") && Contains("vocab is 100"));
  std::string empty = dir.write("empty.txt", {});
  REQUIRE_THROWS_WITH(zt::open_token_source(empty, 256), Contains("empty.txt") && Contains("empty"));
}

TEST_CASE("a corpus shorter than seq_len+1 tokens is rejected", "[data]") {
  TempDir dir;
  std::string path = dir.write("tiny.txt", {'a', 'b', 'c', 'd'});
  std::shared_ptr<const TokenSource> src = zt::open_token_source(path, 256);
  REQUIRE_THROWS_WITH(DataLoader(src, nullptr, 4, 0.0, 1), Contains("tiny.txt") && Contains("too short"));
  DataLoader ok(src, nullptr, 3, 0.0, 1);
  CHECK(ok.n_train_sequences() == 1);
  // One sequence cannot be split into training and validation.
  REQUIRE_THROWS_WITH(DataLoader(src, nullptr, 3, 0.1, 1), Contains("leaves none to train on"));
}

TEST_CASE("the synthetic corpus is deterministic, in range, and far more predictable than uniform", "[data]") {
  auto src = zt::open_token_source("synthetic", 50257);
  REQUIRE(src->n_tokens() == zt::kSyntheticTokens);
  auto tok = read_all(*src);
  CHECK(*std::min_element(tok.begin(), tok.end()) >= 0);
  CHECK(*std::max_element(tok.begin(), tok.end()) <= 255);
  CHECK(*std::max_element(tok.begin(), tok.end()) >= 200);           // uses (most of) the alphabet, not a few symbols
  CHECK(read_all(*zt::open_token_source("synthetic", 256)) == tok);  // cached and vocab-independent above 256

  // Plug-in estimate of H(x_t | x_{t-2}, x_{t-1}) in nats from sorted trigram codes.
  std::vector<uint32_t> tri(tok.size() - 2);
  for (size_t i = 2; i < tok.size(); ++i)
    tri[i - 2] = uint32_t(tok[i - 2]) << 16 | uint32_t(tok[i - 1]) << 8 | uint32_t(tok[i]);
  std::sort(tri.begin(), tri.end());
  double h = 0.0;
  for (size_t c0 = 0; c0 < tri.size();) {
    size_t c1 = c0;
    while (c1 < tri.size() && tri[c1] >> 8 == tri[c0] >> 8) ++c1;
    for (size_t a = c0; a < c1;) {
      size_t b = a;
      while (b < c1 && tri[b] == tri[a]) ++b;
      h -= double(b - a) / double(tri.size()) * std::log(double(b - a) / double(c1 - c0));
      a = b;
    }
    c0 = c1;
  }
  INFO("conditional entropy " << h << " nats; log(256) = " << std::log(256.0));
  CHECK(h < 0.6 * std::log(256.0));

  // Smaller vocabularies get a corpus over their own alphabet.
  auto small = read_all(*zt::open_token_source("synthetic", 64));
  CHECK(*std::max_element(small.begin(), small.end()) <= 63);
}

TEST_CASE("training batches are a pure function of (seed, batch index, global batch size)", "[data]") {
  std::shared_ptr<const TokenSource> src = zt::open_token_source("synthetic", 256);
  DataLoader a(src, nullptr, 64, 0.05, 1234), b(src, nullptr, 64, 0.05, 1234), c(src, nullptr, 64, 0.05, 99);
  const int gbs = 16;
  for (int64_t batch : {0, 1, 7, 500}) {
    CHECK(train_batch(a, batch, gbs, 0, gbs) == train_batch(b, batch, gbs, 0, gbs));
  }
  CHECK_FALSE(train_batch(a, 3, gbs, 0, gbs) == train_batch(c, 3, gbs, 0, gbs));
  // Asking again after other epochs were touched gives the same bits (cache eviction is invisible).
  auto first = train_batch(a, 0, gbs, 0, gbs);
  train_batch(a, 10000, gbs, 0, gbs);
  train_batch(a, 20000, gbs, 0, gbs);
  CHECK(train_batch(a, 0, gbs, 0, gbs) == first);
}

TEST_CASE("any slice of a global batch equals the same rows of the whole batch", "[data]") {
  std::shared_ptr<const TokenSource> src = std::make_shared<IotaSource>(10 * 7 + 1);  // 10 sequences of 7
  DataLoader dl(src, nullptr, 7, 0.0, 5);
  const int gbs = 6;  // does not divide 10: batches straddle epochs
  for (int64_t batch = 0; batch < 6; ++batch) {
    auto whole = train_batch(dl, batch, gbs, 0, gbs);
    // Uneven rank split 2 + 3 + 1 and single rows, each computed on a fresh loader as another rank would.
    for (auto [first, n] : std::vector<std::pair<int, int>>{{0, 2}, {2, 3}, {5, 1}, {4, 1}}) {
      DataLoader other(src, nullptr, 7, 0.0, 5);
      auto slice = train_batch(other, batch, gbs, first, n);
      std::vector<int32_t> rows(whole.inputs.begin() + first * 7, whole.inputs.begin() + (first + n) * 7);
      CHECK(slice.inputs == rows);
    }
  }
  REQUIRE_THROWS_AS(train_batch(dl, 0, gbs, 4, 3), zt::Error);
}

TEST_CASE("every training sequence appears exactly once per epoch, and epochs differ", "[data]") {
  const int seq_len = 5;
  const int64_t n_seq = 37;
  std::shared_ptr<const TokenSource> src = std::make_shared<IotaSource>(n_seq * seq_len + 1);
  DataLoader dl(src, nullptr, seq_len, 0.1, 42);
  const int64_t n_train = dl.n_train_sequences();
  REQUIRE(n_train == 33);  // round(0.1 * 37) = 4 held out
  REQUIRE(dl.n_val_sequences() == 4);
  const int gbs = 4;  // 33 is not a multiple: epochs start mid-batch
  std::vector<int64_t> stream;
  for (int64_t batch = 0; int64_t(stream.size()) < 3 * n_train; ++batch) {
    auto bt = train_batch(dl, batch, gbs, 0, gbs);
    for (int r = 0; r < gbs; ++r) stream.push_back(bt.inputs[size_t(r) * seq_len] / seq_len);
  }
  std::vector<std::vector<int64_t>> epochs;
  for (int e = 0; e < 3; ++e) {
    std::vector<int64_t> ep(stream.begin() + e * n_train, stream.begin() + (e + 1) * n_train);
    std::vector<int64_t> sorted = ep;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> expect(static_cast<size_t>(n_train));
    for (int64_t i = 0; i < n_train; ++i) expect[size_t(i)] = i;
    CHECK(sorted == expect);
    epochs.push_back(ep);
  }
  CHECK(epochs[0] != epochs[1]);
  CHECK(epochs[1] != epochs[2]);
  CHECK(dl.epoch_of(0, gbs) == 0);
  CHECK(dl.epoch_of(8, gbs) == 0);  // sequences 32..35: starts in epoch 0
  CHECK(dl.epoch_of(9, gbs) == 1);
  CHECK(dl.train_sequence_at(40) == epochs[1][40 - 33]);
}

TEST_CASE("targets are inputs shifted by one, and train and validation are disjoint", "[data]") {
  const int seq_len = 8;
  std::shared_ptr<const TokenSource> src = std::make_shared<IotaSource>(50 * seq_len + 3);
  DataLoader dl(src, nullptr, seq_len, 0.2, 7);
  REQUIRE(dl.n_val_sequences() == 10);
  REQUIRE(dl.n_train_sequences() == 40);
  std::set<int32_t> train_targets, val_targets;
  auto check_rows = [&](const Batch& bt, int n, std::set<int32_t>& targets) {
    for (int r = 0; r < n; ++r) {
      for (int t = 0; t < seq_len; ++t) {
        const size_t i = size_t(r) * seq_len + t;
        CHECK(bt.targets[i] == bt.inputs[i] + 1);  // IotaSource: the next token is the position plus one
        if (t + 1 < seq_len) CHECK(bt.targets[i] == bt.inputs[i + 1]);
        targets.insert(bt.targets[i]);
      }
      CHECK(bt.inputs[size_t(r) * seq_len] % seq_len == 0);  // windows start at stride seq_len
    }
  };
  for (int64_t batch = 0; batch < 5; ++batch) check_rows(train_batch(dl, batch, 8, 0, 8), 8, train_targets);
  for (int64_t batch = 0; batch < 3; ++batch) check_rows(val_batch(dl, batch, 4, 0, 4), 4, val_targets);
  CHECK(train_targets.size() == 40 * seq_len);  // one epoch covered every training target
  CHECK(val_targets.size() == 10 * seq_len);    // 12 rows wrapped around 10 validation sequences
  for (int32_t t : val_targets) CHECK(train_targets.count(t) == 0);
  CHECK(*val_targets.begin() == 40 * seq_len + 1);  // validation is the tail of the source

  // Validation is unshuffled and wraps: row k is validation sequence k mod 10.
  auto v = val_batch(dl, 2, 4, 1, 2);  // k = 9, 10
  CHECK(v.inputs[0] == (40 + 9) * seq_len);
  CHECK(v.inputs[seq_len] == 40 * seq_len);
}

TEST_CASE("a separate validation source and an empty validation set", "[data]") {
  std::shared_ptr<const TokenSource> train = std::make_shared<IotaSource>(20 * 4 + 1);
  std::shared_ptr<const TokenSource> val = std::make_shared<IotaSource>(3 * 4 + 1);
  DataLoader dl(train, val, 4, 0.5, 3);  // val_fraction is ignored when a validation source is given
  CHECK(dl.n_train_sequences() == 20);
  CHECK(dl.n_val_sequences() == 3);
  CHECK(val_batch(dl, 1, 2, 0, 1).inputs == std::vector<int32_t>{8, 9, 10, 11});

  DataLoader none(train, nullptr, 4, 0.0, 3);
  CHECK(none.n_train_sequences() == 20);
  CHECK(none.n_val_sequences() == 0);
  REQUIRE_THROWS_WITH(val_batch(none, 0, 1, 0, 1), Contains("no validation set"));
}
