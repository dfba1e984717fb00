// train_from_start_point: the candidates of a resume in commit order, the refusal to start fresh over them.
#include "launch/start_point.hpp"

#include <filesystem>
#include <memory>

#include "ckpt/checkpoint.hpp"
#include "ckpt/resume.hpp"
#include "core/errors.hpp"
#include "launch/watchdog.hpp"
#include "sharding/comm_mpi.hpp"

namespace zt {
namespace {

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

TrainSummary train_from_latest(const TrainConfig& req, MpiComm& control, const RunBuilder& build,
                               HangWatchdog* watchdog) {
  const bool lead = control.rank() == 0;
  const std::vector<std::string> candidates = resume_candidates("latest", req.output_dir, control);
  std::vector<std::string> unloadable, failures;
  for (const std::string& c : candidates) {
    const ResumeSource src = read_resume_source(c, control);
    std::string problem = src.problem;
    if (problem.empty()) {
      std::function<TrainSummary()> run;
      try {
        run = build(src, unloadable);
      } catch (const CheckpointError& e) {
        problem = e.what();
      }
      if (run) return run();
    }
    if (lead) fmt::print(stderr, "zerotrain: warning: skipping checkpoint {}: {}\n", c, problem);
    if (watchdog) watchdog->enter(RunPhase::start_up, 0);
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
    fmt::print("no usable checkpoint in {}: starting {}\n", req.output_dir,
               req.init_from.empty() ? "fresh" : "from --init_from " + req.init_from);
  }
  return build(ResumeSource{}, unloadable)();
}

}  // namespace

TrainSummary train_from_start_point(const TrainConfig& requested, MpiComm& control, const RunBuilder& build,
                                    HangWatchdog* watchdog) {
  if (requested.resume_from_checkpoint == "latest") return train_from_latest(requested, control, build, watchdog);
  ResumeSource src;
  if (requested.resume_from_checkpoint.empty())
    check_fresh_start_allowed(requested, control);
  else
    src = read_resume_source(requested.resume_from_checkpoint, control);  // unreadable: the load says why
  return build(src, {})();
}

TrainSummary train(const ModelConfig& model, const TrainConfig& train, RunComms comms, Backend& backend,
                   const RunOptions& opts) {
  MpiComm& control = comms.control;
  const RunBuilder build = [&](const ResumeSource& src, const std::vector<std::string>& unloadable) {
    ResumePlan plan = plan_resume(train, src, control.world_size(), control.rank() == 0);
    plan.unloadable = unloadable;
    auto trainer = std::make_shared<Trainer>(model, plan, comms, backend, opts);
    return std::function<TrainSummary()>([trainer] { return trainer->run(); });
  };
  return train_from_start_point(train, control, build, opts.watchdog);
}

}  // namespace zt
