// Comm-only baseline of bench/overlap.sh: a training step's collectives with no compute, and the link's α-β fit.
//
//   mpirun -np 2 build/bench/overlap_comm step PRESET STAGE MICRO_BATCH STEPS [BUCKET_MB]
//   mpirun -np 2 build/bench/overlap_comm link [MAX_BYTES]
//
// `step` runs the trainer's step (ZeroEngine + Gpt2::step + norm + AdamW) on a backend whose model and optimizer ops
// do nothing: the same collectives, byte counts, parts, order and wait points as a real step, none of its compute.
// `link` times MpiComm::all_gather from 1 KiB to MAX_BYTES per rank (one exchange each way at N = 2) and fits
// t = α + bytes / β. Both print one JSON line on rank 0.
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "core/config.hpp"
#include "core/errors.hpp"
#include "core/forwarding_backend.hpp"
#include "core/gpt2.hpp"
#include "core/model.hpp"
#include "sharding/comm_mpi.hpp"
#include "sharding/zero_engine.hpp"

namespace {

// The model's and the optimizer's arithmetic as no-ops; memory, copies, zeroing and the engine's gradient
// accumulation still run (they are part of the engine's work around each collective, and cost little).
class NoComputeBackend final : public zt::ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  void embedding_forward(float*, const int32_t*, const float*, const float*, int, int, int) override {}
  void embedding_backward(float*, float*, const float*, const int32_t*, int, int, int) override {}
  void layernorm_forward(float*, float*, float*, const float*, const float*, const float*, int, int) override {}
  void residual_layernorm_forward(float*, float*, float*, float*, const float*, const float*, const float*,
                                  const float*, int, int) override {}
  void layernorm_backward(float*, float*, float*, const float*, const float*, const float*, const float*, const float*,
                          int, int) override {}
  void matmul_forward(float*, const float*, const float*, const float*, int, int, int, bool) override {}
  void matmul_backward(float*, float*, float*, const float*, const float*, const float*, int, int, int, bool) override {
  }
  void attention_forward(float*, float*, const float*, int, int, int, int) override {}
  void attention_backward(float*, const float*, const float*, const float*, int, int, int, int) override {}
  void gelu_forward(float*, const float*, size_t) override {}
  void gelu_backward(float*, const float*, const float*, size_t) override {}
  void residual_forward(float*, const float*, const float*, size_t) override {}
  void softmax_cross_entropy(float*, float*, const int32_t*, int, int, int, float) override {}
  void adamw_update(float*, const float*, float*, float*, size_t, float, float, float, float, float, float,
                    int64_t) override {}
  double squared_norm(const float*, size_t) override { return 0.0; }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Median wall time of `steps` comm-only training steps after one warm-up step.
void run_step(zt::MpiComm& comm, zt::MpiComm& control, const std::string& preset, int stage, int micro_batch, int steps,
              double bucket_mb) {
  const zt::ModelConfig m = zt::model_preset(preset);
  zt::ParamTable table(m);
  auto cpu = zt::make_cpu_backend(1);
  NoComputeBackend be(*cpu);
  zt::ZeroEngine engine(table, be, comm, stage, size_t(bucket_mb * double(1 << 20)));
  engine.init_params(1);
  zt::Gpt2 model(table, be, micro_batch, m.seq_len);
  std::vector<int32_t> tokens(size_t(micro_batch) * size_t(m.seq_len), 1);
  std::vector<double> step_s, wait_s;
  uint64_t bytes = 0;
  for (int s = 0; s <= steps; ++s) {
    control.barrier();
    const uint64_t b0 = comm.bytes_sent();
    const double w0 = comm.wait_seconds(), t0 = MPI_Wtime();
    engine.begin_step();
    engine.begin_micro_step(model, true, true);
    double loss = model.step(engine, tokens.data(), tokens.data(), true, 1.0f);
    engine.end_micro_step();
    control.all_reduce_sum(&loss, 1);  // the trainer's loss sum
    engine.grad_norm_squared();
    engine.optimizer_step(zt::AdamwStep{});
    if (s == 0) continue;  // warm-up: first-use allocations, TCP connections
    step_s.push_back(MPI_Wtime() - t0);
    wait_s.push_back(comm.wait_seconds() - w0);
    bytes = comm.bytes_sent() - b0;
  }
  if (comm.rank() == 0)
    std::printf(
        "{\"mode\": \"step\", \"preset\": \"%s\", \"stage\": %d, \"world\": %d, \"micro_batch\": %d, \"steps\": %d, "
        "\"n_parts\": %zu, \"comm_s\": %.6f, \"wait_s\": %.6f, \"bytes_sent\": %llu}\n",
        preset.c_str(), stage, comm.world_size(), micro_batch, steps, engine.n_parts(), median(step_s), median(wait_s),
        static_cast<unsigned long long>(bytes));
}

// Median time of n_bytes sent from rank 0 to rank 1 alone (the other direction idle): what the shaped link itself
// carries, to set beside the collectives, which load both directions at once.
double one_way_seconds(zt::MpiComm& comm, float* buf, size_t n_bytes) {
  std::vector<double> t;
  for (int rep = 0; rep < 3; ++rep) {
    comm.barrier();
    const double t0 = MPI_Wtime();
    if (comm.rank() == 0) ZT_MPI_CHECK(MPI_Send(buf, int(n_bytes), MPI_BYTE, 1, 0, comm.mpi_comm()));
    if (comm.rank() == 1) ZT_MPI_CHECK(MPI_Recv(buf, int(n_bytes), MPI_BYTE, 0, 0, comm.mpi_comm(), MPI_STATUS_IGNORE));
    comm.barrier();  // rank 0's send may return before the data arrived
    t.push_back(MPI_Wtime() - t0);
  }
  return median(t);
}

// all_gather times from 1 KiB to max_bytes per rank (x4 apart), median of a few repetitions each; least-squares
// t = α + n_bytes / β over them.
void run_link(zt::MpiComm& comm, size_t max_bytes) {
  std::vector<double> xs, ys;
  std::vector<float> recv(max_bytes / sizeof(float) * size_t(comm.world_size()));
  std::vector<float> send(max_bytes / sizeof(float), 1.0f);
  for (size_t n_bytes = 1024; n_bytes <= max_bytes; n_bytes *= 4) {
    std::vector<double> t;
    for (int rep = 0; rep < 4; ++rep) {
      comm.barrier();
      const double t0 = MPI_Wtime();
      comm.all_gather(send.data(), recv.data(), n_bytes / sizeof(float));
      if (rep > 0) t.push_back(MPI_Wtime() - t0);  // the first may open connections
    }
    xs.push_back(double(n_bytes));
    ys.push_back(median(t));
  }
  const double n = double(xs.size());
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    sx += xs[i];
    sy += ys[i];
    sxx += xs[i] * xs[i];
    sxy += xs[i] * ys[i];
  }
  const double slope = (n * sxy - sx * sy) / (n * sxx - sx * sx);
  const double alpha = (sy - slope * sx) / n;
  const double one_way_s = one_way_seconds(comm, send.data(), max_bytes);
  if (comm.rank() != 0) return;
  std::printf(
      "{\"mode\": \"link\", \"world\": %d, \"alpha_s\": %.8f, \"beta_Bps\": %.1f, \"largest_bytes\": %zu, "
      "\"largest_s\": %.6f, \"one_way_s\": %.6f, \"points\": [",
      comm.world_size(), alpha, slope > 0 ? 1.0 / slope : 0.0, size_t(xs.back()), ys.back(), one_way_s);
  for (size_t i = 0; i < xs.size(); ++i) std::printf("%s[%.0f, %.6f]", i ? ", " : "", xs[i], ys[i]);
  std::printf("]}\n");
}

}  // namespace

int main(int argc, char** argv) {
  zt::mpi_init_once(&argc, &argv);
  int rc = 0;
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    zt::MpiComm comm(MPI_COMM_WORLD), control(MPI_COMM_WORLD);
    if (mode == "step" && argc >= 6) {
      run_step(comm, control, argv[2], std::atoi(argv[3]), std::atoi(argv[4]), std::atoi(argv[5]),
               argc > 6 ? std::atof(argv[6]) : 32.0);
    } else if (mode == "link") {
      run_link(comm, argc > 2 ? size_t(std::atoll(argv[2])) : size_t(4) << 20);
    } else {
      ZT_FAIL("usage: overlap_comm step PRESET STAGE MICRO_BATCH STEPS [BUCKET_MB] | overlap_comm link [MAX_BYTES]");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "overlap_comm: %s\n", e.what());
    rc = 1;
  }
  zt::mpi_finalize_once();
  return rc;
}
