// Asynchronous checkpoint save: the step blocks only for the host copy; a thread with its own communicator writes.
#pragma once

#include <exception>
#include <memory>
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

  /// Waits for the previous save (rethrowing its error), then starts writing `snap` (which must own its values).
  void start(const std::string& output_dir, const ModelConfig& model, const TrainConfig& train,
             const TrainProgress& progress, ShardSnapshot snap, int save_total_limit);
  /// Waits for the save in flight, if any; rethrows its error. Returns the directory it committed ("" if none).
  std::string wait();
  bool busy() const { return thread_.joinable(); }
  /// The host buffer of the last finished save, for the next snapshot to reuse (empty while a save runs).
  std::vector<float> take_spare() { return std::move(spare_); }

 private:
  MpiComm comm_;
  std::thread thread_;
  std::exception_ptr error_;
  std::string committed_;
  std::vector<float> spare_;
};

}  // namespace zt
