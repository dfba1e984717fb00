// Asynchronous checkpoint save: the step blocks only while the shard is copied to host memory; a thread with its own
// communicator writes. On a host-memory backend even the copy runs on that thread, overlapped with the next step's
// forward and backward, which only read the shard: the step blocks only if the copy has not finished when its
// optimizer step is about to change the shard.
#pragma once

#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "ckpt/checkpoint.hpp"
#include "sharding/comm_mpi.hpp"

namespace zt {

/// Writes checkpoints on a background thread over a duplicate of the training communicator (needs
/// MPI_THREAD_MULTIPLE). One save in flight at a time; a new save or exit waits for the previous one.
class AsyncSaver {
 public:
  /// Duplicates `parent` (collective).
  explicit AsyncSaver(MpiComm& parent);
  /// Waits for a save in flight; an error there is printed, not thrown.
  ~AsyncSaver();
  AsyncSaver(const AsyncSaver&) = delete;
  AsyncSaver& operator=(const AsyncSaver&) = delete;

  /// Waits for the previous save (rethrowing its error), then starts saving the engine's current shard. On a
  /// host-memory backend the copy to host memory happens on the writer thread: the caller must call wait_copied()
  /// before anything changes the engine's parameters or optimizer state. Otherwise the copy is made here.
  void start(const std::string& output_dir, const ModelConfig& model, const TrainConfig& train,
             const TrainProgress& progress, ZeroEngine& engine, const Retention& retention,
             const IncrementalPolicy& incremental = {});
  /// True while the writer thread may still be reading the engine's shard.
  bool copy_pending();
  /// Blocks until the shard has been copied (or the copy failed; wait() then reports why). Returns the seconds the
  /// caller was blocked; `copy_s` receives how long the copy itself took.
  double wait_copied(double* copy_s = nullptr);
  /// Waits for the save in flight, if any; rethrows its error. Returns the directory it committed ("" if none).
  std::string wait();
  bool busy() const { return thread_.joinable(); }

 private:
  MpiComm comm_;
  std::thread thread_;
  std::exception_ptr error_;
  std::string committed_;
  std::vector<float> spare_;  // the host buffer of the last finished save, reused (its pages are already mapped)
  std::mutex mu_;
  std::condition_variable cv_;
  bool copied_ = true;
  double copy_s_ = 0;
};

}  // namespace zt
