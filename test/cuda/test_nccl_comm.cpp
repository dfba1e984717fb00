// The NCCL comm under mpirun with one GPU per rank (the smoke test runs one rank): collectives on exactly
// representable values, host buffers through MPI, errors, traffic counters, and ZeRO steps equal to the staged MPI
// comm's. Exits 77 (CTest: skipped) with no device, no loadable NCCL, or ranks sharing a GPU.
#include <mpi.h>
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "core/errors.hpp"
#include "cuda/cuda_backend.hpp"
#include "cuda/device_comm.hpp"
#include "sharding/comm_mpi.hpp"
#include "test/cuda/cuda_mpi_main.hpp"
#include "test/cuda/zero_steps.hpp"

using VecF = std::vector<float>;

namespace {

// Small integers: every partial sum is exact in fp32, so NCCL's summation order cannot change a bit and the
// expected values are exact.
float value(int rank, size_t i) { return float((rank + 1) * int(i % 13) - 6); }

VecF download(zt::Backend& be, const float* p, size_t n) {
  VecF v(n);
  be.to_host(v.data(), p, n);
  return v;
}

struct Fixture {
  std::unique_ptr<zt::Backend> be = zt::make_cuda_backend(zt::test::local_device(), false);
  std::unique_ptr<zt::Comm> comm = zt::make_nccl_comm(MPI_COMM_WORLD, *be);
  ~Fixture() { comm.reset(); }  // before the backend whose stream it orders against
};

}  // namespace

TEST_CASE("NCCL collectives on device buffers give the exact sums and gathers", "[nccl]") {
  Fixture f;
  zt::Comm& comm = *f.comm;
  zt::Backend& be = *f.be;
  const int N = comm.world_size(), r = comm.rank();
  for (size_t n : {size_t(1), size_t(7), size_t(1000), size_t(4099)}) {
    INFO(n << " elements per rank on " << N << " rank(s)");
    VecF send(size_t(N) * n), sum(size_t(N) * n, 0.0f);
    for (size_t i = 0; i < send.size(); ++i) send[i] = value(r, i);
    for (int q = 0; q < N; ++q)
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += value(q, i);
    float* d_send = be.alloc(send.size());
    float* d_recv = be.alloc(send.size());
    float* d_other = be.alloc(send.size());
    be.from_host(d_send, send.data(), send.size());

    comm.reduce_scatter_sum(d_send, d_recv, n);
    CHECK(download(be, d_recv, n) == VecF(sum.begin() + long(size_t(r) * n), sum.begin() + long(size_t(r + 1) * n)));
    // Two reductions in flight, waited for in the opposite order.
    zt::CommHandle h1 = comm.ireduce_scatter_sum(d_send, d_recv, n);
    zt::CommHandle h2 = comm.ireduce_scatter_sum(d_send, d_other, n);
    comm.progress();
    comm.wait(h2);
    comm.wait(h1);
    CHECK_FALSE(h1.pending());
    CHECK(download(be, d_recv, n) == download(be, d_other, n));
    CHECK(download(be, d_recv, n) == VecF(sum.begin() + long(size_t(r) * n), sum.begin() + long(size_t(r + 1) * n)));

    VecF gathered(size_t(N) * n);
    for (int q = 0; q < N; ++q)
      for (size_t i = 0; i < n; ++i) gathered[size_t(q) * n + i] = value(q, i);
    comm.all_gather(d_send, d_recv, n);  // every rank's first n values
    CHECK(download(be, d_recv, size_t(N) * n) == gathered);
    be.zero(d_other, size_t(N) * n);
    be.copy(d_other + size_t(r) * n, d_send, n);
    zt::CommHandle h3 = comm.iall_gather(d_other + size_t(r) * n, d_other, n);  // in place
    comm.wait(h3);
    CHECK(download(be, d_other, size_t(N) * n) == gathered);

    comm.all_reduce_sum(d_send, send.size());
    CHECK(download(be, d_send, send.size()) == sum);

    be.from_host(d_send, send.data(), send.size());
    comm.broadcast(d_send, n * sizeof(float), N - 1);
    VecF root(n);
    for (size_t i = 0; i < n; ++i) root[i] = value(N - 1, i);
    CHECK(download(be, d_send, n) == root);
    be.release(d_send);
    be.release(d_recv);
    be.release(d_other);
  }
}

