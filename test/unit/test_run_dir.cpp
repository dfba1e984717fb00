// The output directory's lock (one holder at a time, named in the error; released when the holder dies) and the
// clean-up of what interrupted saves and prunes left.
#include <catch2/catch.hpp>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "ckpt/commit.hpp"
#include "ckpt/run_dir.hpp"
#include "core/errors.hpp"
#include "test/test_util.hpp"

namespace fs = std::filesystem;
using zt::Leftover;
using zt::RunDirLock;
using zt::RunDirLockedError;

namespace {

void write_file(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << text;
  REQUIRE(fs::exists(p));
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// The message of the RunDirLockedError that taking `dir`'s lock throws ("" when it does not throw).
std::string lock_error(const std::string& dir) {
  try {
    RunDirLock::take(dir);
  } catch (const RunDirLockedError& e) {
    return e.what();
  }
  return std::string();
}

/// Names directly in `dir`.
std::set<std::string> names_in(const std::string& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

}  // namespace

TEST_CASE("run dir lock: one holder, and a second taker fails naming the directory and the holder") {
  zt::test::ScratchDir scratch;
  const std::string out = scratch.path + "/run";  // taking the lock creates the directory
  ::setenv("SLURM_JOB_ID", "4242", 1);
  ::setenv("SLURM_ARRAY_JOB_ID", "4240", 1);
  ::setenv("SLURM_ARRAY_TASK_ID", "2", 1);
  RunDirLock lock = RunDirLock::take(out);
  ::unsetenv("SLURM_JOB_ID");
  ::unsetenv("SLURM_ARRAY_JOB_ID");
  ::unsetenv("SLURM_ARRAY_TASK_ID");
  REQUIRE(lock.held());
  CHECK(lock.dir() == out);
  const std::string recorded = read_file(out + "/.lock");
  CHECK(recorded.find("\"pid\":" + std::to_string(::getpid())) != std::string::npos);
  CHECK(recorded.find(zt::hostname()) != std::string::npos);

  // flock belongs to the open file, so a second RunDirLock in this very process conflicts like another job would.
  const auto before = fs::last_write_time(out + "/.lock");
  const std::string msg = lock_error(out);
  INFO(msg);
  CHECK(msg.find("output directory " + out + " is in use by another zerotrain job") != std::string::npos);
  CHECK(msg.find("held by host " + zt::hostname() + ", pid " + std::to_string(::getpid())) != std::string::npos);
  CHECK(msg.find("Slurm job 4242 (array task 4240_2)") != std::string::npos);
  CHECK(msg.find("another --output_dir") != std::string::npos);
  CHECK(read_file(out + "/.lock") == recorded);  // the failed taker wrote nothing
  CHECK(fs::last_write_time(out + "/.lock") == before);

  RunDirLock moved = std::move(lock);  // the lock travels with the object
  CHECK_FALSE(lock.held());
  CHECK(moved.held());
  CHECK_FALSE(lock_error(out).empty());
  moved.release();
  CHECK_FALSE(moved.held());
  RunDirLock again = RunDirLock::take(out);  // released: the next job takes it (and the file is reused)
  CHECK(again.held());
  CHECK(read_file(out + "/.lock").find("slurm_job_id") == std::string::npos);
}

TEST_CASE("run dir lock: held by another process until it is SIGKILLed") {
  zt::test::ScratchDir scratch;
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    char ok = 0;
    try {
      RunDirLock held = RunDirLock::take(scratch.path);
      ok = 1;
      (void)!::write(ready[1], &ok, 1);
      ::pause();  // until killed: the kernel, not this process, must drop the lock
    } catch (...) {
    }
    (void)!::write(ready[1], &ok, 1);
    ::_exit(1);
  }
  char ok = 0;
  REQUIRE(::read(ready[0], &ok, 1) == 1);
  REQUIRE(ok == 1);
  const std::string msg = lock_error(scratch.path);
  INFO(msg);
  CHECK(msg.find("pid " + std::to_string(child)) != std::string::npos);
  ::kill(child, SIGKILL);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFSIGNALED(status));
  CHECK(lock_error(scratch.path).empty());
  ::close(ready[0]);
  ::close(ready[1]);
}

