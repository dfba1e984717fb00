// The Trainer: per-rank slices of each global batch, ZeRO engine steps, the LR schedule, evaluation and progress
// lines; checkpoints, metrics, stopping, dumps and profiles are its parts' jobs.
#include "launch/trainer.hpp"

#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "core/errors.hpp"
#include "core/lr_schedule.hpp"
#include "core/test_hooks.hpp"
#include "launch/metrics_log.hpp"
#include "sharding/comm_mpi.hpp"
#include "sharding/evaluate.hpp"

namespace zt {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string human_count(double n) {
  if (n >= 1e9) return fmt::format("{:.2f}B", n / 1e9);
  if (n >= 1e6) return fmt::format("{:.2f}M", n / 1e6);
  if (n >= 1e3) return fmt::format("{:.1f}K", n / 1e3);
  return fmt::format("{:.0f}", n);
}

std::string human_bytes(double b) {
  if (b >= 1 << 30) return fmt::format("{:.2f} GiB", b / double(1 << 30));
  if (b >= 1 << 20) return fmt::format("{:.2f} MiB", b / double(1 << 20));
  if (b >= 1 << 10) return fmt::format("{:.1f} KiB", b / double(1 << 10));
  return fmt::format("{:.0f} B", b);
}

std::string hms(double s) {
  const long t = long(s + 0.5);
  return fmt::format("{:02d}:{:02d}:{:02d}", t / 3600, (t / 60) % 60, t % 60);
}

const ModelConfig& validated(const ModelConfig& m) {
  m.validate();
  return m;
}

TrainConfig validated(TrainConfig t, int world_size) {
  t.global_batch_size = t.global_batch(world_size);  // 0 = derived: the manifest records the number used
  t.validate(world_size);
  return t;
}

int checked_rank(const RunComms& comms) {
  ZT_CHECK(comms.control.world_size() == comms.data.world_size() && comms.control.rank() == comms.data.rank(),
           "the control and data communicators must hold the same ranks in the same order (control: rank {} of {}, "
           "data: rank {} of {})",
           comms.control.rank(), comms.control.world_size(), comms.data.rank(), comms.data.world_size());
  return comms.control.rank();
}

std::shared_ptr<const TokenSource> open_val_source(const TrainConfig& t, int vocab) {
  if (t.val_data.empty()) return nullptr;
  return std::shared_ptr<const TokenSource>(open_token_source(t.val_data, vocab));
}

// Test-only failure injection: ZT_TEST_FAIL_RANK=r [ZT_TEST_FAIL_STEP=s] throws on rank r at step s.
void inject_test_failure(int rank, int step) {
  static const int fail_rank = test_hooks::fail_rank(), fail_step = test_hooks::fail_step();
  ZT_CHECK(!(rank == fail_rank && step == fail_step), "injected failure (ZT_TEST_FAIL_RANK={}) at step {}", fail_rank,
           step);
}

}  // namespace

Trainer::Trainer(const ModelConfig& model, const ResumePlan& plan, RunComms comms, Backend& backend,
                 const RunOptions& opts)
    : mcfg_(validated(model)),
      control_(comms.control),
      data_(comms.data),
      backend_(backend),
      opts_(opts),
      rank_(checked_rank(comms)),
      world_size_(comms.control.world_size()),
      lead_(rank_ == 0),
      tcfg_(validated(plan.train, world_size_)),
      B_(tcfg_.micro_batch_size),
      T_(mcfg_.seq_len),
      G_(tcfg_.global_batch_size),
      accum_(tcfg_.grad_accum_steps(world_size_)),
      table_(mcfg_),
      train_src_(open_token_source(tcfg_.data, mcfg_.vocab)),
      loader_(train_src_, open_val_source(tcfg_, mcfg_.vocab), T_, tcfg_.val_data.empty() ? tcfg_.val_fraction : 0.0,
              tcfg_.seed),
      profile_(backend, tcfg_.profile_steps, lead_ && !opts.quiet),
      model_(table_, profile_.backend(), B_, T_, parse_recompute(tcfg_.recompute)),
      engine_(table_, profile_.backend(), data_, tcfg_.zero_stage, size_t(tcfg_.zero_bucket_mb * double(1 << 20)),
              ZeroEngine::kDefaultAlign,
              tcfg_.freeze.empty() ? std::vector<bool>{} : match_frozen(table_, tcfg_.freeze)),
      checkpointer_(mcfg_, tcfg_, control_, engine_, plan, opts.watchdog, opts.quiet),
      stop_(control_, tcfg_, checkpointer_.start_step(), lead_ && !opts.quiet),
      dump_(opts.debug_dump_dir, engine_, table_, lead_),
      sampler_(table_, backend, loader_, tcfg_.seed, tcfg_.sample_interval, lead_, lead_ && !opts.quiet),
      inputs_(size_t(B_) * size_t(T_)),
      targets_(size_t(B_) * size_t(T_)) {}

