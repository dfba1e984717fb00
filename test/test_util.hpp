// What the C++ tests share: the run's random seed and inputs, tolerance comparisons, backend buffers that catch
// unwritten and out-of-range elements, a small model, scratch directories, and Catch2 under MPI.
#pragma once

#include <mpi.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "core/backend.hpp"
#include "core/config.hpp"
#include "core/errors.hpp"
#include "test/catch_session.hpp"

namespace zt::test {

// ---- random inputs from one printed seed ----

/// The run's seed for random inputs: ZT_TEST_SEED=<n> when set (replays a run), otherwise fresh. Printed on first
/// use, so that the output of a failed run says how to replay it.
inline uint64_t test_seed() {
  static const uint64_t seed = [] {
    uint64_t s = (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
    if (const char* env = std::getenv("ZT_TEST_SEED")) {
      char* end = nullptr;
      s = std::strtoull(env, &end, 10);
      ZT_CHECK(*env != '\0' && *end == '\0', "ZT_TEST_SEED={}: expected a non-negative integer", env);
    }
    std::printf("random test inputs from seed %llu (ZT_TEST_SEED=%llu replays them)\n", (unsigned long long)s,
                (unsigned long long)s);
    std::fflush(stdout);
    return s;
  }();
  return seed;
}

/// Rank 0's test_seed() on every rank of MPI_COMM_WORLD (only rank 0 prints it). Collective on the first call.
inline uint64_t shared_test_seed() {
  static const uint64_t seed = [] {
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    uint64_t s = rank == 0 ? test_seed() : 0;
    MPI_Bcast(&s, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    return s;
  }();
  return seed;
}

/// A generator for the running test case: the run's seed mixed with the case's name, so that a case draws the same
/// values whichever other cases run with it.
inline std::mt19937_64 seeded_rng() {
  const std::string name = Catch::getResultCapture().getCurrentTestName();
  return std::mt19937_64(test_seed() ^ std::hash<std::string>{}(name));
}

inline int uniform_int(std::mt19937_64& rng, int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }

inline std::vector<float> uniform(std::mt19937_64& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

inline std::vector<int32_t> random_tokens(std::mt19937_64& rng, size_t n, int vocab) {
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = dist(rng);
  return t;
}

// ---- comparisons ----

/// |got - ref| <= rel * |ref| + abs * max|ref| for every element (the max over the reference tensor: its scale).
struct Tolerance {
  double rel;
  double abs;
};

/// How far `got` is from `ref`: the elements outside the tolerance (NaN counts as outside), and the worst.
struct CloseReport {
  size_t n_bad = 0;
  std::string text;  ///< for INFO(): the counts, the tolerance and the worst element
};

inline CloseReport compare_close(const std::vector<float>& got, const std::vector<float>& ref, Tolerance tol) {
  CloseReport rep;
  if (got.size() != ref.size()) {
    rep.n_bad = std::max(got.size(), ref.size());
    rep.text = "sizes differ: " + std::to_string(got.size()) + " vs " + std::to_string(ref.size());
    return rep;
  }
  double scale = 0;
  for (float r : ref) scale = std::max(scale, double(std::fabs(r)));
  double worst_excess = -1;
  size_t worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double err = std::fabs(double(got[i]) - double(ref[i]));
    const double allowed = tol.rel * std::fabs(double(ref[i])) + tol.abs * scale;
    if (err <= allowed) continue;  // false for NaN
    ++rep.n_bad;
    const double excess = std::isnan(err) ? std::numeric_limits<double>::infinity() : err - allowed;
    if (excess > worst_excess) {
      worst_excess = excess;
      worst = i;
    }
  }
  rep.text = std::to_string(rep.n_bad) + " of " + std::to_string(ref.size()) + " elements outside rel " +
             std::to_string(tol.rel) + " + abs " + std::to_string(tol.abs) + " x scale " + std::to_string(scale);
  if (rep.n_bad)
    rep.text += "; worst at " + std::to_string(worst) + ": got " + std::to_string(got[worst]) + ", want " +
                std::to_string(ref[worst]);
  return rep;
}

/// A Catch2 check that `got` is within `tol` of `ref`, reporting `what` and the worst element when not.
inline void expect_close(const std::string& what, const std::vector<float>& got, const std::vector<float>& ref,
                         Tolerance tol) {
  REQUIRE(got.size() == ref.size());
  const CloseReport rep = compare_close(got, ref, tol);
  INFO(what << ": " << rep.text);
  CHECK(rep.n_bad == 0);
}

/// Largest |got - ref| (infinity for a NaN or a size mismatch).
inline double max_abs_diff(const std::vector<float>& got, const std::vector<float>& ref) {
  if (got.size() != ref.size()) return std::numeric_limits<double>::infinity();
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = std::fabs(double(got[i]) - double(ref[i]));
    if (!(d <= worst)) worst = std::isnan(d) ? std::numeric_limits<double>::infinity() : d;
  }
  return worst;
}

/// Same size and the same bits (a NaN equals a NaN with its bits; +0 and -0 differ).
template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// ---- buffers in a backend's memory ----

/// What an output an op must write (not accumulate into) starts as, so that an element left unwritten, or read
/// before it is written, stays NaN and fails the comparison.
inline const float kPoison = std::numeric_limits<float>::quiet_NaN();
/// NaN elements around every BackendArray: an op that writes past its output is caught when the guard is read
/// back, one that reads past its input meets NaN.
constexpr size_t kGuard = 64;

/// Floats in a backend's memory between NaN guards, poisoned until uploaded. `misalign` shifts the start by that
/// many floats, so pointers that are not 16-byte aligned (as inside the model's activation arena) are exercised.
class BackendArray {
 public:
  BackendArray(Backend& be, size_t n, size_t misalign = 0)
      : be_(be), n_(n), misalign_(misalign), base_(be.alloc(n + misalign + kGuard)) {
    poison();
  }
  ~BackendArray() { be_.release(base_); }
  BackendArray(const BackendArray&) = delete;
  BackendArray& operator=(const BackendArray&) = delete;
  float* get() const { return base_ + misalign_; }
  size_t size() const { return n_; }
  void upload(const std::vector<float>& host) {
    REQUIRE(host.size() == n_);
    std::vector<float> full(misalign_, kPoison);
    full.insert(full.end(), host.begin(), host.end());
    full.resize(misalign_ + n_ + kGuard, kPoison);
    be_.from_host(base_, full.data(), full.size());
  }
  void poison() { upload(std::vector<float>(n_, kPoison)); }
  /// The values, after checking that the guards are still NaN.
  std::vector<float> download() const {
    std::vector<float> full(misalign_ + n_ + kGuard);
    be_.to_host(full.data(), base_, full.size());
    size_t n_touched = 0;
    for (size_t i = 0; i < misalign_; ++i) n_touched += std::isnan(full[i]) ? 0 : 1;
    for (size_t i = misalign_ + n_; i < full.size(); ++i) n_touched += std::isnan(full[i]) ? 0 : 1;
    INFO("guard elements around a buffer of " << n_ << " were written");
    CHECK(n_touched == 0);
    return std::vector<float>(full.begin() + long(misalign_), full.begin() + long(misalign_ + n_));
  }

 private:
  Backend& be_;
  size_t n_, misalign_;
  float* base_;
};

/// Token ids in a backend's memory, uploaded as a step uploads them (tokens_from_host).
class BackendTokens {
 public:
  BackendTokens(Backend& be, const std::vector<int32_t>& host) : be_(be), p_(be.alloc_int(host.size())) {
    be.tokens_from_host(p_, host.data(), host.size());
  }
  ~BackendTokens() { be_.release(p_); }
  BackendTokens(const BackendTokens&) = delete;
  BackendTokens& operator=(const BackendTokens&) = delete;
  const int32_t* get() const { return p_; }

 private:
  Backend& be_;
  int32_t* p_;
};

// ---- models ----

/// Two blocks, head size 16, vocabulary padded from 200 to 256 (the padded logits must get no probability),
/// T = 32 (long enough for the CUDA attention to keep its output copy).
inline ModelConfig two_block_model() {
  ModelConfig m;
  m.n_layer = 2;
  m.n_head = 4;
  m.d_model = 64;
  m.vocab = 200;
  m.seq_len = 32;
  return m;
}

// ---- scratch directories ----

/// A fresh directory under $TMPDIR (or /tmp), removed with everything in it when the test ends.
struct ScratchDir {
  ScratchDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/zt_test_XXXXXX";
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  std::string path;
};

// ---- Catch2 under MPI ----

/// Runs the test cases on every rank of an initialised MPI_COMM_WORLD, then finalises MPI. Rank 0 reports
/// successes, every rank its own failures; the exit status is 1 on every rank when any rank failed.
inline int run_catch_on_every_rank(int argc, char** argv) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const int rc = run_catch(argc, argv, rank != 0);
  int any_failed = 0;
  MPI_Allreduce(&rc, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any_failed == 0 ? 0 : 1;
}

}  // namespace zt::test
