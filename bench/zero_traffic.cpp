// ZeRO traffic benchmark: bytes each rank sends per step vs the theory, and communication wait not hidden.
// Run: mpirun -np N build/bench/zero_traffic [preset] [steps]
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "core/backend.hpp"
#include "core/config.hpp"
#include "core/errors.hpp"
#include "launch/trainer.hpp"
#include "sharding/comm_mpi.hpp"
#include "sharding/zero_engine.hpp"

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  zt::set_error_context(rank, world);
  const std::string preset = argc > 1 ? argv[1] : "small";
  const int steps = argc > 2 ? std::atoi(argv[2]) : 4;
  zt::ModelConfig m = zt::model_preset(preset);
  zt::ParamTable table(m);
  auto backend = zt::make_cpu_backend(1);
  zt::MpiComm comm(MPI_COMM_WORLD);
  if (rank == 0)
    std::printf(
        "# %s, %d ranks, micro-batch 2, one micro-step per step; medians over steps 2..%d\n"
        "stage | psi | sent MB/step | theory MB/step | sent/theory | comm wait s/step | step s\n",
        preset.c_str(), world, steps);
  for (int stage = 0; stage <= 3; ++stage) {
    zt::TrainConfig t;
    t.micro_batch_size = 2;
    t.global_batch_size = 2 * world;
    t.max_steps = steps;
    t.zero_stage = stage;
    t.output_dir = "/tmp/zt_bench_traffic";
    zt::RunOptions opts;
    opts.quiet = true;
    const double t0 = MPI_Wtime();
    zt::TrainSummary s = zt::train(m, t, {comm, comm}, *backend, opts);
    const double step_s = (MPI_Wtime() - t0) / steps;
    zt::ZeroEngine probe(table, *backend, comm, stage);
    const double psi = double(probe.memory_report().psi);
    const double theory = (stage == 3 ? 3.0 : 2.0) * psi * (world - 1) / world * 4.0;
    std::vector<uint64_t> b(s.bytes_sent.begin() + 1, s.bytes_sent.end());
    std::vector<double> w(s.comm_wait_s.begin() + 1, s.comm_wait_s.end());
    std::sort(b.begin(), b.end());
    std::sort(w.begin(), w.end());
    const double sent = b.empty() ? 0.0 : double(b[b.size() / 2]);
    if (rank == 0)
      std::printf("%d | %.0f | %.3f | %.3f | %s | %.4f | %.3f\n", stage, psi, sent / 1e6, theory / 1e6,
                  world > 1 ? std::to_string(sent / theory).c_str() : "n/a (1 rank)", w.empty() ? 0.0 : w[w.size() / 2],
                  step_s);
  }
  MPI_Finalize();
  return 0;
}
