// Catch2 main for tests run under mpirun: MPI up before the tests, rank-tagged failures, abort on failure.
#define CATCH_CONFIG_RUNNER
#include <mpi.h>
#include <catch2/catch.hpp>

#include "core/errors.hpp"

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  zt::set_error_context(rank, size);
  Catch::Session session;
  // Only rank 0 reports successes; every rank reports its own failures.
  if (rank != 0) session.configData().reporterName = "compact";
  int rc = session.run(argc, argv);
  int any_failed = 0;
  MPI_Allreduce(&rc, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any_failed == 0 ? 0 : 1;
}
