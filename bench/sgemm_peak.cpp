// OpenBLAS sgemm GFLOP/s: square sizes (the peak) and the matmul shapes of one `small`-preset training step.
//
// Usage: sgemm_peak [--threads N] [--min_seconds S]
// Prints a table and, last, `sgemm_peak_gflops=<best square>` and `sgemm_model_mix_gflops=<mix>` where the mix is
// total flops / total time of the step's matmul shapes: the rate a trainer that spent all its time in these sgemm
// calls would reach. bench/throughput.sh divides zerotrain's achieved GFLOP/s by the peak.
#include <cblas.h>
#include <omp.h>

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

extern "C" void openblas_set_num_threads(int);

namespace {

using Clock = std::chrono::steady_clock;

struct Shape {
  std::string name;
  bool trans_a, trans_b;
  int M, N, K;
};

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

/// Best GFLOP/s over repetitions of C = op(A) op(B) (+ C, as the backward accumulates), row-major like core/matmul.
double measure(const Shape& s, double min_seconds) {
  const size_t a_elems = size_t(s.M) * s.K, b_elems = size_t(s.K) * s.N, c_elems = size_t(s.M) * s.N;
  std::vector<float> a(a_elems), b(b_elems), c(c_elems, 0.0f);
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (auto& x : a) x = dist(rng);
  for (auto& x : b) x = dist(rng);
  const int lda = s.trans_a ? s.M : s.K, ldb = s.trans_b ? s.K : s.N;
  auto once = [&] {
    cblas_sgemm(CblasRowMajor, s.trans_a ? CblasTrans : CblasNoTrans, s.trans_b ? CblasTrans : CblasNoTrans, s.M, s.N,
                s.K, 1.0f, a.data(), lda, b.data(), ldb, 1.0f, c.data(), s.N);
  };
  once();  // warm-up: page faults, OpenBLAS thread start-up, buffers
  const double flops = 2.0 * s.M * s.N * s.K;
  double best_s = 1e30;
  const auto t_all = Clock::now();
  int reps = 0;
  // At least 5 timed calls and min_seconds in all: enough to find the un-disturbed rate on a shared machine.
  while (reps < 5 || seconds_since(t_all) < min_seconds) {
    const auto t0 = Clock::now();
    once();
    best_s = std::min(best_s, seconds_since(t0));
    ++reps;
  }
  return flops / best_s / 1e9;
}

/// The three gemms of one dense layer out[N,OC] = inp[N,C] · W, exactly as core/matmul.cpp issues them.
void add_layer(std::vector<Shape>& shapes, const std::string& layer, int N, int C, int OC, bool w_transposed) {
  if (w_transposed) {  // W [OC,C] (the tied LM head)
    shapes.push_back({layer + " fwd", false, true, N, OC, C});
    shapes.push_back({layer + " bwd dinp", false, false, N, C, OC});
    shapes.push_back({layer + " bwd dW", true, false, OC, C, N});
  } else {  // W [C,OC] (Conv1D layout)
    shapes.push_back({layer + " fwd", false, false, N, OC, C});
    shapes.push_back({layer + " bwd dinp", false, true, N, C, OC});
    shapes.push_back({layer + " bwd dW", true, false, C, OC, N});
  }
}

int parse_int(const char* flag, const char* v) {
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  if (end == v || *end != '\0' || x <= 0) {
    fmt::print(stderr, "sgemm_peak: {} needs a positive integer, got '{}'\n", flag, v);
    std::exit(2);
  }
  return int(x);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1;
  double min_seconds = 0.3;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--threads" && i + 1 < argc) {
      threads = parse_int("--threads", argv[++i]);
    } else if (arg == "--min_seconds" && i + 1 < argc) {
      min_seconds = std::atof(argv[++i]);
    } else {
      fmt::print(stderr, "usage: sgemm_peak [--threads N] [--min_seconds S]\n");
      return arg == "--help" || arg == "-h" ? 0 : 2;
    }
  }
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);

  // `small` preset: B=8 sequences x T=128 = 1024 rows, d_model 256, MLP 1024, padded vocab 256.
  const int n_rows = 1024, C = 256;
  std::vector<Shape> model_shapes;
  add_layer(model_shapes, "attn.c_attn", n_rows, C, 3 * C, false);
  add_layer(model_shapes, "attn.c_proj", n_rows, C, C, false);
  add_layer(model_shapes, "mlp.c_fc", n_rows, C, 4 * C, false);
  add_layer(model_shapes, "mlp.c_proj", n_rows, 4 * C, C, false);
  add_layer(model_shapes, "lm_head", n_rows, C, 256, true);

  fmt::print("OpenBLAS sgemm, {} thread(s), row-major, best of >= 5 calls and {:.1f} s per shape\n", threads,
             min_seconds);
  fmt::print("{:<22} {:>2}{:>2} {:>6} {:>6} {:>6} {:>10}\n", "shape", "tA", "tB", "M", "N", "K", "GFLOP/s");
  double peak = 0;
  for (int n : {512, 768, 1024, 1536, 2048}) {
    const Shape s{fmt::format("square {}", n), false, false, n, n, n};
    const double g = measure(s, min_seconds);
    peak = std::max(peak, g);
    fmt::print("{:<22} {:>2}{:>2} {:>6} {:>6} {:>6} {:>10.1f}\n", s.name, "N", "N", s.M, s.N, s.K, g);
  }
  double mix_flops = 0, mix_seconds = 0;
  for (const Shape& s : model_shapes) {
    const double g = measure(s, min_seconds);
    const double flops = 2.0 * s.M * s.N * s.K;
    mix_flops += flops;
    mix_seconds += flops / (g * 1e9);
    fmt::print("{:<22} {:>2}{:>2} {:>6} {:>6} {:>6} {:>10.1f}\n", s.name, s.trans_a ? "T" : "N", s.trans_b ? "T" : "N",
               s.M, s.N, s.K, g);
  }
  fmt::print("sgemm_model_mix_gflops={:.1f}\n", mix_flops / mix_seconds / 1e9);
  fmt::print("sgemm_peak_gflops={:.1f}\n", peak);
  return 0;
}
