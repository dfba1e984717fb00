// run_train: the watchdog, the run directory's lock and clean-up, and the choice of checkpoint around the Trainer.
#include "launch/session.hpp"

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "ckpt/checkpoint.hpp"
#include "ckpt/resume.hpp"
#include "ckpt/run_dir.hpp"
#include "core/errors.hpp"
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
std::unique_ptr<PreparedRun> prepare_run(const TrainSettings& requested, const ResumeSource& src,
                                         std::vector<std::string> unloadable, MpiComm& control,
                                         const DeviceFactory& make_device, const RunOptions& opts) {
  const bool lead = control.rank() == 0;
  auto run = std::make_unique<PreparedRun>();
  run->settings = requested;
  apply_resume_config(run->settings, src, lead);
  run->device = make_device(run->settings.train);
  ResumePlan plan = plan_resume(run->settings.train, src, control.world_size(), lead);
  plan.unloadable = std::move(unloadable);
  run->trainer = std::make_unique<Trainer>(run->settings.model, plan, RunComms{control, *run->device.comm},
                                           *run->device.backend, opts);
  return run;
}

std::string indented(const std::string& text) {
  std::string out;
  for (const auto& line : split_lines(text)) out += "\n      " + line;
  return out;
}

/// A run that does not resume must not start over committed checkpoints unless asked to.
void check_fresh_start_allowed(const TrainConfig& t, MpiComm& control) {
  int64_t n = 0;
  if (control.rank() == 0) n = int64_t(list_checkpoints(t.output_dir).size());
  control.broadcast(&n, sizeof(n), 0);
  ZT_CHECK(n == 0 || t.allow_fresh_start,
           "output directory {} holds {} committed checkpoint(s) and this run does not resume: training from scratch "
           "would replace them as it saves. Add --resume_from_checkpoint latest to continue that run, choose another "
           "--output_dir, or pass --allow_fresh_start to train from scratch anyway",
           t.output_dir, n);
}

/// `latest`: the first candidate that loads, with its own configuration; a fresh start only where there are no
/// committed checkpoints, or with --allow_fresh_start.
TrainSummary train_from_latest(const TrainSettings& requested, MpiComm& control, const DeviceFactory& make_device,
                               const RunOptions& opts) {
  const TrainConfig& req = requested.train;
  const bool lead = control.rank() == 0;
  const std::vector<std::string> candidates = resume_candidates("latest", req.output_dir, control);
  std::vector<std::string> unloadable, failures;
  for (const std::string& c : candidates) {
    const ResumeSource src = read_resume_source(c, control);
    std::string problem = src.problem;
    if (problem.empty()) {
      std::unique_ptr<PreparedRun> run;
      try {
        run = prepare_run(requested, src, unloadable, control, make_device, opts);
      } catch (const CheckpointError& e) {
        problem = e.what();
      }
      if (run) return run->trainer->run();
    }
    if (lead) fmt::print(stderr, "zerotrain: warning: skipping checkpoint {}: {}\n", c, problem);
    if (opts.watchdog) opts.watchdog->enter(RunPhase::start_up, 0);
    unloadable.push_back(std::filesystem::path(c).filename().string());
    failures.push_back(fmt::format("    {}:{}", c, indented(problem)));
  }
  if (!candidates.empty()) {
    ZT_CHECK(req.allow_fresh_start,
             "--resume_from_checkpoint latest: none of the {} committed checkpoint(s) in {} loads, and training from "
             "scratch would replace them as it saves:\n{}\nRepair or restore one (`zerotrain ckpt verify DIR` says "
             "what is wrong; a passing read error needs only a retry), or pass --allow_fresh_start to train from "
             "scratch anyway",
             candidates.size(), req.output_dir, fmt::join(failures, "\n"));
    if (lead)
      fmt::print(stderr,
                 "zerotrain: warning: none of the {} committed checkpoint(s) in {} loads: starting fresh "
                 "(--allow_fresh_start); they stay until this run's saves replace them\n",
                 candidates.size(), req.output_dir);
  } else if (lead) {
    fmt::print("no usable checkpoint in {}: starting fresh\n", req.output_dir);
  }
  return prepare_run(requested, ResumeSource{}, unloadable, control, make_device, opts)->trainer->run();
}

}  // namespace

TrainSummary run_train(const TrainSettings& requested, MpiComm& control, const DeviceFactory& make_device,
                       RunOptions opts) {
  const TrainConfig& req = requested.train;
  HangWatchdog watchdog(req.hang_timeout);
  opts.watchdog = &watchdog;
  const RunDirLock lock = lock_output_dir(req.output_dir, control);
  if (req.resume_from_checkpoint == "latest") return train_from_latest(requested, control, make_device, opts);
  ResumeSource src;
  if (req.resume_from_checkpoint.empty())
    check_fresh_start_allowed(req, control);
  else
    src = read_resume_source(req.resume_from_checkpoint, control);  // unreadable: the load says why
  return prepare_run(requested, src, {}, control, make_device, opts)->trainer->run();
}

}  // namespace zt
