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
class HangWatchdog;
class MpiComm;
class ZeroEngine;
struct ResumeSource;

/// The checkpoint a run loads (chosen by zt::run_train, launch/session.hpp) and what its manifest fixes.
struct ResumePlan {
  std::string checkpoint;               ///< the checkpoint directory to load; "" for a fresh start
  TrainConfig train;                    ///< the run's training config, fitted to the checkpoint's run shape
  std::vector<std::string> unloadable;  ///< names of the output directory's checkpoints this run could not load
  StringList saved_freeze;              ///< the checkpoint's --freeze (what its Adam state leaves out)
};

/// The plan to load `src` (a checkpoint and its manifest; no path: a fresh start) with `train`, the config already
/// resolved against that manifest (zt::apply_resume_config): the global batch stays the saved one and the
/// micro-batch shrinks when it no longer divides over the world size (adjust_for_resume). Rank 0 (`lead`) prints a
/// warning per adjustment.
ResumePlan plan_resume(const TrainConfig& train, const ResumeSource& src, int world_size, bool lead);

/// Loads or initialises the engine's state at start-up, then saves at the configured steps. Holds references to
/// the run's configs and engine, which must outlive it. Every method is collective over `control` unless it says
/// otherwise; the lead rank (rank 0) prints.
class Checkpointer {
 public:
  /// Loads plan.checkpoint into the engine (its CheckpointError, agreed by every rank, is the caller's to judge) or,
  /// with none, initialises the engine from --init_from's model file, else from the seed (under `latest` a committed
  /// checkpoint that loads wins over --init_from: a requeued fine-tuning job resumes its own progress). `watchdog`
  /// (may be null) is told of the load and of every save.
  Checkpointer(const ModelConfig& model, const TrainConfig& train, MpiComm& control, ZeroEngine& engine,
               const ResumePlan& plan, HangWatchdog* watchdog, bool quiet);
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
  /// order (rank 0 looks once; throws zt::Error on every rank when a checkpoint there cannot be placed in it).
  void start();
  /// A resume at the run's last step trains nothing; with saving on, the loaded state is written in this run's
  /// layout (world size, stage) to OUTPUT/checkpoint-<step>: re-sharding a checkpoint offline, like DeepSpeed's
  /// universal checkpoint conversion. Skipped when that directory is the one just loaded.
  void resave_if_nothing_to_train();
  /// True when a checkpoint is due after `steps_done` steps: every --save_interval steps, and after the last step
  /// when --save_interval or --exit_after_steps is set (the last slice of a time-sliced job keeps its final state).
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
  void restore_or_init(const std::string& checkpoint);
  void init_fresh();  // --init_from or the seed
  void mark_save(int64_t step);
  Retention retention_for(int64_t step);
  IncrementalPolicy incremental() const;
  /// Rank 0 after a resume: lists tensors the checkpoint froze that train now (Adam state from zero) and, as a
  /// warning, tensors with Adam state that are frozen now (state dropped).
  void report_freeze_change(const StringList& saved_freeze) const;
  void finish_async_copy();
  void report_async(const std::string& dir);
  void start_async(const TrainProgress& progress);

  const ModelConfig& model_;
  const TrainConfig& train_;
  MpiComm& control_;
  ZeroEngine& engine_;
  HangWatchdog* watchdog_;
  bool lead_, quiet_;
  bool resumed_ = false;
  std::vector<std::string> unloadable_;
  std::string last_saved_;  // what an incremental save compares with: this run's last save, or the checkpoint resumed
  LoadedCheckpoint loaded_;
  std::unique_ptr<AsyncSaver> async_;
  int64_t commit_seq_ = 0;
  // Async: the step that saved blocks for the previous write (if still running) and for handing over; the next
  // optimizer step blocks until the writer has copied the shard (on a host backend the copy overlaps the forward
  // and backward). Their sum is the stall of that checkpoint.
  int64_t async_step_ = 0;
  double async_blocked_s_ = 0;
  bool async_unreported_ = false;
  std::vector<double> save_blocked_s_;
};

}  // namespace zt
