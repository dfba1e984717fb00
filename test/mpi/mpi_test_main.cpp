// Catch2 main for tests run under mpirun: MPI up before the tests, every rank reports its own failures.
#include <mpi.h>
#include <catch2/catch.hpp>

#include "core/errors.hpp"
#include "test/test_util.hpp"

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  zt::set_error_context(rank, size);
  return zt::test::run_catch_on_every_rank(argc, argv);
}