Trainer::~Trainer() = default;

TrainSummary Trainer::run() {
  print_banner();
  checkpointer_.start();  // first: it may refuse to run, and metrics.jsonl is still untouched then
  metrics_ = std::make_unique<MetricsLog>(tcfg_.output_dir, lead_, checkpointer_.resumed(), checkpointer_.start_step());
  dump_.initial(mcfg_, tcfg_, world_size_);
  checkpointer_.resave_if_nothing_to_train();
  const int start_step = checkpointer_.start_step();
  const auto t_start = Clock::now();
  for (int step = start_step; step < tcfg_.max_steps; ++step) {
    const int64_t batch_index = checkpointer_.data_cursor() + (step - start_step);
    mark(RunPhase::step, step + 1);
    test_hooks::kill_point("step", step, rank_);
    inject_test_failure(rank_, step);
    const StepResult r = train_step(step, batch_index);
    record(step, batch_index, r);
    sampler_.after_step(step + 1, engine_);
    // After the metrics row, so a resumed run's metrics.jsonl has every step up to its checkpoint.
    mark(RunPhase::step_boundary, step + 1);
    const StopDecision stop = stop_.after_step(step + 1);
    if (checkpointer_.due(step + 1) || stop.exiting) checkpointer_.save(progress_after(step, batch_index, r.lr));
    if (stop.exiting) {
      checkpointer_.finish();
      summary_.preempted = stop.signal != 0;
      stop_.report_exit(stop, step + 1);
      break;
    }
  }
  mark(RunPhase::finish, std::max(summary_.steps_done, start_step));
  checkpointer_.finish();
  profile_.finish();
  if (opts_.collect_params) collect_params();
  dump_.finish();
  summary_.save_blocked_s = checkpointer_.save_blocked_s();
  print_done(seconds_since(t_start));
  return summary_;
}

Trainer::StepResult Trainer::train_step(int step, int64_t batch_index) {
  profile_.begin_step(step);
  const auto t0 = Clock::now();
  data_.reset_counters();
  StepResult r;
  r.lr = lr_at(step, tcfg_.learning_rate, tcfg_.warmup_steps, tcfg_.max_steps, tcfg_.min_lr_ratio);
  engine_.begin_step();
  r.loss = forward_backward(batch_index);
  ZT_CHECK(std::isfinite(r.loss), "loss became {} at step {}; lower --learning_rate or check the data", r.loss,
           step + 1);
  r.grad_norm = std::sqrt(engine_.grad_norm_squared());
  // torch.nn.utils.clip_grad_norm_: coefficient max_norm / (norm + 1e-6), only when it is below 1.
  double clip = 1.0;
  if (tcfg_.grad_clip > 0) clip = std::min(1.0, tcfg_.grad_clip / (r.grad_norm + 1e-6));
  dump_.gradients(step, loader_, batch_index, G_);
  AdamwStep hp;
  hp.lr = float(r.lr);
  hp.beta1 = float(tcfg_.beta1);
  hp.beta2 = float(tcfg_.beta2);
  hp.eps = float(tcfg_.adam_eps);
  hp.weight_decay = float(tcfg_.weight_decay);
  hp.grad_scale = float(clip);
  mark(RunPhase::optimizer, step + 1);
  checkpointer_.before_optimizer_step();
  engine_.optimizer_step(hp);
  dump_.parameters(step, r.loss, r.lr, r.grad_norm);
  r.seconds = seconds_since(t0);
  profile_.end_step(r.seconds);
  return r;
}