TEST_CASE("run dir lock: a lock file that does not name its holder still refuses, saying so") {
  zt::test::ScratchDir scratch;
  RunDirLock lock = RunDirLock::take(scratch.path);
  write_file(scratch.path + "/.lock", "");  // as seen while the holder is between flock and writing its name
  CHECK(lock_error(scratch.path).find("holder unknown: " + scratch.path + "/.lock is empty") != std::string::npos);
  write_file(scratch.path + "/.lock", "garbage");
  CHECK(lock_error(scratch.path).find("holds 'garbage'") != std::string::npos);
}

TEST_CASE("classify_leftover: only the exact dot-names of saves, prunes and `latest` updates") {
  int64_t step = -1;
  CHECK(zt::classify_leftover(".checkpoint-12.tmp", &step) == Leftover::kSaveTemp);
  CHECK(step == 12);
  CHECK(zt::classify_leftover(".checkpoint-3.old", &step) == Leftover::kMovedAside);
  CHECK(step == 3);
  CHECK(zt::classify_leftover(".checkpoint-0.pruning", &step) == Leftover::kPruning);
  CHECK(step == 0);
  CHECK(zt::classify_leftover(".latest.tmp", nullptr) == Leftover::kLatestTemp);
  for (const char* other : {"checkpoint-4", ".checkpoint-4", ".checkpoint-4.tmpx", ".checkpoint-x.tmp",
                            ".checkpoint-.tmp", ".checkpoint-4.tmp.old", ".lock", "latest", "metrics.jsonl",
                            ".checkpoint-1234567890123456789.tmp", ".latest.tmp2"}) {
    INFO(other);
    CHECK(zt::classify_leftover(other, nullptr) == Leftover::kNone);
  }
}

TEST_CASE("clean_leftovers: finishes interrupted saves and prunes, restores an uncommitted re-save, keeps the rest") {
  zt::test::ScratchDir scratch;
  const fs::path d = scratch.path;
  RunDirLock lock = RunDirLock::take(scratch.path);
  write_file(d / "checkpoint-2/model.h5", "committed 2");
  write_file(d / "checkpoint-6/model.h5", "committed 6");
  write_file(d / ".checkpoint-8.tmp/model.h5", std::string(3 << 20, 'x'));  // a save that died
  write_file(d / ".checkpoint-4.pruning/model.h5", "half pruned");
  write_file(d / ".checkpoint-6.old/model.h5", "replaced 6");    // checkpoint-6 committed: the old copy goes
  write_file(d / ".checkpoint-10.old/model.h5", "previous 10");  // its re-save died before the commit
  write_file(d / ".checkpoint-10.tmp/model.h5", "uncommitted 10");
  write_file(d / ".latest.tmp", "checkpoint-10\n");
  for (const char* keep : {"latest", "metrics.jsonl", "notes.txt", ".checkpoint-x.tmp/f", ".hidden"})
    write_file(d / keep, "user's");

  const std::vector<std::string> report = lock.clean_leftovers();
  std::string all;
  for (const auto& line : report) all += line + "\n";
  INFO(all);
  CHECK(report.size() == 6);
  CHECK(all.find("removed " + (d / ".checkpoint-8.tmp").string() + " (3.0 MiB): a save that did not commit") !=
        std::string::npos);
  CHECK(all.find("removed " + (d / ".checkpoint-4.pruning").string()) != std::string::npos);
  CHECK(all.find("restored " + (d / "checkpoint-10").string() + " from " + (d / ".checkpoint-10.old").string()) !=
        std::string::npos);
  CHECK(names_in(scratch.path) == std::set<std::string>{".lock", "checkpoint-2", "checkpoint-6", "checkpoint-10",
                                                        "latest", "metrics.jsonl", "notes.txt", ".checkpoint-x.tmp",
                                                        ".hidden"});
  CHECK(read_file(d / "checkpoint-6/model.h5") == "committed 6");
  CHECK(read_file(d / "checkpoint-10/model.h5") == "previous 10");
  CHECK(lock.clean_leftovers().empty());  // nothing left to do

  write_file(d / ".checkpoint-12.tmp/model.h5", "x");
  RunDirLock not_held = std::move(lock);
  not_held.release();
  CHECK(not_held.clean_leftovers().empty());  // only the holder cleans
  CHECK(fs::exists(d / ".checkpoint-12.tmp"));
}
