// main() of the zerotrain CLI: MPI setup, flags (CLI11) and config files, subcommands, job-wide error handling.
#include <mpi.h>

#include <cpptoml.h>
#include <CLI/CLI.hpp>

#include <sched.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include "ckpt/checkpoint.hpp"
#include "core/backend.hpp"
#include "core/config.hpp"
#include "core/errors.hpp"
#include "core/preempt.hpp"
#include "core/trainer.hpp"
#include "launch/device_select.hpp"
#include "launch/model_commands.hpp"
#include "sharding/comm_mpi.hpp"

namespace {

using zt::ModelConfig;
using zt::TrainConfig;

/// A flag whose value, when given on the command line, overrides preset and config file.
struct Override {
  CLI::Option* opt;
  std::function<void(ModelConfig&, TrainConfig&)> apply;
};

template <typename V, typename Cfg>
void add_override(CLI::App& app, std::vector<Override>& list, const std::string& name, V Cfg::*field,
                  const std::string& help, V def) {
  auto value = std::make_shared<V>(def);
  CLI::Option* o = nullptr;
  if constexpr (std::is_same_v<V, bool>)
    o = app.add_flag(name, *value, help);
  else
    o = app.add_option(name, *value, help);
  if constexpr (std::is_same_v<Cfg, TrainConfig>) {
    o->default_str(fmt::format("{}", def));
    list.push_back({o, [value, field](ModelConfig&, TrainConfig& t) { t.*field = *value; }});
  } else {
    list.push_back({o, [value, field](ModelConfig& m, TrainConfig&) { m.*field = *value; }});
  }
}

nlohmann::json toml_to_json(const cpptoml::table& t, const std::string& path) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [key, base] : t) {
    if (auto s = t.get_as<std::string>(key))
      j[key] = *s;
    else if (auto i = t.get_as<int64_t>(key))
      j[key] = *i;
    else if (auto d = t.get_as<double>(key))
      j[key] = *d;
    else if (auto b = t.get_as<bool>(key))
      j[key] = *b;
    else
      ZT_FAIL("config file {}: key '{}' must be a string, number or boolean", path, key);
    (void)base;
  }
  return j;
}

nlohmann::json read_config_file(const std::string& path) {
  std::ifstream in(path);
  ZT_CHECK(in.good(), "cannot open config file '{}'", path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  const bool is_json = path.size() >= 5 && path.substr(path.size() - 5) == ".json";
  if (is_json) {
    try {
      return nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      ZT_FAIL("config file {} is not valid JSON: {}", path, e.what());
    }
  }
  try {
    std::istringstream is(text);
    cpptoml::parser p(is);
    return toml_to_json(*p.parse(), path);
  } catch (const cpptoml::parse_exception& e) {
    ZT_FAIL("config file {} is not valid TOML: {}", path, e.what());
  }
}

/// CPUs this process may run on (respects Slurm cpusets / cgroups, unlike hardware_concurrency).
int usable_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1, int(std::thread::hardware_concurrency()));
}

int local_rank_count() {
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local);
  int n = 1;
  MPI_Comm_size(local, &n);
  MPI_Comm_free(&local);
  return n;
}

