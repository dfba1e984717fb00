// The training loop: per-rank slices of each global batch, ZeRO engine steps, schedule, logs and metrics.
#include "core/trainer.hpp"

#include <omp.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "ckpt/async_save.hpp"
#include "ckpt/checkpoint.hpp"
#include "ckpt/model_source.hpp"
#include "ckpt/resume.hpp"
#include "core/data.hpp"
#include "core/errors.hpp"
#include "core/generate.hpp"
#include "core/gpt2.hpp"
#include "core/lr_schedule.hpp"
#include "core/model.hpp"
#include "core/preempt.hpp"
#include "core/profiling_backend.hpp"
#include "core/tokenizer.hpp"
#include "sharding/comm_mpi.hpp"
#include "sharding/evaluate.hpp"
#include "sharding/zero_engine.hpp"

namespace zt {
namespace {

using Clock = std::chrono::steady_clock;

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

/// Writes the logical tensors (padding removed) of the engine's params or reduced grads, in table order.
void dump_tensors(ZeroEngine& engine, const ParamTable& table, bool grads, const std::string& path, bool write) {
  std::ofstream out;
  if (write) {
    out.open(path, std::ios::binary);
    ZT_CHECK(out.good(), "cannot write debug dump file {}", path);
  }
  std::vector<float> full;
  for (size_t u = 0; u < table.units().size(); ++u) {
    full.assign(table.units()[u].numel, 0.0f);
    engine.gather_unit(int(u), grads, full.data());
    if (!write) continue;
    for (int ti : table.units()[u].tensors) {
      const TensorSpec& t = table.tensors()[size_t(ti)];
      out.write(reinterpret_cast<const char*>(full.data() + t.unit_offset), std::streamsize(t.numel() * 4));
    }
  }
  if (write) ZT_CHECK(out.good(), "failed writing debug dump file {}", path);
}

/// --sample_interval: rank 0 continues the opening tokens of the first validation (else training) sequence with the
/// current parameters, for the log. At ZeRO-3 every rank takes part in gathering them to rank 0, which then holds
/// the whole model (the generator's parameters and K/V cache stay allocated between samples).
class TrainingSampler {
 public:
  TrainingSampler(const ParamTable& table, Backend& backend, const DataLoader& loader, uint64_t seed)
      : table_(table), be_(backend), seed_(seed) {
    const int T = table.config().seq_len;
    std::vector<int32_t> in(static_cast<size_t>(T)), tg(static_cast<size_t>(T));
    if (loader.n_val_sequences() > 0)
      loader.val_batch(0, 1, 0, 1, in.data(), tg.data());
    else
      loader.train_batch(0, 1, 0, 1, in.data(), tg.data());
    prompt_.assign(in.begin(), in.begin() + std::max(1, std::min(16, T / 4)));
  }

  /// The sample's text (rank 0; "" elsewhere): bytes escaped for a byte vocabulary, else token ids.
  std::string sample(ZeroEngine& engine, bool lead, uint64_t step) {
    if (lead && !params_) {
      params_ = std::make_unique<FullParams>(table_, be_);
      gen_ = std::make_unique<Generator>(table_, be_, table_.config().seq_len);
    }
    std::vector<float> host;
    for (size_t u = 0; u < table_.units().size(); ++u) {
      if (!lead && engine.stage() < 3) break;  // below stage 3 rank 0 has every parameter already
      host.resize(table_.units()[u].numel);
      engine.gather_unit(int(u), false, host.data());
      if (lead) be_.from_host(params_->unit(int(u)), host.data(), host.size());
    }
    if (!lead) return std::string();
    SamplingOptions opts;
    opts.max_new_tokens = std::min(64, gen_->max_T() - int(prompt_.size()));
    opts.top_k = 40;
    opts.seed = seed_ ^ (step << 32);
    opts.use_cache = be_.name() == "cpu";  // attention_cached has no CUDA kernel yet: recompute the prefix there
    const std::vector<int32_t> seq = generate(*gen_, *params_, prompt_, opts);
    const std::vector<int32_t> fresh(seq.begin() + long(prompt_.size()), seq.end());
    if (table_.config().vocab <= 256)
      return fmt::format("\"{}\" -> \"{}\"", escape_bytes(decode_bytes(prompt_)), escape_bytes(decode_bytes(fresh)));
    return fmt::format("[{}] -> [{}]", fmt::join(prompt_, " "), fmt::join(fresh, " "));
  }