TEST_CASE("the NCCL comm sends host buffers through MPI and counts its traffic", "[nccl]") {
  Fixture f;
  zt::Comm& comm = *f.comm;
  const int N = comm.world_size();
  double loss = 0.5 * (comm.rank() + 1);
  comm.all_reduce_sum(&loss, 1);  // the trainer's loss sum: host memory, rank-ordered
  CHECK(loss == 0.5 * N * (N + 1) / 2);
  CHECK(comm.all_reduce_max(comm.rank()) == N - 1);
  comm.barrier();
  const size_t n = 1024;
  float* d = f.be->alloc(size_t(N) * n);
  comm.reset_counters();
  comm.reduce_scatter_sum(d, d + size_t(comm.rank()) * n, n);
  comm.all_gather(d + size_t(comm.rank()) * n, d, n);
  CHECK(comm.bytes_sent() == 2 * uint64_t(N - 1) * n * sizeof(float));
  f.be->release(d);
}

TEST_CASE("NCCL comm errors name the problem, the rank and the host", "[nccl]") {
  Fixture f;
  float* d = f.be->alloc(16);
  VecF h(16);
  CHECK_THROWS_WITH(f.comm->broadcast(d, 64, f.comm->world_size()),
                    Catch::Contains("root") && Catch::Contains("rank") && Catch::Contains(zt::hostname()));
  CHECK_THROWS_WITH(f.comm->all_gather(d, h.data(), 1), Catch::Contains("same space"));
  // The comm is still usable after a caller's mistake (nothing reached NCCL).
  f.comm->all_reduce_sum(d, 16);
  f.be->release(d);
}

TEST_CASE("ZeRO steps over NCCL match the staged MPI comm", "[nccl][zero]") {
  for (int stage : {0, 3}) {
    INFO("stage " << stage);
    zt::test::ZeroRun nccl, staged;
    {
      Fixture f;
      nccl = zt::test::run_zero_steps(*f.be, *f.comm, stage, 3);
    }
    {
      auto be = zt::make_cuda_backend(zt::test::local_device(), false);
      auto comm = zt::make_staged_mpi_comm(MPI_COMM_WORLD, *be);
      staged = zt::test::run_zero_steps(*be, *comm, stage, 3);
    }
    REQUIRE(nccl.losses.size() == 3);
    int world = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (world == 1) {
      // One rank: every collective is a copy on both comms, so the runs are the same computation.
      CHECK(std::memcmp(nccl.losses.data(), staged.losses.data(), nccl.losses.size() * sizeof(double)) == 0);
      for (size_t u = 0; u < nccl.final_params.size(); ++u) CHECK(nccl.final_params[u] == staged.final_params[u]);
    } else {
      // Several ranks: NCCL sums in its own order (ring or tree), ~1 ulp per sum from the rank-ordered MPI sums.
      for (size_t s = 0; s < nccl.losses.size(); ++s)
        CHECK(std::fabs(nccl.losses[s] - staged.losses[s]) <= 1e-3 * std::fabs(staged.losses[s]));
      for (size_t u = 0; u < nccl.first_grads.size(); ++u) {
        const auto rep = zt::test::compare_close(nccl.first_grads[u], staged.first_grads[u], {1e-5, 1e-6});
        INFO("unit " << u << ": " << rep.text);
        CHECK(rep.n_bad == 0);
      }
    }
  }
}

int main(int argc, char** argv) {
  return zt::test::run_cuda_mpi_tests(argc, argv, [] {
    const std::string missing = zt::nccl_unavailable_reason();
    if (!missing.empty()) return "NCCL unavailable: " + missing;
    MPI_Comm local = MPI_COMM_NULL;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local);
    int lsize = 1;
    MPI_Comm_size(local, &lsize);
    MPI_Comm_free(&local);
    if (lsize > zt::cuda_device_count())
      return std::to_string(lsize) + " ranks share " + std::to_string(zt::cuda_device_count()) +
             " GPU(s): NCCL needs one GPU per rank";
    return std::string();
  });
}
