// run_train: the watchdog, the run directory's lock and clean-up, and the choice of checkpoint around the Trainer.
#include "launch/session.hpp"

#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ckpt/checkpoint.hpp"
#include "ckpt/resume.hpp"
#include "ckpt/run_dir.hpp"
#include "core/errors.hpp"
#include "launch/model_commands.hpp"
#include "launch/start_point.hpp"
#include "launch/watchdog.hpp"
#include "sharding/comm_mpi.hpp"

namespace zt {
namespace {

/// The lock for the whole run, taken before anything reads or writes the directory; then what crashes left.
RunDirLock lock_output_dir(const std::string& dir, MpiComm& control) {
  RunDirLock lock = RunDirLock::take_collective(dir, control);
  const std::vector<std::string> done = lock.clean_leftovers();  // rank 0 only: it holds the lock
  for (const auto& line : done) fmt::print("leftover in {}: {}\n", dir, line);
  if (!done.empty()) std::fflush(stdout);
  return lock;
}

/// A run built from one checkpoint (or none): its settings, device and Trainer, destroyed in reverse order.
struct PreparedRun {
  TrainSettings settings;
  RunDevice device;
  std::unique_ptr<Trainer> trainer;
};

/// Builds the run that loads `src` with the configuration `src` gives (none: fresh). A failed load throws the
/// CheckpointError that every rank agreed on.
std::function<TrainSummary()> prepare_run(const TrainSettings& requested, const ResumeSource& src,
                                          const std::vector<std::string>& unloadable, MpiComm& control,
                                          const DeviceFactory& make_device, const RunOptions& opts) {
  const bool lead = control.rank() == 0;
  auto run = std::make_shared<PreparedRun>();
  run->settings = requested;
  apply_resume_config(run->settings, src, lead);
  // Frozen tensors never change, so incremental checkpoints (which link them to the base) are the default then;
  // --incremental_checkpoints given explicitly (false too) wins. The manifest records the value used.
  if (!run->settings.train.freeze.empty() && run->settings.explicit_keys.count("incremental_checkpoints") == 0)
    run->settings.train.incremental_checkpoints = true;
  // Nothing to resume: --init_from's file gives the model (each field given explicitly must agree with it).
  if (src.path.empty() && !run->settings.train.init_from.empty())
    run->settings.model = model_for_init_from(run->settings.train.init_from, run->settings);
  run->device = make_device(run->settings.train);
  ResumePlan plan = plan_resume(run->settings.train, src, control.world_size(), lead);
  plan.unloadable = unloadable;
  run->trainer = std::make_unique<Trainer>(run->settings.model, plan, RunComms{control, *run->device.comm},
                                           *run->device.backend, opts);
  return [run] { return run->trainer->run(); };
}

}  // namespace

TrainSummary run_train(const TrainSettings& requested, MpiComm& control, const DeviceFactory& make_device,
                       RunOptions opts) {
  const TrainConfig& req = requested.train;
  HangWatchdog watchdog(req.hang_timeout);
  opts.watchdog = &watchdog;
  const RunDirLock lock = lock_output_dir(req.output_dir, control);
  const RunBuilder build = [&](const ResumeSource& src, const std::vector<std::string>& unloadable) {
    return prepare_run(requested, src, unloadable, control, make_device, opts);
  };
  return train_from_start_point(req, control, build, &watchdog);
}

}  // namespace zt
