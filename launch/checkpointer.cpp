// Checkpointer: loading the chosen checkpoint, save scheduling, synchronous and background saves with retention.
#include "launch/checkpointer.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "ckpt/async_save.hpp"
#include "ckpt/model_source.hpp"
#include "ckpt/resume.hpp"
#include "core/errors.hpp"
#include "launch/watchdog.hpp"
#include "sharding/comm_mpi.hpp"
#include "sharding/zero_engine.hpp"

namespace zt {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace

ResumePlan plan_resume(const TrainConfig& train, const ResumeSource& src, int world_size, bool lead) {
  ResumePlan plan;
  plan.train = train;
  plan.checkpoint = src.path;
  // An unreadable manifest fixes nothing: the load reports it.
  if (src.path.empty() || !src.manifest.is_object()) return plan;
  const nlohmann::json& saved = src.manifest.value("train", nlohmann::json::object());
  if (saved.is_object() && saved.contains("freeze") && saved["freeze"].is_array())
    for (const auto& p : saved["freeze"])
      if (p.is_string()) plan.saved_freeze.push_back(p.get<std::string>());
  std::vector<std::string> warnings;
  plan.train = adjust_for_resume(train, src.manifest, world_size, warnings);
  if (lead)
    for (const auto& w : warnings) fmt::print(stderr, "zerotrain: warning: resuming {}: {}\n", src.path, w);
  return plan;
}

Checkpointer::Checkpointer(const ModelConfig& model, const TrainConfig& train, MpiComm& control, ZeroEngine& engine,
                           const ResumePlan& plan, HangWatchdog* watchdog, bool quiet)
    : model_(model),
      train_(train),
      control_(control),
      engine_(engine),
      watchdog_(watchdog),
      lead_(control.rank() == 0),
      quiet_(quiet),
      unloadable_(plan.unloadable) {
  if (watchdog_) watchdog_->set_checkpoint_bytes(3 * engine.table().n_params() * sizeof(float));
  restore_or_init(plan.checkpoint);
  if (resumed_ && lead_) report_freeze_change(plan.saved_freeze);
}

void Checkpointer::report_freeze_change(const StringList& saved_freeze) const {
  const ParamTable& table = engine_.table();
  std::vector<bool> was(table.tensors().size(), false);
  if (!saved_freeze.empty()) {
    try {
      was = match_frozen(table, saved_freeze);
    } catch (const Error&) {
      return;  // not this model's names: nothing to compare with
    }
  }
  std::vector<std::string> thawed, frozen;
  for (size_t t = 0; t < table.tensors().size(); ++t) {
    if (was[t] && !engine_.frozen(int(t))) thawed.push_back(table.tensors()[t].name);
    if (!was[t] && engine_.frozen(int(t))) frozen.push_back(table.tensors()[t].name);
  }
  if (!thawed.empty())
    fmt::print(
        "--freeze changed on resume: {} tensor(s) frozen in the checkpoint train now; their Adam state starts at "
        "zero: {}\n",
        thawed.size(), fmt::join(thawed, ", "));
  if (!frozen.empty())
    fmt::print(stderr,
               "zerotrain: warning: --freeze changed on resume: {} tensor(s) with Adam state in the checkpoint are "
               "frozen now; their state is dropped: {}\n",
               frozen.size(), fmt::join(frozen, ", "));
}

Checkpointer::~Checkpointer() = default;  // AsyncSaver's destructor waits for its thread

void Checkpointer::restore_or_init(const std::string& checkpoint) {
  if (checkpoint.empty()) return init_fresh();
  if (watchdog_) watchdog_->enter(RunPhase::load, 0);
  const auto t0 = Clock::now();
  loaded_ = load_checkpoint(checkpoint, model_, engine_, control_);
  const double load_s = seconds_since(t0);
  resumed_ = true;
  last_saved_ = checkpoint;
  if (lead_ && !train_.init_from.empty())
    fmt::print("--init_from {} not used: resuming this run's own checkpoint (it started from those parameters)\n",
               train_.init_from);
  if (lead_)
    fmt::print("resumed from {}: step {}, world size {} then {} now, ZeRO stage {} then {} now\n", loaded_.path,
               start_step(), loaded_.world_size, control_.world_size(), loaded_.zero_stage, train_.zero_stage);
  if (lead_ && !quiet_) fmt::print("loaded {} in {:.2f}s\n", loaded_.path, load_s);
}

void Checkpointer::init_fresh() {
  if (train_.init_from.empty()) {
    engine_.init_params(train_.seed);
    return;
  }
  if (watchdog_) watchdog_->enter(RunPhase::load, 0);
  const auto t0 = Clock::now();
  const std::unique_ptr<ModelSource> src = open_model_source(train_.init_from);
  init_params_from(*src, engine_, control_);
  if (lead_ && !quiet_)
    fmt::print("initialised from {} ({}) in {:.2f}s: parameters only, fresh optimizer, step 0\n", train_.init_from,
               src->format(), seconds_since(t0));
}

void Checkpointer::start() {
  if (train_.async_save) async_ = std::make_unique<AsyncSaver>(control_);
  // Commit order in the output directory (resume from `latest` takes the most recent commit).
  std::string problem;
  if (lead_) commit_seq_ = next_commit_seq(train_.output_dir, problem);
  if (!problem.empty()) commit_seq_ = -1;
  control_.broadcast(&commit_seq_, sizeof(commit_seq_), 0);
  // Rank 0's message is the one printed (zt::report_fatal_error).
  ZT_CHECK(commit_seq_ > 0, "{}", lead_ ? problem : "rank 0 cannot number this run's checkpoints");
}

void Checkpointer::resave_if_nothing_to_train() {
  if (!resumed_ || start_step() < train_.max_steps || train_.save_interval <= 0) return;
  std::error_code ec;
  const std::string dest = fmt::format("{}/checkpoint-{}", train_.output_dir, start_step());
  if (std::filesystem::equivalent(loaded_.path, dest, ec)) return;
  if (lead_)
    fmt::print("no step left to train (--max_steps {}): re-saving step {} for {} rank(s) at ZeRO stage {}\n",
               train_.max_steps, start_step(), control_.world_size(), train_.zero_stage);
  save(loaded_.progress);
}

bool Checkpointer::due(int steps_done) const {
  if (steps_done == train_.max_steps) return train_.save_interval > 0 || train_.exit_after_steps > 0;
  return train_.save_interval > 0 && steps_done % train_.save_interval == 0;
}

Retention Checkpointer::retention_for(int64_t step) {
  // The save replaces a checkpoint of its step that this run could not load: from then on that name is sound.
  const std::string name = fmt::format("checkpoint-{}", step);
  unloadable_.erase(std::remove(unloadable_.begin(), unloadable_.end(), name), unloadable_.end());
  return Retention{train_.save_total_limit, unloadable_};
}

void Checkpointer::mark_save(int64_t step) {
  if (watchdog_) watchdog_->enter(RunPhase::save, step);
}

void Checkpointer::save(const TrainProgress& progress_in) {
  TrainProgress progress = progress_in;
  progress.commit_seq = commit_seq_++;
  mark_save(progress.step);
  if (async_) return start_async(progress);
  const auto t0 = Clock::now();
  const std::string dir = save_checkpoint(train_.output_dir, model_, train_, progress, snapshot_view(engine_), control_,
                                          retention_for(progress.step), incremental());
  last_saved_ = dir;
  const double dt = seconds_since(t0);
  save_blocked_s_.push_back(dt);
  if (lead_ && !quiet_) fmt::print("saved {} in {:.2f}s\n", dir, dt);
}

void Checkpointer::start_async(const TrainProgress& progress) {
  const auto t0 = Clock::now();
  report_async(async_->wait());  // one save in flight at a time
  const double waited = seconds_since(t0);
  const auto t1 = Clock::now();
  async_->start(train_.output_dir, model_, train_, progress, engine_, retention_for(progress.step), incremental());
  async_step_ = progress.step;
  async_blocked_s_ = waited + seconds_since(t1);
  async_unreported_ = true;
}

void Checkpointer::before_optimizer_step() {
  if (async_unreported_) finish_async_copy();  // the writer must not see a half-updated shard
}

void Checkpointer::finish() {
  if (async_unreported_) finish_async_copy();
  if (!async_) return;
  if (watchdog_ && async_->busy()) watchdog_->enter(RunPhase::save_wait, async_step_);
  report_async(async_->wait());
}

void Checkpointer::finish_async_copy() {
  async_unreported_ = false;
  double copy_s = 0;
  async_blocked_s_ += async_->wait_copied(&copy_s);
  save_blocked_s_.push_back(async_blocked_s_);
  if (lead_ && !quiet_)
    fmt::print(
        "checkpoint-{}: step blocked {:.3f}s for the host copy (copy {:.3f}s, overlapped with training); "
        "writing in the background\n",
        async_step_, async_blocked_s_, copy_s);
}

void Checkpointer::report_async(const std::string& dir) {
  if (!dir.empty()) last_saved_ = dir;
  if (lead_ && !quiet_ && !dir.empty()) fmt::print("saved {} (background write finished)\n", dir);
}

IncrementalPolicy Checkpointer::incremental() const {
  // With --freeze, incremental_checkpoints already defaults to true (session.cpp, prepare_run).
  const bool enabled = train_.incremental_checkpoints;
  return {enabled, last_saved_, train_.full_checkpoint_interval};
}

}  // namespace zt
