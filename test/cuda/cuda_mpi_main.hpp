// main() of the CUDA tests that run under mpirun: "SKIPPED: ..." and exit 77 (CTest: skipped) on every rank when
// there is no device (decided before MPI starts) or when a test-specific requirement is missing; otherwise Catch2
// with rank-tagged failures, as test/mpi/mpi_test_main.cpp.
#pragma once

#include <mpi.h>
#include <catch2/catch.hpp>

#include <cstdio>
#include <functional>
#include <string>

#include "core/errors.hpp"
#include "cuda/cuda_backend.hpp"
#include "test/test_util.hpp"

namespace zt::test {

/// Device this rank uses: its index among the ranks of its node, mod the node's device count (as zerotrain does).
inline int local_device() {
  MPI_Comm local = MPI_COMM_NULL;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local);
  int lrank = 0;
  MPI_Comm_rank(local, &lrank);
  MPI_Comm_free(&local);
  return lrank % cuda_device_count();
}

/// `skip_reason` runs after MPI_Init on every rank; a non-empty answer on any rank skips the whole binary.
inline int run_cuda_mpi_tests(int argc, char** argv, const std::function<std::string()>& skip_reason) {
  if (cuda_device_count() == 0) {
    std::printf("SKIPPED: no CUDA device\n");
    return 77;
  }
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  set_error_context(rank, size);
  const std::string why = skip_reason ? skip_reason() : std::string();
  int any_skip = why.empty() ? 0 : 1, skip = 0;
  MPI_Allreduce(&any_skip, &skip, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (skip) {
    if (rank == 0) std::printf("SKIPPED: %s\n", why.empty() ? "another rank cannot run these tests" : why.c_str());
    MPI_Finalize();
    return 77;
  }
  const int device = local_device();  // collective: every rank
  if (rank == 0) {
    std::printf("%d rank(s); rank 0 on CUDA device %d: %s\n", size, device, cuda_device_description(device).c_str());
    std::fflush(stdout);
  }
  return run_catch_on_every_rank(argc, argv);
}

}  // namespace zt::test