 private:
  const ParamTable& table_;
  Backend& be_;
  uint64_t seed_;
  std::vector<int32_t> prompt_;
  std::unique_ptr<FullParams> params_;
  std::unique_ptr<Generator> gen_;
};

}  // namespace

TrainSummary train(const ModelConfig& mcfg, const TrainConfig& tcfg_in, Comm& comm, Backend& backend,
                   const RunOptions& opts) {
  mcfg.validate();
  const int N = comm.world_size(), rank = comm.rank();
  const bool lead = rank == 0;
  TrainConfig tcfg = tcfg_in;
  auto* mpi = dynamic_cast<MpiComm*>(&comm);
  ZT_CHECK(mpi || (tcfg.save_interval == 0 && tcfg.exit_after_steps == 0 && !tcfg.async_save &&
                   tcfg.resume_from_checkpoint.empty() && tcfg.init_from.empty()),
           "checkpoints and --init_from need the MPI communicator");
  // Resume: the first readable candidate's manifest fixes the run shape (global batch) before anything is built.
  std::vector<std::string> candidates;
  if (!tcfg.resume_from_checkpoint.empty()) {
    candidates = resume_candidates(tcfg.resume_from_checkpoint, tcfg.output_dir, *mpi);
    for (const auto& c : candidates) {
      nlohmann::json man;
      try {
        man = read_manifest(c);
      } catch (const CheckpointError&) {
        continue;  // reported when loading it
      }
      std::vector<std::string> warnings;
      tcfg = adjust_for_resume(tcfg, man, N, warnings);
      if (lead)
        for (const auto& w : warnings) fmt::print(stderr, "zerotrain: warning: resuming {}: {}\n", c, w);
      break;
    }
  }
  tcfg.validate(N);
  const int accum = tcfg.grad_accum_steps(N);
  const int B = tcfg.micro_batch_size, T = mcfg.seq_len, G = tcfg.global_batch_size;
  const int per_rank = G / N;

  ParamTable table(mcfg);
  auto train_src = std::shared_ptr<const TokenSource>(open_token_source(tcfg.data, mcfg.vocab));
  std::shared_ptr<const TokenSource> val_src;
  if (!tcfg.val_data.empty())
    val_src = std::shared_ptr<const TokenSource>(open_token_source(tcfg.val_data, mcfg.vocab));
  DataLoader loader(train_src, val_src, T, tcfg.val_data.empty() ? tcfg.val_fraction : 0.0, tcfg.seed);

  // --profile_steps: the model and the engine call the backend through a profiler, timing ops only while on.
  ProfilingBackend profiler(backend, false);
  Backend& be = tcfg.profile_steps > 0 ? static_cast<Backend&>(profiler) : backend;
  Gpt2 model(table, be, B, T);
  ZeroEngine engine(table, be, comm, tcfg.zero_stage);
  bool resumed = false;
  LoadedCheckpoint loaded;
  double load_s = 0;
  for (const auto& c : candidates) {
    try {
      const auto tl = Clock::now();
      loaded = load_checkpoint(c, mcfg, engine, *mpi);
      load_s = std::chrono::duration<double>(Clock::now() - tl).count();
      resumed = true;
      break;
    } catch (const CheckpointError& e) {
      if (tcfg.resume_from_checkpoint != "latest") throw;
      if (lead) fmt::print(stderr, "zerotrain: warning: skipping checkpoint {}: {}\n", c, e.what());
    }
  }
  if (!resumed) {
    if (lead && tcfg.resume_from_checkpoint == "latest")
      fmt::print("no usable checkpoint in {}: starting fresh\n", tcfg.output_dir);
    if (tcfg.init_from.empty()) {
      engine.init_params(tcfg.seed);
    } else {
      const auto ti = Clock::now();
      const std::unique_ptr<ModelSource> src = open_model_source(tcfg.init_from);
      init_params_from(*src, engine, *mpi);
      if (lead && !opts.quiet)
        fmt::print("initialised from {} ({}) in {:.2f}s: parameters only, fresh optimizer, step 0\n", tcfg.init_from,
                   src->format(), std::chrono::duration<double>(Clock::now() - ti).count());
    }
  }
  const int start_step = resumed ? int(loaded.progress.step) : 0;
  const int64_t cursor0 = resumed ? loaded.progress.data_cursor : 0;
  if (lead && resumed)
    fmt::print("resumed from {}: step {}, world size {} then {} now, ZeRO stage {} then {} now\n", loaded.path,
               start_step, loaded.world_size, N, loaded.zero_stage, tcfg.zero_stage);
  if (lead && resumed && !opts.quiet) fmt::print("loaded {} in {:.2f}s\n", loaded.path, load_s);

  const double flops_per_token =
      6.0 * double(table.n_params()) + 12.0 * mcfg.n_layer * double(mcfg.d_model) * double(T);  // PaLM appendix B
  if (lead && !opts.quiet) {
    fmt::print("zerotrain {} | model n_layer={} n_head={} d_model={} vocab={} (padded {}) seq_len={} | {} params\n",
               ZT_VERSION, mcfg.n_layer, mcfg.n_head, mcfg.d_model, mcfg.vocab, mcfg.padded_vocab(), T,
               human_count(double(table.n_params())));
    fmt::print(
        "data {} | {} train / {} val sequences | global batch {} seq = {} tokens/step | micro-batch {} x "
        "{} ranks x {} accumulation steps\n",
        train_src->describe(), loader.n_train_sequences(), loader.n_val_sequences(), G, human_count(double(G) * T), B,
        N, accum);
    const MemoryReport mem = engine.memory_report();
    fmt::print(
        "ZeRO stage {} on {} rank(s), backend {}, {} thread(s) per rank | per-rank state: params {} "
        "(formula {}), grads {} (formula {}), optimizer {} (formula {}){} | Ψ={} | {}\n",
        tcfg.zero_stage, N, backend.name(), omp_get_max_threads(), human_bytes(double(mem.params_bytes)),
        human_bytes(double(mem.formula_params)), human_bytes(double(mem.grads_bytes)),
        human_bytes(double(mem.formula_grads)), human_bytes(double(mem.optim_bytes)),
        human_bytes(double(mem.formula_optim)),
        mem.param_copy_bytes > 0 ? fmt::format(", bf16 parameter copy {}", human_bytes(double(mem.param_copy_bytes)))
                                 : std::string(),
        mem.psi, mem.formula_text);
    fmt::print("activations {} per rank{}\n", human_bytes(double(model.activation_bytes())),
               model.activation_copy_bytes() > 0 ? fmt::format(" + bf16 copies of the matmul operands {}",
                                                               human_bytes(double(model.activation_copy_bytes())))
                                                 : std::string());
    std::fflush(stdout);
  }

  std::ofstream metrics;
  if (lead) {
    std::error_code ec;
    std::filesystem::create_directories(tcfg.output_dir, ec);
    ZT_CHECK(!ec, "cannot create output directory '{}': {}", tcfg.output_dir, ec.message());
    const std::string path = tcfg.output_dir + "/metrics.jsonl";
    if (resumed) {
      // Keep the rows up to the resumed step; rows a crashed run wrote past its last checkpoint are redone.
      std::ifstream in(path);
      std::string line, kept;
      while (std::getline(in, line)) {
        try {
          if (nlohmann::json::parse(line).value("step", 0) <= start_step) kept += line + "\n";
        } catch (const nlohmann::json::exception&) {
          break;  // a torn last line
        }
      }
      in.close();
      std::ofstream(path, std::ios::trunc) << kept;
      metrics.open(path, std::ios::app);
    } else {
      metrics.open(path, std::ios::trunc);
    }
    ZT_CHECK(metrics.good(), "cannot open {} for writing", path);
  }
  const bool dump = !opts.debug_dump_dir.empty();
  nlohmann::json dump_index;
  if (dump) {
    if (lead) std::filesystem::create_directories(opts.debug_dump_dir);
    dump_tensors(engine, table, false, opts.debug_dump_dir + "/params_init.bin", lead);
    if (lead) {
      nlohmann::json tensors = nlohmann::json::array();
      size_t off = 0;
      for (const auto& t : table.tensors()) {
        tensors.push_back({{"name", t.name}, {"shape", t.shape}, {"offset", off}, {"decay", t.decay}});
        off += t.numel();
      }
      dump_index = {{"model", to_json(mcfg)},
                    {"train", to_json(tcfg)},
                    {"tensors", tensors},
                    {"world_size", N},
                    {"steps", nlohmann::json::array()}};
    }
  }

  std::vector<int32_t> inputs(size_t(B) * T), targets(size_t(B) * T);
  auto eval = [&] { return evaluate(model, engine, loader, int64_t(tcfg.eval_batches) * G, G, comm).loss; };
  TrainingSampler sampler(table, backend, loader, tcfg.seed);

  TrainSummary summary;
  std::unique_ptr<AsyncSaver> async;
  if (tcfg.async_save) async = std::make_unique<AsyncSaver>(*mpi);
  auto report_async = [&](const std::string& dir) {
    if (lead && !opts.quiet && !dir.empty()) fmt::print("saved {} (background write finished)\n", dir);
  };
  // Async: the step that saved blocks for the previous write (if still running) and for handing over; the next
  // optimizer step blocks until the writer has copied the shard (on a host backend the copy overlaps the forward and
  // backward). Their sum is the stall of that checkpoint.
  int64_t async_step = 0;
  double async_blocked = 0;
  bool async_unreported = false;
  auto finish_async_copy = [&]() {
    async_unreported = false;
    double copy_s = 0;
    async_blocked += async->wait_copied(&copy_s);
    summary.save_blocked_s.push_back(async_blocked);
    if (lead && !opts.quiet)
      fmt::print(
          "checkpoint-{}: step blocked {:.3f}s for the host copy (copy {:.3f}s, overlapped with training); "
          "writing in the background\n",
          async_step, async_blocked, copy_s);
  };
  // Commit order in the output directory (resume from `latest` takes the most recent commit): rank 0 looks once.
  int64_t commit_seq = 0;
  if (mpi) {
    if (lead) commit_seq = next_commit_seq(tcfg.output_dir);
    comm.broadcast(&commit_seq, sizeof(commit_seq), 0);
  }
  // Saves at a step boundary: synchronously, or by handing the shard to the background writer.
  auto save = [&](const TrainProgress& progress_in) {
    ZT_CHECK(mpi, "checkpoints need the MPI communicator");
    TrainProgress progress = progress_in;
    progress.commit_seq = commit_seq++;
    const auto ts = Clock::now();
    if (async) {
      report_async(async->wait());  // one save in flight at a time
      const double waited = std::chrono::duration<double>(Clock::now() - ts).count();
      const auto tc = Clock::now();
      async->start(tcfg.output_dir, mcfg, tcfg, progress, engine, tcfg.save_total_limit);
      async_step = progress.step;
      async_blocked = waited + std::chrono::duration<double>(Clock::now() - tc).count();
      async_unreported = true;
      return;
    }
    const std::string dir =
        save_checkpoint(tcfg.output_dir, mcfg, tcfg, progress, snapshot_view(engine), *mpi, tcfg.save_total_limit);
    const double dt = std::chrono::duration<double>(Clock::now() - ts).count();
    summary.save_blocked_s.push_back(dt);
    if (lead && !opts.quiet) fmt::print("saved {} in {:.2f}s\n", dir, dt);
  };

  // Test-only failure injection: ZT_TEST_FAIL_RANK=r [ZT_TEST_FAIL_STEP=s] throws on rank r at step s.
  const char* fail_rank_env = std::getenv("ZT_TEST_FAIL_RANK");
  const int fail_rank = fail_rank_env ? std::atoi(fail_rank_env) : -1;
  const char* fail_step_env = std::getenv("ZT_TEST_FAIL_STEP");
  const int fail_step = fail_step_env ? std::atoi(fail_step_env) : 0;

  // A resume at the run's last step trains nothing; with saving on, it writes the loaded state in this run's layout
  // (world size, stage) to OUTPUT/checkpoint-<step>: re-sharding a checkpoint offline, like DeepSpeed's universal
  // checkpoint conversion. Skipped when that directory is the one just loaded.
  if (resumed && start_step >= tcfg.max_steps && tcfg.save_interval > 0) {
    std::error_code ec;
    const std::string dest = fmt::format("{}/checkpoint-{}", tcfg.output_dir, start_step);
    if (!std::filesystem::equivalent(loaded.path, dest, ec)) {
      if (lead)
        fmt::print("no step left to train (--max_steps {}): re-saving step {} for {} rank(s) at ZeRO stage {}\n",
                   tcfg.max_steps, start_step, N, tcfg.zero_stage);
      save(loaded.progress);
    }
  }

  const float dloss = float(1.0 / (double(G) * T));
  int profiled_steps = 0;
  double profiled_s = 0;
  bool profile_reported = false;
  // Rank 0's table: every rank runs the same ops, and the other ranks' times differ only by load and skew.
  auto report_profile = [&] {
    profile_reported = true;
    if (!lead || opts.quiet || profiled_steps == 0) return;
    fmt::print(
        "profile of {} step(s) on rank 0 ({:.1f} ms per step, each op timed between synchronizations, so the "
        "steps ran slower; the rest of a step is communication and host work):\n{}",
        profiled_steps, profiled_s * 1e3 / profiled_steps, profiler.report(profiled_steps));
    std::fflush(stdout);
  };
  const auto t_start = Clock::now();
  double time_in_steps = 0;
  for (int step = start_step; step < tcfg.max_steps; ++step) {
    const int64_t batch_index = cursor0 + (step - start_step);
    ZT_CHECK(!(rank == fail_rank && step == fail_step), "injected failure (ZT_TEST_FAIL_RANK={}) at step {}", fail_rank,
             step);
    // The first step of a run warms up (first-use allocations, cuBLASLt plans); the next profile_steps are timed.
    profiler.set_enabled(step > start_step && step <= start_step + tcfg.profile_steps);
    const auto t0 = Clock::now();
    comm.reset_counters();
    const double lr = lr_at(step, tcfg.learning_rate, tcfg.warmup_steps, tcfg.max_steps, tcfg.min_lr_ratio);
    engine.begin_step();
    double loss_sum = 0;
    for (int m = 0; m < accum; ++m) {
      loader.train_batch(batch_index, G, rank * per_rank + m * B, B, inputs.data(), targets.data());
      engine.begin_micro_step(model, true);
      loss_sum += model.step(engine, inputs.data(), targets.data(), true, dloss);
      engine.end_micro_step();
    }
    comm.all_reduce_sum(&loss_sum, 1);
    const double loss = loss_sum / (double(G) * T);
    ZT_CHECK(std::isfinite(loss), "loss became {} at step {}; lower --learning_rate or check the data", loss, step + 1);
    const double grad_norm = std::sqrt(engine.grad_norm_squared());
    // torch.nn.utils.clip_grad_norm_: coefficient max_norm / (norm + 1e-6), only when it is below 1.
    double clip = 1.0;
    if (tcfg.grad_clip > 0) clip = std::min(1.0, tcfg.grad_clip / (grad_norm + 1e-6));
    if (dump) {
      dump_tensors(engine, table, true, fmt::format("{}/grads_{}.bin", opts.debug_dump_dir, step), lead);
      if (lead) {
        // The global batch this step consumed, as the rank slices saw it.
        std::ofstream bf(fmt::format("{}/batch_{}.bin", opts.debug_dump_dir, step), std::ios::binary);
        std::vector<int32_t> in_all(size_t(G) * T), tg_all(size_t(G) * T);
        loader.train_batch(batch_index, G, 0, G, in_all.data(), tg_all.data());
        bf.write(reinterpret_cast<const char*>(in_all.data()), std::streamsize(in_all.size() * 4));
        bf.write(reinterpret_cast<const char*>(tg_all.data()), std::streamsize(tg_all.size() * 4));
      }
    }
    AdamwStep hp;
    hp.lr = float(lr);
    hp.beta1 = float(tcfg.beta1);
    hp.beta2 = float(tcfg.beta2);
    hp.eps = float(tcfg.adam_eps);
    hp.weight_decay = float(tcfg.weight_decay);
    hp.grad_scale = float(clip);
    if (async_unreported) finish_async_copy();  // the writer must not see a half-updated shard
    engine.optimizer_step(hp);
    if (dump) {
      dump_tensors(engine, table, false, fmt::format("{}/params_{}.bin", opts.debug_dump_dir, step), lead);
      if (lead) dump_index["steps"].push_back({{"step", step}, {"loss", loss}, {"lr", lr}, {"grad_norm", grad_norm}});
    }
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    time_in_steps += dt;
    if (profiler.enabled()) {
      profiler.set_enabled(false);
      profiled_steps += 1;
      profiled_s += dt;
    }
    const double tok_s = double(G) * T / dt;
    summary.bytes_sent.push_back(comm.bytes_sent());
    summary.comm_wait_s.push_back(comm.wait_seconds());
    summary.losses.push_back(loss);
    if (step == start_step) summary.first_loss = loss;
    summary.last_loss = loss;
    summary.steps_done = step + 1;

    double val_loss = -1;
    const bool do_eval = tcfg.eval_interval > 0 && loader.n_val_sequences() > 0 &&
                         ((step + 1) % tcfg.eval_interval == 0 || step + 1 == tcfg.max_steps);
    if (do_eval) {
      val_loss = eval();
      summary.last_val_loss = val_loss;
    }
    if (lead) {
      nlohmann::json row = {
          {"step", step + 1},       {"loss", loss},          {"lr", lr},
          {"grad_norm", grad_norm}, {"tokens_per_s", tok_s}, {"epoch", loader.epoch_of(batch_index, G)}};
      if (do_eval) row["val_loss"] = val_loss;
      metrics << row.dump() << '\n';
      metrics.flush();
      if (!opts.quiet && ((step + 1) % tcfg.log_interval == 0 || step == start_step || step + 1 == tcfg.max_steps)) {
        const double eta = time_in_steps / (step + 1 - start_step) * (tcfg.max_steps - step - 1);
        fmt::print(
            "step {:>{}}/{} | loss {:.4f} | lr {:.3e} | grad_norm {:.4f} | {:.0f} tok/s | {:.1f} GFLOP/s | "
            "ETA {}{}\n",
            step + 1, int(std::to_string(tcfg.max_steps).size()), tcfg.max_steps, loss, lr, grad_norm, tok_s,
            flops_per_token * tok_s / 1e9, hms(eta),
            do_eval ? fmt::format(" | val_loss {:.4f}", val_loss) : std::string());
        std::fflush(stdout);
      }
    }
    if (tcfg.sample_interval > 0 && (step + 1) % tcfg.sample_interval == 0) {
      const std::string text = sampler.sample(engine, lead, uint64_t(step + 1));
      if (lead && !opts.quiet) {
        fmt::print("sample at step {}: {}\n", step + 1, text);
        std::fflush(stdout);
      }
    }
    if (profiled_steps == tcfg.profile_steps && !profile_reported) report_profile();
    // After the metrics row, so a resumed run's metrics.jsonl has every step up to its checkpoint.
    // Every rank agrees at the same step; after the last step there is nothing left to requeue for.
    const int signal = step + 1 < tcfg.max_steps ? comm.all_reduce_max(preemption_signal()) : 0;
    const bool exiting = signal != 0 || (tcfg.exit_after_steps > 0 && step + 1 - start_step == tcfg.exit_after_steps &&
                                         step + 1 < tcfg.max_steps);
    const char* signal_name = signal == SIGTERM ? "SIGTERM" : signal == SIGUSR1 ? "SIGUSR1" : "?";
    if (signal != 0 && lead && !opts.quiet) {  // before the save, which can take minutes on a large model
      fmt::print("signal {} ({}) received: saving checkpoint-{} before exiting\n", signal, signal_name, step + 1);
      std::fflush(stdout);
    }
    if ((tcfg.save_interval > 0 && ((step + 1) % tcfg.save_interval == 0 || step + 1 == tcfg.max_steps)) || exiting) {
      TrainProgress progress;
      progress.step = step + 1;
      progress.data_cursor = batch_index + 1;
      progress.tokens_seen = progress.data_cursor * int64_t(G) * T;
      progress.lr = lr;
      save(progress);
    }
    if (exiting) {
      if (async_unreported) finish_async_copy();
      if (async) report_async(async->wait());
      summary.preempted = signal != 0;
      if (lead && !opts.quiet) {
        if (signal != 0)
          fmt::print("received signal {} ({}): checkpoint saved at step {}; exiting with status {} (requeue)\n", signal,
                     signal_name, step + 1, kExitRequeue);
        else
          fmt::print("stopping after {} steps of this run (--exit_after_steps)\n", step + 1 - start_step);
      }
      break;
    }
  }
  if (async_unreported) finish_async_copy();
  if (async) report_async(async->wait());
  if (tcfg.profile_steps > 0 && !profile_reported) report_profile();  // the run ended before profile_steps
  if (opts.collect_params) {
    std::vector<float> full;
    for (size_t u = 0; u < table.units().size(); ++u) {
      full.assign(table.units()[u].numel, 0.0f);
      engine.gather_unit(int(u), false, full.data());
      for (int ti : table.units()[u].tensors) {
        const TensorSpec& t = table.tensors()[size_t(ti)];
        summary.final_params.insert(summary.final_params.end(), full.begin() + long(t.unit_offset),
                                    full.begin() + long(t.unit_offset + t.numel()));
      }
    }
  }
  if (dump && lead) {
    std::ofstream idx(opts.debug_dump_dir + "/index.json");
    idx << dump_index.dump(1) << '\n';
  }
  if (lead && !opts.quiet) {
    const double total = std::chrono::duration<double>(Clock::now() - t_start).count();
    fmt::print("done: {} steps in {}, loss {:.4f} -> {:.4f}{}\n", summary.steps_done, hms(total), summary.first_loss,
               summary.last_loss,
               summary.last_val_loss >= 0 ? fmt::format(", val_loss {:.4f}", summary.last_val_loss) : std::string());
    std::fflush(stdout);
  }
  return summary;
}

}  // namespace zt
