// One job per output directory: an exclusive lock on OUTPUT/.lock, and the clean-up of what crashed saves and prunes
// left there, which only the lock's holder may do. docs/checkpoint-format.md, section 1, describes both.
#pragma once

#include <string>
#include <vector>

#include "core/errors.hpp"

namespace zt {

class Comm;

/// File name of the lock inside an output directory.
constexpr const char* kRunDirLockFile = ".lock";

/// Another job holds the output directory's lock, or the lock cannot be taken; the message names the directory and,
/// when known, the holder (host, pid, Slurm job).
class RunDirLockedError : public Error {
 public:
  explicit RunDirLockedError(const std::string& what) : Error(what) {}
};

/// An exclusive lock on an output directory for the lifetime of a run: flock(LOCK_EX) on OUTPUT/.lock, held by one
/// process (rank 0), released when this object is destroyed or the process dies (however it dies: the kernel drops
/// it). The lock file names its holder: `{"host": ..., "pid": ..., "slurm_job_id": ..., "since": ...}`.
/// Typical use, before any rank writes anything into the directory:
///   RunDirLock lock = RunDirLock::take_collective(tcfg.output_dir, comm);  // throws on every rank if taken
///   for (const auto& line : lock.clean_leftovers()) fmt::print("{}\n", line);  // rank 0 reports
class RunDirLock {
 public:
  /// Takes the lock in this process, without waiting: creates output_dir if needed, opens OUTPUT/.lock and, once
  /// locked, writes this process into it. Throws RunDirLockedError naming the directory and the holder when another
  /// process (or another RunDirLock in this one) holds it, or when the file system does not support flock. A
  /// process that fails to take the lock changes nothing in the directory.
  static RunDirLock take(const std::string& output_dir);
  /// Collective: rank 0 takes the lock; when it cannot, every rank throws the same RunDirLockedError. The other
  /// ranks' objects hold nothing (held() is false).
  static RunDirLock take_collective(const std::string& output_dir, Comm& comm);

  RunDirLock(RunDirLock&& other) noexcept;
  RunDirLock& operator=(RunDirLock&& other) noexcept;
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;
  ~RunDirLock();

  /// True in the process that holds the lock.
  bool held() const { return fd_ >= 0; }
  /// The locked output directory.
  const std::string& dir() const { return dir_; }
  /// Releases the lock now (the lock file stays: removing it would let two jobs lock two different files).
  void release();

  /// Finishes what interrupted saves and prunes left in the directory and returns one line per thing done (none
  /// where held() is false, or when there is nothing): removes `.checkpoint-<step>.tmp/` (a save that did not
  /// commit), `.checkpoint-<step>.pruning/` (a prune that did not finish) and `.latest.tmp`; removes
  /// `.checkpoint-<step>.old/` when `checkpoint-<step>/` exists (its replacement committed) and otherwise renames it
  /// back to `checkpoint-<step>/` (the save replacing it died before its commit, so the old copy is the checkpoint).
  /// Any other name is left alone. A failure to remove something is reported in its line, not thrown.
  std::vector<std::string> clean_leftovers() const;

 private:
  RunDirLock(std::string dir, int fd) : dir_(std::move(dir)), fd_(fd) {}
  std::string dir_;
  int fd_ = -1;
};

}  // namespace zt
