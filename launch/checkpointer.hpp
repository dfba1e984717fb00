// The checkpoint side of a run: which checkpoint to resume, when to save, synchronous or background writes, and
// retention. Everything here runs over the run's control communicator (host MPI).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ckpt/checkpoint.hpp"
#include "core/config.hpp"

namespace zt {

class AsyncSaver;
class MpiComm;
class ZeroEngine;

/// Resume selection, made before anything is built: the checkpoints to try in order, and the requested training
/// config adjusted to the run shape (global batch) of the first one whose manifest reads.
struct ResumePlan {
  std::vector<std::string> candidates;  ///< empty: a fresh start
  TrainConfig train;
};

/// Plans the resume that `requested.resume_from_checkpoint` asks for ("", "latest" or a directory). Collective over
/// `control`; rank 0 prints a warning per hyper-parameter that differs from the saved run, and per adjustment.
ResumePlan plan_resume(const TrainConfig& requested, MpiComm& control);

/// Loads or initialises the engine's state at start-up, then saves at the configured steps. Holds references to
/// the run's configs and engine, which must outlive it. Every method is collective over `control` unless it says
/// otherwise; the lead rank (rank 0) prints.
class Checkpointer {
 public:
  /// Loads the first usable of `candidates` (plan_resume's) into the engine; under `latest` a broken one is skipped
  /// with a warning, otherwise its error is thrown. With none, the engine is initialised from --init_from's model
  /// file, else from the seed; under `latest` a committed checkpoint wins over --init_from (a requeued fine-tuning
  /// job resumes its own progress).
  Checkpointer(const ModelConfig& model, const TrainConfig& train, MpiComm& control, ZeroEngine& engine,
               const std::vector<std::string>& candidates, bool quiet);
  /// Waits for a background save in flight (an error there is printed, not thrown).
  ~Checkpointer();
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  bool resumed() const { return resumed_; }
  /// Steps completed before this run (0 for a fresh start).
  int start_step() const { return resumed_ ? int(loaded_.progress.step) : 0; }
  /// Index of the first global batch this run trains on.
  int64_t data_cursor() const { return resumed_ ? loaded_.progress.data_cursor : 0; }

  /// Before the first save: starts the background writer (--async_save) and takes up the output directory's commit
  /// order (rank 0 looks once).
  void start();
  /// A resume at the run's last step trains nothing; with saving on, the loaded state is written in this run's
  /// layout (world size, stage) to OUTPUT/checkpoint-<step>: re-sharding a checkpoint offline, like DeepSpeed's
  /// universal checkpoint conversion. Skipped when that directory is the one just loaded.
  void resave_if_nothing_to_train();
  /// True when a checkpoint is due after `steps_done` steps: every --save_interval steps and after the last step.
  bool due(int steps_done) const;
  /// Saves at a step boundary: synchronously, or by handing the shard to the background writer (which waits for
  /// the previous background save first: one in flight at a time).
  void save(const TrainProgress& progress);
  /// Before the optimizer changes the shard: waits until the background writer has copied it (not collective).
  void before_optimizer_step();
  /// Waits for the background save in flight, if any, and reports it.
  void finish();
  /// Per checkpoint saved: seconds the training loop was blocked by it.
  const std::vector<double>& save_blocked_s() const { return save_blocked_s_; }

 private:
  void restore_or_init(const std::vector<std::string>& candidates);
  void init_fresh();  // --init_from or the seed
  void finish_async_copy();
  void report_async(const std::string& dir);
  void start_async(const TrainProgress& progress);
  IncrementalPolicy incremental() const;

  const ModelConfig& model_;
  const TrainConfig& train_;
  MpiComm& control_;
  ZeroEngine& engine_;
  bool lead_, quiet_;
  bool resumed_ = false;
  LoadedCheckpoint loaded_;
  std::unique_ptr<AsyncSaver> async_;
  int64_t commit_seq_ = 0;
  std::string last_saved_;  // what an incremental save compares with: this run's last save, or the checkpoint resumed
  // Async: the step that saved blocks for the previous write (if still running) and for handing over; the next
  // optimizer step blocks until the writer has copied the shard (on a host backend the copy overlaps the forward
  // and backward). Their sum is the stall of that checkpoint.
  int64_t async_step_ = 0;
  double async_blocked_s_ = 0;
  bool async_unreported_ = false;
  std::vector<double> save_blocked_s_;
};

}  // namespace zt