int run(int argc, char** argv, int rank) {
  CLI::App app{"zerotrain: ZeRO-sharded GPT-2 training on CPUs and GPUs, with parallel HDF5 checkpoints"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("zerotrain ") + ZT_VERSION);

  CLI::App* train = app.add_subcommand("train", "Train a GPT-2 family model (run under mpirun for several ranks)");
  std::vector<Override> overrides;
  TrainConfig d;
  std::string preset = "tiny", config_file;
  train->add_option("--preset", preset, "Model preset: tiny, small, gpt2, gpt2-medium, gpt2-large, gpt2-xl")
      ->default_str("tiny");
  train->add_option("--config", config_file, "TOML or JSON file with any of these flags' keys (flags win)");
  add_override(*train, overrides, "--n_layer", &ModelConfig::n_layer, "Transformer blocks (overrides the preset)", 0);
  add_override(*train, overrides, "--n_head", &ModelConfig::n_head, "Attention heads", 0);
  add_override(*train, overrides, "--d_model", &ModelConfig::d_model, "Model width", 0);
  add_override(*train, overrides, "--vocab", &ModelConfig::vocab, "Vocabulary size (padded to a multiple of 128)", 0);
  add_override(*train, overrides, "--seq_len", &ModelConfig::seq_len, "Sequence length", 0);
  add_override(*train, overrides, "--data", &TrainConfig::data,
               "'synthetic' (built-in corpus), a text file (bytes), or a glob of llm.c .bin token shards", d.data);
  add_override(*train, overrides, "--val_data", &TrainConfig::val_data,
               "Validation data (same forms as --data); default: hold out --val_fraction of --data", d.val_data);
  add_override(*train, overrides, "--val_fraction", &TrainConfig::val_fraction,
               "Share of sequences held out for validation", d.val_fraction);
  add_override(*train, overrides, "--micro_batch_size", &TrainConfig::micro_batch_size,
               "Sequences per rank per micro-step", d.micro_batch_size);
  add_override(*train, overrides, "--global_batch_size", &TrainConfig::global_batch_size,
               "Sequences per optimizer step across all ranks (gradient accumulation fills the rest)",
               d.global_batch_size);
  add_override(*train, overrides, "--max_steps", &TrainConfig::max_steps, "Optimizer steps to run", d.max_steps);
  add_override(*train, overrides, "--learning_rate", &TrainConfig::learning_rate, "Peak learning rate",
               d.learning_rate);
  add_override(*train, overrides, "--warmup_steps", &TrainConfig::warmup_steps, "Linear warmup steps", d.warmup_steps);
  add_override(*train, overrides, "--min_lr_ratio", &TrainConfig::min_lr_ratio,
               "Cosine decay floor as a fraction of the peak LR", d.min_lr_ratio);
  add_override(*train, overrides, "--weight_decay", &TrainConfig::weight_decay,
               "AdamW decoupled weight decay (2-D tensors only)", d.weight_decay);
  add_override(*train, overrides, "--beta1", &TrainConfig::beta1, "AdamW beta1", d.beta1);
  add_override(*train, overrides, "--beta2", &TrainConfig::beta2, "AdamW beta2", d.beta2);
  add_override(*train, overrides, "--adam_eps", &TrainConfig::adam_eps, "AdamW epsilon", d.adam_eps);
  add_override(*train, overrides, "--grad_clip", &TrainConfig::grad_clip, "Global grad-norm clip (0 disables)",
               d.grad_clip);
  add_override(*train, overrides, "--seed", &TrainConfig::seed, "Seed for initialisation and data order", d.seed);
  add_override(*train, overrides, "--output_dir", &TrainConfig::output_dir,
               "Directory for metrics.jsonl and checkpoints", d.output_dir);
  add_override(*train, overrides, "--log_interval", &TrainConfig::log_interval, "Steps between progress lines",
               d.log_interval);
  add_override(*train, overrides, "--eval_interval", &TrainConfig::eval_interval,
               "Steps between validation passes (0: never)", d.eval_interval);
  add_override(*train, overrides, "--eval_batches", &TrainConfig::eval_batches, "Global batches per validation pass",
               d.eval_batches);
  add_override(*train, overrides, "--zero_stage", &TrainConfig::zero_stage,
               "ZeRO stage: 0 replicated, 1 +optimizer sharded, 2 +gradients, 3 +parameters", d.zero_stage);
  add_override(*train, overrides, "--threads", &TrainConfig::threads,
               "CPU threads per rank (0: cores / ranks on the node)", d.threads);
  add_override(*train, overrides, "--device", &TrainConfig::device,
               "cpu, cuda, or auto (cuda when every rank sees a GPU); GPU = local rank mod the node's GPUs", d.device);
  add_override(*train, overrides, "--dtype", &TrainConfig::dtype,
               "Matmul precision on cuda: bf16 (fp32 accumulation; fp32 master weights and Adam state) or fp32; "
               "auto: bf16 on cuda, fp32 on cpu (the CPU computes in fp32 only)",
               d.dtype);
  add_override(*train, overrides, "--comm", &TrainConfig::comm,
               "Collectives on cuda: nccl (one GPU per rank), mpi (staged through pinned host memory; ranks may share "
               "a GPU), or auto (nccl when every rank has its own GPU and NCCL loads, else mpi)",
               d.comm);
  add_override(*train, overrides, "--save_interval", &TrainConfig::save_interval,
               "Save a checkpoint every N steps and at the end (0: never)", d.save_interval);
  add_override(*train, overrides, "--save_total_limit", &TrainConfig::save_total_limit,
               "Keep only the newest K committed checkpoints (never the one `latest` names; 0: keep all)",
               d.save_total_limit);
  add_override(*train, overrides, "--async_save", &TrainConfig::async_save,
               "Write checkpoints in the background; the step blocks only for the copy to host memory", d.async_save);
  add_override(*train, overrides, "--exit_after_steps", &TrainConfig::exit_after_steps,
               "Stop after N steps of this run, saving a checkpoint first (time-sliced jobs; 0: off)",
               d.exit_after_steps);
  add_override(*train, overrides, "--profile_steps", &TrainConfig::profile_steps,
               "Time every op of N steps (after this run's first) and print where a step's time goes (rank 0)",
               d.profile_steps);
  add_override(
      *train, overrides, "--resume_from_checkpoint", &TrainConfig::resume_from_checkpoint,
      "Resume from a checkpoint directory, or 'latest' (newest committed in --output_dir; fresh start if none)",
      d.resume_from_checkpoint);
  add_override(*train, overrides, "--init_from", &TrainConfig::init_from,
               "Start from pretrained parameters (step 0, fresh optimizer): an llm.c model file, a Hugging Face "
               "directory (model.safetensors + config.json) or a checkpoint directory; the model shape comes from it",
               d.init_from);
  add_override(*train, overrides, "--sample_interval", &TrainConfig::sample_interval,
               "Log a short generated sample from rank 0 every N steps (0: never)", d.sample_interval);
  zt::RunOptions run_opts;
  train->add_option("--debug_dump_dir", run_opts.debug_dump_dir,
                    "Debug: write initial params, batches, per-step gradients and params here (cross-checks)");
  train->add_flag("--quiet", run_opts.quiet, "No progress lines");

  CLI::App* devices = app.add_subcommand("devices", "List the CUDA devices this process sees and whether NCCL loads");

  CLI::App* ckpt = app.add_subcommand("ckpt", "Inspect or verify a checkpoint directory");
  ckpt->require_subcommand(1);
  std::string ckpt_path;
  bool inspect_json = false;
  CLI::App* inspect = ckpt->add_subcommand("inspect", "Print a checkpoint's manifest summary (or all of it)");
  inspect->add_option("path", ckpt_path, "Checkpoint directory (OUTPUT/checkpoint-<step>)")->required();
  inspect->add_flag("--json", inspect_json, "Print the whole manifest as JSON");
  CLI::App* verify = ckpt->add_subcommand("verify", "Check structure and every checksum; exit 1 on any problem");
  verify->add_option("path", ckpt_path, "Checkpoint directory (OUTPUT/checkpoint-<step>)")->required();
  zt::ModelCommands model_cmds;
  zt::add_model_commands(app, model_cmds);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (rank == 0) return app.exit(e);
    return e.get_exit_code();
  }

  if (*devices) {
    if (rank == 0) fmt::print("{}", zt::describe_devices());
    return 0;
  }
  if (*inspect) {
    if (rank != 0) return 0;
    const nlohmann::json m = zt::read_manifest(ckpt_path);
    if (inspect_json) {
      fmt::print("{}\n", m.dump(1));
      return 0;
    }
    fmt::print(
        "checkpoint {}\nformat version {} (zerotrain {})\nstep {} | tokens seen {} | data cursor {} | "
        "last lr {}\nsaved by {} rank(s) at ZeRO stage {} | Adam step {}\nmodel {}\ntrain {}\n",
        ckpt_path, m.value("format_version", -1), m.value("zerotrain_version", "?"), m.value("step", -1),
        m.value("tokens_seen", -1), m["data"].value("cursor", -1), m["lr_schedule"].value("last_lr", 0.0),
        m.value("world_size", -1), m.value("zero_stage", -1), m["optimizer"].value("step", -1), m["model"].dump(),
        m["train"].dump());
    fmt::print("{} datasets:\n", m["datasets"].size());
    for (auto it = m["datasets"].begin(); it != m["datasets"].end(); ++it)
      fmt::print("  {:<40} shape {:<14} xxh64 {}\n", it.key(), it.value()["shape"].dump(),
                 it.value()["xxh64"].get<std::string>());
    return 0;
  }
  if (*verify) {
    zt::MpiComm comm(MPI_COMM_WORLD);
    const std::vector<std::string> problems = zt::verify_checkpoint(ckpt_path, comm);
    if (rank == 0) {
      for (const auto& p : problems) fmt::print(stderr, "zerotrain: verify: {}\n", p);
      if (problems.empty())
        fmt::print("{}: OK (structure and every checksum)\n", ckpt_path);
      else
        fmt::print(stderr, "{}: {} problem(s)\n", ckpt_path, problems.size());
    }
    return problems.empty() ? 0 : 1;
  }
  if (const int rc = zt::run_model_command(model_cmds, rank); rc >= 0) return rc;
  if (*train) {
    // Precedence: flags > config file > preset. The preset is --preset, else the file's "preset", else tiny.
    nlohmann::json file = config_file.empty() ? nlohmann::json::object() : read_config_file(config_file);
    ZT_CHECK(file.is_object(), "config file {} must hold a table of keys", config_file);
    const bool preset_flag = train->get_option("--preset")->count() > 0;
    if (!preset_flag && file.contains("preset")) {
      ZT_CHECK(file["preset"].is_string(), "config file {}: 'preset' must be a string", config_file);
      preset = file["preset"].get<std::string>();
    }
    const bool preset_given = preset_flag || file.contains("preset");
    file.erase("preset");
    ModelConfig m = zt::model_preset(preset);
    TrainConfig t;
    zt::update_from_json(file, m, t);
    for (auto& o : overrides)
      if (o.opt->count() > 0) o.apply(m, t);
    if (!t.init_from.empty()) {
      // The model file gives the architecture; whatever else names a model field must agree with it.
      std::vector<std::pair<std::string, std::string>> asked;
      for (const char* f : {"n_layer", "n_head", "d_model", "vocab", "seq_len"}) {
        if (train->get_option(std::string("--") + f)->count() > 0)
          asked.emplace_back(f, std::string("--") + f);
        else if (file.contains(f))
          asked.emplace_back(f, "config file " + config_file);
        else if (preset_given)
          asked.emplace_back(f, "--preset " + preset);
      }
      m = zt::model_for_init_from(t.init_from, m, asked);
    }
    zt::RunDevice run_device = zt::make_run_device(t, zt::resolve_threads(t.threads));
    if (rank == 0 && !run_opts.quiet) {
      fmt::print("device {}\n", run_device.description);
      std::fflush(stdout);
    }
    const zt::TrainSummary summary = zt::train(m, t, *run_device.comm, *run_device.backend, run_opts);
    if (summary.preempted) return zt::kExitRequeue;
  }
  return 0;
}

}  // namespace

