// Peak resident memory per rank of a short training run, beside the ZeRO and activation formulas, and tokens/s.
// Run: mpirun -np N build/bench/zero_memory --preset gpt2 --seq_len 64 --micro_batch_size 4 --zero_stage 3 [any
// other config key as --key value] (bench/memory.sh runs the documented cases).
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "core/config.hpp"
#include "core/errors.hpp"
#include "core/gpt2.hpp"
#include "launch/trainer.hpp"
#include "sharding/comm_mpi.hpp"
#include "sharding/zero_engine.hpp"

namespace {

// Peak resident set of this process (VmHWM of /proc/self/status), in bytes.
double peak_resident_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::strtod(line.c_str() + 6, nullptr) * 1024.0;
  return 0;
}

// "--key value" pairs as a config table (numbers as numbers), for zt::update_from_json.
nlohmann::json parse_args(int argc, char** argv) {
  nlohmann::json j = nlohmann::json::object();
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i], value = argv[i + 1];
    ZT_CHECK(key.rfind("--", 0) == 0, "expected --key value pairs, got '{}'", key);
    char* end = nullptr;
    const double number = std::strtod(value.c_str(), &end);
    if (end != value.c_str() && *end == '\0')
      j[key.substr(2)] =
          value.find_first_of(".eE") == std::string::npos ? nlohmann::json(int64_t(number)) : nlohmann::json(number);
    else
      j[key.substr(2)] = value;
  }
  return j;
}

double mib(double bytes) { return bytes / double(1 << 20); }

}  // namespace

int main(int argc, char** argv) {
  const int rank = zt::mpi_init_once(&argc, &argv);
  int world = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  try {
    nlohmann::json args = parse_args(argc, argv);
    // --preset picks the model (as the CLI's flag does); the config table knows only the fields it sets.
    zt::ModelConfig m = zt::model_preset(args.value("preset", std::string("small")));
    args.erase("preset");
    zt::TrainConfig t;
    t.max_steps = 2;
    t.warmup_steps = 1;
    t.threads = 1;
    t.output_dir = "/tmp/zt_bench_memory";
    zt::update_from_json(args, m, t);
    zt::MpiComm comm(MPI_COMM_WORLD);
    auto backend = zt::make_cpu_backend(t.threads);
    zt::RunOptions opts;
    opts.quiet = rank != 0;
    if (rank == 0) std::filesystem::remove_all(t.output_dir);
    MPI_Barrier(MPI_COMM_WORLD);
    zt::train(m, t, {comm, comm}, *backend, opts);
    const double peak = peak_resident_bytes();
    std::vector<double> peaks(static_cast<size_t>(world));
    MPI_Gather(&peak, 1, MPI_DOUBLE, peaks.data(), 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);

    // The formulas for the same shapes, from throw-away instances (nothing touched, so no resident memory).
    const zt::ParamTable table(m);
    zt::ZeroEngine probe(table, *backend, comm, t.zero_stage, size_t(t.zero_bucket_mb * double(1 << 20)));
    const zt::MemoryReport mem = probe.memory_report();
    const zt::Gpt2 model(table, *backend, t.micro_batch_size, m.seq_len, zt::parse_recompute(t.recompute));
    if (rank == 0) {
      double tok_s = 0;
      std::vector<double> rates;
      std::ifstream metrics(t.output_dir + "/metrics.jsonl");
      for (std::string line; std::getline(metrics, line);) {
        const auto row = nlohmann::json::parse(line);
        if (row["step"].get<int>() >= 2 || t.max_steps == 1) rates.push_back(row["tokens_per_s"].get<double>());
      }
      std::sort(rates.begin(), rates.end());
      if (!rates.empty()) tok_s = rates[rates.size() / 2];
      const double state = double(mem.params_bytes + mem.grads_bytes + mem.optim_bytes);
      const double acts = double(model.activation_bytes() + model.backward_work_bytes());
      const double buckets = 2 * t.zero_bucket_mb * double(1 << 20);
      const double psi16 = 16.0 * double(mem.psi) / world;
      const double max_peak = *std::max_element(peaks.begin(), peaks.end());
      std::printf(
          "RESULT ranks=%d stage=%d recompute=%s B=%d T=%d bucket_mib=%g | state %.1f MiB (16Psi/N %.1f), pool %.1f, "
          "activations+work %.1f (formula %.1f + %.1f) | peak resident per rank %.1f MiB (min %.1f) | "
          "target 1.3 x (16Psi/N + act + 2 buckets) = %.1f MiB: peak/target %.3f | %.0f tok/s\n",
          world, t.zero_stage, t.recompute.c_str(), t.micro_batch_size, m.seq_len, t.zero_bucket_mb, mib(state),
          mib(psi16), mib(double(mem.pool_bytes)), mib(acts), mib(double(model.activation_formula_bytes())),
          mib(double(model.backward_work_bytes())), mib(max_peak), mib(*std::min_element(peaks.begin(), peaks.end())),
          mib(1.3 * (psi16 + acts + buckets)), max_peak / (1.3 * (psi16 + acts + buckets)), tok_s);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zero_memory: rank %d: %s\n", rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  zt::mpi_finalize_once();
  return 0;
}
