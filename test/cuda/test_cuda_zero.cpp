// Under mpirun, ranks possibly sharing one GPU: the staged MPI comm gives MpiComm's bits on device buffers; GPT-2
// steps through the ZeRO engine on CUDA (fp32) match the CPU at every stage, and the stages agree bit for bit.
// Exits 77 (CTest: skipped) with no device.
#include <mpi.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "core/errors.hpp"
#include "cuda/cuda_backend.hpp"
#include "cuda/cuda_graph.hpp"
#include "cuda/device_comm.hpp"
#include "cuda/staged_mpi_comm.cuh"
#include "sharding/comm_mpi.hpp"
#include "test/cuda/cuda_mpi_main.hpp"
#include "test/cuda/zero_steps.hpp"
#include "test/test_util.hpp"

using zt::test::same_bits;
using zt::test::ZeroRun;
using VecF = std::vector<float>;

namespace {

// ---- tolerances of CUDA fp32 against the CPU, through the whole engine ----
// First step: the per-op fp32 differences (other summation orders, CUDA's expf) compound through ~30 ops and the
// LM head's softmax; test_cuda_ops' whole-step tolerance (1e-4 relative plus 1e-4 of the scale) applies, since the
// reduced gradients are sums of per-rank gradients in a fixed order on both sides. The scale here is the largest
// gradient of the whole unit (the engine keeps a unit's gradients as one flat buffer), coarser than
// test_cuda_ops' per-tensor scale: a wrong small tensor (a LayerNorm bias, wpe) is that test's to catch; this one
// catches a wrong reduction, shard or stage.
constexpr double kGradRel = 1e-4, kGradAbs = 1e-4;
// Loss of the first step: test_cuda_ops' whole-step loss tolerance (the mean of per-token losses, each off by the
// same compounded per-op differences).
constexpr double kLossRel = 1e-4;
// Later steps: AdamW's first updates are about lr * sign(g), so a gradient element at rounding level (|g| ~ 1e-9)
// whose sign differs between the backends moves its parameter by up to 2 lr. A handful of such elements change
// later losses by far less than 1e-3 relative; a wrong op or a wrong reduction changes them by more.
constexpr double kLaterLossRel = 1e-3;
constexpr float kLr = 1e-3f;
constexpr int kSteps = 4;

// Device floats owned by a backend, with uploads and downloads.
class DeviceBuf {
 public:
  DeviceBuf(zt::Backend& be, size_t n) : be_(be), n_(n), p_(be.alloc(n)) {}
  ~DeviceBuf() { be_.release(p_); }
  DeviceBuf(const DeviceBuf&) = delete;
  DeviceBuf& operator=(const DeviceBuf&) = delete;
  float* get() const { return p_; }
  void upload(const VecF& host) {
    REQUIRE(host.size() <= n_);
    be_.from_host(p_, host.data(), host.size());
  }
  VecF download(size_t n) const {
    VecF host(n);
    be_.to_host(host.data(), p_, n);
    return host;
  }