int zt::resolve_threads(int requested) {
  if (requested > 0) return requested;
  // Ranks pinned to their own CPUs (Slurm) see only those; unpinned ranks share the node's CPUs.
  const int cpus = usable_cpus();
  const int hw = std::max(1, int(std::thread::hardware_concurrency()));
  return cpus < hw ? cpus : std::max(1, hw / local_rank_count());
}

int main(int argc, char** argv) {
  int provided = 0;
  // Before anything slow: a preemption signal during start-up must be recorded, not kill the rank.
  zt::install_preemption_handlers();
  // Open MPI's MPI-IO: ROMIO by default (docs/performance.md, "OMPIO or ROMIO"): as fast as OMPIO on a quiet machine,
  // steadier under CPU contention, and clear of OMPIO's history of bugs under HDF5. A user's OMPI_MCA_io still wins.
  setenv("OMPI_MCA_io", "romio321", /*overwrite=*/0);
  // MULTIPLE: --async_save writes checkpoints from a second thread on its own communicator.
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  zt::set_error_context(rank, size);
  int rc = 0;
  try {
    rc = run(argc, argv, rank);
  } catch (const zt::DiskFullError& e) {
    // Agreed by every rank before anything was written: a clean, distinct exit.
    std::fprintf(stderr, "zerotrain: error: %s\n", e.what());
    MPI_Finalize();
    return zt::kExitSaveFailed;
  } catch (const zt::CheckpointWriteError& e) {
    if (!e.agreed() || rank == 0) std::fprintf(stderr, "zerotrain: error: %s\n", e.what());
    std::fflush(stderr);
    if (size > 1) MPI_Abort(MPI_COMM_WORLD, zt::kExitSaveFailed);
    MPI_Finalize();
    return zt::kExitSaveFailed;
  } catch (const std::exception& e) {
    // One rank's failure ends the whole job: the others may be blocked in a collective.
    std::fprintf(stderr, "zerotrain: error: %s\n", e.what());
    std::fflush(stderr);
    if (size > 1) MPI_Abort(MPI_COMM_WORLD, 2);
    MPI_Finalize();
    return 2;
  }
  MPI_Finalize();
  return rc;
}