// The mean loss over the global batch: this rank's slice of each micro-step, summed over ranks in rank order.
double Trainer::forward_backward(int64_t batch_index) {
  const float dloss = float(1.0 / (double(G_) * T_));
  const int first_seq = rank_ * (G_ / world_size_);
  double loss_sum = 0;
  for (int m = 0; m < accum_; ++m) {
    loader_.train_batch(batch_index, G_, first_seq + m * B_, B_, inputs_.data(), targets_.data());
    engine_.begin_micro_step(model_, true, m + 1 == accum_);  // stages 0-1 reduce once, after the last
    loss_sum += model_.step(engine_, inputs_.data(), targets_.data(), true, dloss);
    engine_.end_micro_step();
  }
  control_.all_reduce_sum(&loss_sum, 1);
  return loss_sum / (double(G_) * T_);
}

double Trainer::evaluate() {
  return zt::evaluate(model_, engine_, loader_, int64_t(tcfg_.eval_batches) * G_, G_, control_).loss;
}

// The summary, the evaluation when one is due, the metrics row and the progress line of a finished step.
void Trainer::record(int step, int64_t batch_index, const StepResult& r) {
  time_in_steps_ += r.seconds;
  const double tok_s = double(G_) * T_ / r.seconds;
  summary_.bytes_sent.push_back(data_.bytes_sent());
  summary_.comm_wait_s.push_back(data_.wait_seconds());
  summary_.losses.push_back(r.loss);
  const int start_step = checkpointer_.start_step();
  if (step == start_step) summary_.first_loss = r.loss;
  summary_.last_loss = r.loss;
  summary_.steps_done = step + 1;
  double val_loss = -1;
  const bool do_eval = tcfg_.eval_interval > 0 && loader_.n_val_sequences() > 0 &&
                       ((step + 1) % tcfg_.eval_interval == 0 || step + 1 == tcfg_.max_steps);
  if (do_eval) {
    mark(RunPhase::evaluation, step + 1);
    val_loss = evaluate();
    summary_.last_val_loss = val_loss;
  }
  if (lead_) {
    nlohmann::json row = {{"step", step + 1},
                          {"loss", r.loss},
                          {"lr", r.lr},
                          {"grad_norm", r.grad_norm},
                          {"tokens_per_s", tok_s},
                          {"epoch", loader_.epoch_of(batch_index, G_)},
                          {"comm_wait_s", summary_.comm_wait_s.back()}};
    if (do_eval) row["val_loss"] = val_loss;
    metrics_->write(row);
  }
  if (lead_ && !opts_.quiet &&
      ((step + 1) % tcfg_.log_interval == 0 || step == start_step || step + 1 == tcfg_.max_steps)) {
    const double flops_per_token =  // PaLM appendix B
        6.0 * double(table_.n_params()) + 12.0 * mcfg_.n_layer * double(mcfg_.d_model) * double(T_);
    const double eta = time_in_steps_ / (step + 1 - start_step) * (tcfg_.max_steps - step - 1);
    fmt::print(
        "step {:>{}}/{} | loss {:.4f} | lr {:.3e} | grad_norm {:.4f} | {:.0f} tok/s | {:.1f} GFLOP/s | "
        "ETA {}{}\n",
        step + 1, int(std::to_string(tcfg_.max_steps).size()), tcfg_.max_steps, r.loss, r.lr, r.grad_norm, tok_s,
        flops_per_token * tok_s / 1e9, hms(eta), do_eval ? fmt::format(" | val_loss {:.4f}", val_loss) : std::string());
    std::fflush(stdout);
  }
  profile_.report_if_done();
}

TrainProgress Trainer::progress_after(int step, int64_t batch_index, double lr) const {
  TrainProgress progress;
  progress.step = step + 1;
  progress.data_cursor = batch_index + 1;
  progress.tokens_seen = progress.data_cursor * int64_t(G_) * T_;
  progress.lr = lr;
  return progress;
}