 private:
  zt::Backend& be_;
  size_t n_;
  float* p_;
};

// The same random values on every rank for a given (seed, tag), different per rank when `rank` differs.
VecF rank_values(uint64_t seed, int rank, size_t n) {
  std::mt19937_64 rng(seed * 1000003u + uint64_t(rank));
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  VecF v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

std::unique_ptr<zt::Backend> device_backend() { return zt::make_cuda_backend(zt::test::local_device(), false); }

// Every collective of the contract on device buffers through `staged`, each compared bit for bit with MpiComm on
// the same values in host memory.
void check_collectives(zt::Comm& staged, zt::MpiComm& host, zt::Backend& be, uint64_t seed) {
  const int N = staged.world_size(), r = staged.rank();
  for (size_t n : {size_t(1), size_t(7), size_t(1000), size_t(4099)}) {
    INFO("seed " << seed << ", " << n << " elements per rank");
    const VecF send = rank_values(seed + n, r, size_t(N) * n);
    DeviceBuf d_send(be, size_t(N) * n), d_recv(be, size_t(N) * n);

    VecF want(n);
    host.reduce_scatter_sum(send.data(), want.data(), n);
    d_send.upload(send);
    staged.reduce_scatter_sum(d_send.get(), d_recv.get(), n);
    CHECK(same_bits(d_recv.download(n), want));
    // In place: recv is this rank's block of send.
    staged.reduce_scatter_sum(d_send.get(), d_send.get() + size_t(r) * n, n);
    const VecF after = d_send.download(size_t(N) * n);
    CHECK(same_bits(VecF(after.begin() + long(size_t(r) * n), after.begin() + long(size_t(r + 1) * n)), want));
    d_send.upload(send);
    zt::CommHandle h = staged.ireduce_scatter_sum(d_send.get(), d_recv.get(), n);
    staged.progress();
    staged.wait(h);
    CHECK_FALSE(h.pending());
    CHECK(same_bits(d_recv.download(n), want));

    const VecF mine = rank_values(seed + n + 1, r, n);
    VecF gathered(size_t(N) * n);
    host.all_gather(mine.data(), gathered.data(), n);
    d_send.upload(mine);
    staged.all_gather(d_send.get(), d_recv.get(), n);
    CHECK(same_bits(d_recv.download(size_t(N) * n), gathered));
    VecF slot(size_t(N) * n, 0.0f);
    std::copy(mine.begin(), mine.end(), slot.begin() + long(size_t(r) * n));
    d_recv.upload(slot);
    h = staged.iall_gather(d_recv.get() + size_t(r) * n, d_recv.get(), n);  // in place
    staged.wait(h);
    CHECK(same_bits(d_recv.download(size_t(N) * n), gathered));

    VecF reduced = send;
    host.all_reduce_sum(reduced.data(), reduced.size());
    d_send.upload(send);
    staged.all_reduce_sum(d_send.get(), send.size());
    CHECK(same_bits(d_send.download(send.size()), reduced));

    // Doubles in device memory (two floats each), and the broadcast of raw bytes from the last rank.
    std::vector<double> dbl(n);
    for (size_t i = 0; i < n; ++i) dbl[i] = double(send[i]) / 3.0;
    std::vector<double> dbl_want = dbl;
    host.all_reduce_sum(dbl_want.data(), n);
    DeviceBuf d_dbl(be, 2 * n);
    be.from_host(d_dbl.get(), reinterpret_cast<const float*>(dbl.data()), 2 * n);
    staged.all_reduce_sum(reinterpret_cast<double*>(d_dbl.get()), n);
    std::vector<double> dbl_got(n);
    be.to_host(reinterpret_cast<float*>(dbl_got.data()), d_dbl.get(), 2 * n);
    CHECK(std::memcmp(dbl_got.data(), dbl_want.data(), n * sizeof(double)) == 0);

    const VecF root_values = rank_values(seed + n + 2, N - 1, n);
    d_send.upload(r == N - 1 ? root_values : VecF(n, 0.0f));
    staged.broadcast(d_send.get(), n * sizeof(float), N - 1);
    CHECK(same_bits(d_send.download(n), root_values));
  }
}

}  // namespace

TEST_CASE("the staged MPI comm gives MpiComm's bits on device buffers", "[staged]") {
  const uint64_t seed = zt::test::shared_test_seed();
  auto be = device_backend();
  zt::MpiComm host(MPI_COMM_WORLD);
  auto staged_owner = zt::make_staged_mpi_comm(MPI_COMM_WORLD, *be);
  auto* staged = dynamic_cast<zt::cuda::StagedMpiComm*>(staged_owner.get());
  REQUIRE(staged != nullptr);
  check_collectives(*staged, host, *be, seed);
  const size_t pinned_after_first = staged->pinned_allocations();
  if (staged->world_size() > 1) CHECK(pinned_after_first > 0);  // one rank copies on the device
  // The same sequence again allocates no pinned memory: the pool is reused.
  check_collectives(*staged, host, *be, seed);
  CHECK(staged->pinned_allocations() == pinned_after_first);
  // Host pointers go straight to MPI: host scalars as the trainer sums them, and flags.
  double loss = 1.0 + staged->rank();
  staged->all_reduce_sum(&loss, 1);
  const int N = staged->world_size();
  CHECK(loss == double(N) * (N + 1) / 2);
  CHECK(staged->all_reduce_max(staged->rank()) == N - 1);
  VecF host_values(5, float(staged->rank()));
  staged->all_reduce_sum(host_values.data(), host_values.size());
  CHECK(host_values[4] == float(N) * float(N - 1) / 2);
  // One buffer on the device and one on the host is a caller's mistake, reported as such.
  DeviceBuf d(*be, size_t(N) * 4);
  VecF h(size_t(N) * 4);
  CHECK_THROWS_WITH(staged->reduce_scatter_sum(d.get(), h.data(), 4), Catch::Contains("same space"));
  // The traffic counters include the MpiComm the staged comm owns (what the trainer reports per step).
  staged->reset_counters();
  staged->reduce_scatter_sum(d.get(), d.get() + size_t(staged->rank()) * 4, 4);
  CHECK(staged->bytes_sent() == uint64_t(N - 1) * 4 * sizeof(float));
  staged->reset_counters();
  CHECK(staged->bytes_sent() == 0);
}

TEST_CASE("ZeRO steps on CUDA (fp32) match the CPU at every stage; CUDA stages agree bit for bit", "[zero]") {
  std::vector<ZeroRun> cuda_runs;
  for (int stage = 0; stage <= 3; ++stage) {
    INFO("stage " << stage);
    ZeroRun cpu, dev;
    {
      auto be = zt::make_cpu_backend(1);
      zt::MpiComm comm(MPI_COMM_WORLD);
      cpu = zt::test::run_zero_steps(*be, comm, stage, kSteps, kLr);
    }
    {
      auto be = device_backend();
      auto comm = zt::make_staged_mpi_comm(MPI_COMM_WORLD, *be);
      dev = zt::test::run_zero_steps(*be, *comm, stage, kSteps, kLr);
    }
    REQUIRE(dev.losses.size() == size_t(kSteps));
    CHECK(std::fabs(dev.losses[0] - cpu.losses[0]) <= kLossRel * std::fabs(cpu.losses[0]));
    for (size_t u = 0; u < cpu.first_grads.size(); ++u) {
      const auto rep = zt::test::compare_close(dev.first_grads[u], cpu.first_grads[u], {kGradRel, kGradAbs});
      INFO("unit " << u << " gradients of step 1: " << rep.text);
      CHECK(rep.n_bad == 0);
    }
    for (int s = 1; s < kSteps; ++s) {
      INFO("step " << s + 1 << ": loss " << dev.losses[size_t(s)] << " vs CPU " << cpu.losses[size_t(s)]);
      CHECK(std::fabs(dev.losses[size_t(s)] - cpu.losses[size_t(s)]) <=
            kLaterLossRel * std::fabs(cpu.losses[size_t(s)]));
    }
    // An AdamW step moves a parameter by about lr * |m^/sqrt(v^)| <= ~1.2 lr (plus decay), so where a gradient's
    // sign differed the backends drift apart by at most ~2.4 lr per step. This bound catches NaN and garbage; subtle
    // errors are the gradient and loss checks' job.
    for (size_t u = 0; u < cpu.final_params.size(); ++u) {
      const double diff = zt::test::max_abs_diff(dev.final_params[u], cpu.final_params[u]);
      INFO("unit " << u << " parameters after " << kSteps << " steps: max |cuda - cpu| = " << diff);
      CHECK(diff <= 3.0 * kLr * kSteps);
    }
    cuda_runs.push_back(std::move(dev));
  }
  for (int stage = 1; stage <= 3; ++stage) {
    INFO("CUDA stage " << stage << " vs stage 0");
    const ZeroRun& a = cuda_runs[size_t(stage)];
    const ZeroRun& b = cuda_runs[0];
    CHECK(std::memcmp(a.losses.data(), b.losses.data(), a.losses.size() * sizeof(double)) == 0);
    for (size_t u = 0; u < a.final_params.size(); ++u) CHECK(same_bits(a.final_params[u], b.final_params[u]));
  }
}

TEST_CASE("bf16 ZeRO steps read kept parameter copies: the bits of rounding every weight per matmul",
          "[zero][copies]") {
  // The engine keeps the copies current (AdamW in place at stage 0, a refresh after each all-gather or gather);
  // ZT_CUDA_PARAM_COPY=0 makes a backend that rounds the fp32 weight at every matmul instead. Rounding is the same
  // either way, so any stale copy shows up as different bits.
  for (int stage = 0; stage <= 3; ++stage) {
    INFO("stage " << stage);
    ZeroRun with_copies, per_call;
    {
      auto be = zt::make_cuda_backend(zt::test::local_device(), true);
      REQUIRE(be->param_copy_bytes() == 2);
      auto comm = zt::make_staged_mpi_comm(MPI_COMM_WORLD, *be);
      with_copies = zt::test::run_zero_steps(*be, *comm, stage, kSteps, kLr);
    }
    {
      ::setenv("ZT_CUDA_PARAM_COPY", "0", 1);
      std::unique_ptr<zt::Backend> be;
      try {
        be = zt::make_cuda_backend(zt::test::local_device(), true);
      } catch (...) {
        ::unsetenv("ZT_CUDA_PARAM_COPY");
        throw;
      }
      ::unsetenv("ZT_CUDA_PARAM_COPY");
      REQUIRE(be->param_copy_bytes() == 0);
      auto comm = zt::make_staged_mpi_comm(MPI_COMM_WORLD, *be);
      per_call = zt::test::run_zero_steps(*be, *comm, stage, kSteps, kLr);
    }
    CHECK(std::memcmp(with_copies.losses.data(), per_call.losses.data(), per_call.losses.size() * sizeof(double)) == 0);
    for (size_t u = 0; u < per_call.final_params.size(); ++u) {
      INFO("unit " << u);
      CHECK(same_bits(with_copies.final_params[u], per_call.final_params[u]));
    }
  }
}

TEST_CASE("cuda_graphs on: a graph per micro-step at stage 1 with the reductions beside it, eager at stage 3",
          "[zero][graphs]") {
  // Stage 1: the engine finishes the parameter gathers before the micro-step and starts its reduce-scatters after
  // it (through the staged MPI comm, which a graph cannot hold); stage 3 gathers and reduces between the layers, so
  // its micro-steps run op by op. Either way the bits of graphs off.
  for (int stage : {1, 3}) {
    INFO("stage " << stage);
    ZeroRun runs[2];
    zt::CudaGraphStats stats;
    for (int graphs = 0; graphs < 2; ++graphs) {
      zt::CudaVariants v;
      v.graphs = graphs ? "on" : "off";
      auto be = zt::make_cuda_backend(zt::test::local_device(), true, v);
      auto comm = zt::make_staged_mpi_comm(MPI_COMM_WORLD, *be);
      // Stage 1: two keys (the first micro-step of a step zeroes the gradients), each run op by op, then captured,
      // then replayed in step 3. Stage 3 records nothing: one step shows it.
      runs[graphs] = zt::test::run_zero_steps(*be, *comm, stage, stage == 1 ? 3 : 1, kLr);
      if (graphs) stats = zt::cuda_graph_stats(*be);
    }
    CHECK(std::memcmp(runs[0].losses.data(), runs[1].losses.data(), runs[0].losses.size() * sizeof(double)) == 0);
    for (size_t u = 0; u < runs[0].final_params.size(); ++u) {
      INFO("unit " << u);
      CHECK(same_bits(runs[0].first_grads[u], runs[1].first_grads[u]));
      CHECK(same_bits(runs[0].final_params[u], runs[1].final_params[u]));
    }
    if (stage == 1) {
      CHECK(stats.replays > 0);
      CHECK(stats.broken_regions == 0);
    } else {
      CHECK(stats.regions == 0);
    }
  }
}

int main(int argc, char** argv) { return zt::test::run_cuda_mpi_tests(argc, argv, nullptr); }
