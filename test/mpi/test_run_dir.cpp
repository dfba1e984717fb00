// The output directory's lock under mpirun: rank 0 holds it for the job, every rank agrees on a refusal (naming rank
// 0 of the holding job), and only the holder cleans leftovers.
#include <mpi.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "ckpt/run_dir.hpp"
#include "core/errors.hpp"
#include "sharding/comm_mpi.hpp"

namespace fs = std::filesystem;
using zt::MpiComm;
using zt::RunDirLock;
using zt::RunDirLockedError;

namespace {

/// A fresh directory made by rank 0 and known to every rank; rank 0 removes it at the end.
struct SharedScratch {
  explicit SharedScratch(MpiComm& comm) : comm(comm) {
    std::string p(4096, '\0');
    if (comm.rank() == 0) {
      const char* base = std::getenv("TMPDIR");
      std::string tmpl = std::string(base && *base ? base : "/tmp") + "/zt_rundir_mpi_XXXXXX";
      REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
      p = tmpl;
    }
    uint64_t len = p.size();
    comm.broadcast(&len, sizeof(len), 0);
    p.resize(len);
    comm.broadcast(p.data(), len, 0);
    path = p;
  }
  ~SharedScratch() {
    comm.barrier();
    std::error_code ec;
    if (comm.rank() == 0) fs::remove_all(path, ec);
  }
  MpiComm& comm;
  std::string path;
};

/// What take_collective throws on this rank ("" when it does not).
std::string collective_error(const std::string& dir, MpiComm& comm) {
  try {
    RunDirLock::take_collective(dir, comm);
  } catch (const RunDirLockedError& e) {
    return e.what();
  }
  return std::string();
}

}  // namespace

TEST_CASE("run dir lock: rank 0 holds it; a second job is refused on every rank, naming the holder") {
  MpiComm comm(MPI_COMM_WORLD);
  SharedScratch scratch(comm);
  const std::string out = scratch.path + "/run";
  long holder_pid = long(::getpid());
  comm.broadcast(&holder_pid, sizeof(holder_pid), 0);

  RunDirLock lock = RunDirLock::take_collective(out, comm);
  CHECK(lock.held() == (comm.rank() == 0));
  CHECK(lock.dir() == out);
  comm.barrier();
  // Another process (any rank but 0, as a job started elsewhere would be) cannot take it.
  if (comm.rank() != 0) {
    std::string msg;
    try {
      RunDirLock::take(out);
    } catch (const RunDirLockedError& e) {
      msg = e.what();
    }
    INFO(msg);
    CHECK(msg.find("in use by another zerotrain job (held by host " + zt::hostname() + ", pid " +
                   std::to_string(holder_pid)) != std::string::npos);
  }
  // A second collective take: the same refusal on every rank, not only on the rank that tried.
  const std::string msg = collective_error(out, comm);
  INFO(msg);
  CHECK(msg.find("output directory " + out + " is in use") != std::string::npos);
  CHECK(msg.find("pid " + std::to_string(holder_pid)) != std::string::npos);
  uint64_t len0 = msg.size();
  comm.broadcast(&len0, sizeof(len0), 0);
  CHECK(msg.size() == len0);

  lock.release();
  comm.barrier();
  CHECK(collective_error(out, comm).empty());  // released: taken (and released again) by the next job
}

TEST_CASE("run dir lock: only the holder cleans leftovers") {
  MpiComm comm(MPI_COMM_WORLD);
  SharedScratch scratch(comm);
  if (comm.rank() == 0) {
    fs::create_directories(scratch.path + "/.checkpoint-4.tmp");
    std::ofstream(scratch.path + "/.checkpoint-4.tmp/model.h5") << "partial";
  }
  comm.barrier();
  RunDirLock lock = RunDirLock::take_collective(scratch.path, comm);
  const auto report = lock.clean_leftovers();
  CHECK(report.size() == (comm.rank() == 0 ? 1u : 0u));
  comm.barrier();
  CHECK_FALSE(fs::exists(scratch.path + "/.checkpoint-4.tmp"));
}