void Trainer::collect_params() {
  for_each_logical_tensor(engine_, table_, false, [&](const TensorSpec& t, const float* data) {
    summary_.final_params.insert(summary_.final_params.end(), data, data + t.numel());
  });
}

void Trainer::print_banner() const {
  if (!lead_ || opts_.quiet) return;
  fmt::print("zerotrain {} | model n_layer={} n_head={} d_model={} vocab={} (padded {}) seq_len={} | {} params\n",
             ZT_VERSION, mcfg_.n_layer, mcfg_.n_head, mcfg_.d_model, mcfg_.vocab, mcfg_.padded_vocab(), T_,
             human_count(double(table_.n_params())));
  fmt::print(
      "data {} | {} train / {} val sequences | global batch {} seq = {} tokens/step | micro-batch {} x "
      "{} ranks x {} accumulation steps\n",
      train_src_->describe(), loader_.n_train_sequences(), loader_.n_val_sequences(), G_, human_count(double(G_) * T_),
      B_, world_size_, accum_);
  const MemoryReport mem = engine_.memory_report();
  fmt::print(
      "ZeRO stage {} on {} rank(s), backend {}, {} thread(s) per rank | per-rank state: params {} "
      "(formula {}), grads {} (formula {}), optimizer {} (formula {}){}{} | Ψ={}{} | {}\n",
      tcfg_.zero_stage, world_size_, backend_.name(), omp_get_max_threads(), human_bytes(double(mem.params_bytes)),
      human_bytes(double(mem.formula_params)), human_bytes(double(mem.grads_bytes)),
      human_bytes(double(mem.formula_grads)), human_bytes(double(mem.optim_bytes)),
      human_bytes(double(mem.formula_optim)),
      mem.param_copy_bytes > 0 ? fmt::format(", bf16 parameter copy {}", human_bytes(double(mem.param_copy_bytes)))
                               : std::string(),
      mem.pool_summary(), mem.psi,
      (mem.psi_t != mem.psi ? fmt::format(" Ψ_t={}", mem.psi_t) : std::string()) +
          (mem.psi_a != mem.psi_t ? fmt::format(" Ψ_a={}", mem.psi_a) : std::string()),
      mem.formula_text);
  if (!tcfg_.freeze.empty()) {
    size_t n_frozen = 0, n_elems = 0;
    for (size_t t = 0; t < table_.tensors().size(); ++t)
      if (engine_.frozen(int(t))) ++n_frozen, n_elems += table_.tensors()[t].numel();
    fmt::print("frozen (--freeze {}): {} of {} tensors, {} parameters; no gradients, Adam state or updates\n",
               fmt::join(tcfg_.freeze, ","), n_frozen, table_.tensors().size(), human_count(double(n_elems)));
  }
  fmt::print("{}\n", model_.memory_report());
  if (backend_.records_graphs())  // --cuda_graphs on; at stages 2-3 the engine declines (ZeroEngine::begin_quiet)
    fmt::print("--cuda_graphs on: {}\n",
               tcfg_.zero_stage <= 1
                   ? "each micro-step's forward and backward replay one CUDA graph after a warm-up; the gradient "
                     "reductions run beside it"
                   : fmt::format("ZeRO stage {} gathers and reduces between the layers: micro-steps run op by op, "
                                 "no graphs",
                                 tcfg_.zero_stage));
  std::fflush(stdout);
}

void Trainer::print_done(double total_s) const {
  if (!lead_ || opts_.quiet) return;
  fmt::print("done: {} steps in {}, loss {:.4f} -> {:.4f}{}\n", summary_.steps_done, hms(total_s), summary_.first_loss,
             summary_.last_loss,
             summary_.last_val_loss >= 0 ? fmt::format(", val_loss {:.4f}", summary_.last_val_loss) : std::string());
  std::fflush(stdout);
}

void Trainer::mark(RunPhase phase, int64_t step) const {
  if (opts_.watchdog) opts_.watchdog->enter(phase, step);
}

}  // namespace zt
