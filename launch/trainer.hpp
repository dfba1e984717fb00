// The Trainer: the training loop of a run, composed of the model, the ZeRO engine, the checkpointer, the metrics
// log, the stop policy, the debug dump and the profile report (docs/architecture.md, "The Trainer").
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "core/config.hpp"
#include "core/data.hpp"
#include "core/gpt2.hpp"
#include "core/model.hpp"
#include "launch/checkpointer.hpp"
#include "launch/debug_dump.hpp"
#include "launch/profile_report.hpp"
#include "launch/sample_log.hpp"
#include "launch/stop_policy.hpp"
#include "launch/watchdog.hpp"
#include "sharding/zero_engine.hpp"

namespace zt {

class Comm;
class HangWatchdog;
class MetricsLog;
class MpiComm;

/// What a finished run reports (identical on every rank).
struct TrainSummary {
  int steps_done = 0;
  double first_loss = 0, last_loss = 0, last_val_loss = -1;
  std::vector<double> losses;          ///< training loss of every step
  std::vector<float> final_params;     ///< logical parameters in table order (when RunOptions::collect_params)
  std::vector<uint64_t> bytes_sent;    ///< bytes this rank sent in each step over the data communicator
  std::vector<double> comm_wait_s;     ///< seconds this rank waited on the data communicator in each step
  bool preempted = false;              ///< stopped after a SIGTERM/SIGUSR1 with a checkpoint saved
  std::vector<double> save_blocked_s;  ///< per checkpoint: seconds the training loop was blocked by the save
};

/// Options that are not part of the saved training configuration.
struct RunOptions {
  std::string debug_dump_dir;   ///< when set: initial params, batches, per-step grads and params (for cross-checks)
  bool quiet = false;           ///< no progress lines (tests)
  bool collect_params = false;  ///< gather the final parameters into TrainSummary::final_params (collective)
  HangWatchdog* watchdog = nullptr;  ///< told of every phase of the run (zt::run_train's), or none
};

/// The two communicators of a run, over the same ranks. `control` is host MPI: resume and checkpoint I/O
/// agreement, parallel HDF5, loss and evaluation sums, stop decisions. `data` carries ZeRO's collectives over the
/// backend's memory (an MpiComm on the CPU; the staged MPI or NCCL comm on GPUs). A CPU run may pass one MpiComm
/// as both.
struct RunComms {
  MpiComm& control;
  Comm& data;
};

/// One training run. The constructor builds the model and the engine and loads plan.checkpoint into them or
/// initialises them (collective; a load failure is thrown as the CheckpointError every rank agreed on); run() trains
/// up to max_steps steps, or until the stop policy says otherwise. The caller chooses the checkpoint (zt::run_train).
class Trainer {
 public:
  Trainer(const ModelConfig& model, const ResumePlan& plan, RunComms comms, Backend& backend, const RunOptions& opts);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  /// Trains; collective. Call once.
  TrainSummary run();
  /// The training config in effect (adjusted to the checkpoint resumed, validated).
  const TrainConfig& train_config() const { return tcfg_; }

 private:
  struct StepResult {
    double loss = 0, lr = 0, grad_norm = 0, seconds = 0;
  };

  void print_banner() const;
  StepResult train_step(int step, int64_t batch_index);
  double forward_backward(int64_t batch_index);
  double evaluate();
  void record(int step, int64_t batch_index, const StepResult& r);
  TrainProgress progress_after(int step, int64_t batch_index, double lr) const;
  void collect_params();
  void print_done(double total_s) const;
  void mark(RunPhase phase, int64_t step) const;

  const ModelConfig mcfg_;
  MpiComm& control_;
  Comm& data_;
  Backend& backend_;
  const RunOptions opts_;
  const int rank_, world_size_;
  const bool lead_;
  const TrainConfig tcfg_;
  const int B_, T_, G_, accum_;
  ParamTable table_;
  std::shared_ptr<const TokenSource> train_src_;
  DataLoader loader_;
  ProfileReport profile_;  // before the model and the engine, which call the backend through it
  Gpt2 model_;
  ZeroEngine engine_;
  Checkpointer checkpointer_;  // after the engine: a background save still reading it is waited for first
  StopPolicy stop_;
  DebugDump dump_;
  SampleLog sampler_;
  std::unique_ptr<MetricsLog> metrics_;  // opened by run()
  std::vector<int32_t> inputs_, targets_;
  double time_in_steps_ = 0;
  TrainSummary summary_;
};

/// A run without the CLI's configuration layers: starts where `train` asks (zt::train_from_start_point: a path,
/// `latest` or the seed; no output directory lock) and trains. `train` is used as given, not merged with a resumed
/// checkpoint's configuration. Collective.
TrainSummary train(const ModelConfig& model, const TrainConfig& train, RunComms comms, Backend& backend,
                   const RunOptions& opts);

}  // namespace zt
