// main() of the zerotrain CLI: MPI setup, flags (CLI11) and config files, subcommands, job-wide error handling.
#include <mpi.h>

#include <CLI/CLI.hpp>

#include <sched.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>

#include "ckpt/checkpoint.hpp"
#include "core/backend.hpp"
#include "core/config.hpp"
#include "core/errors.hpp"
#include "launch/config_cli.hpp"
#include "launch/device_select.hpp"
#include "launch/metrics_log.hpp"
#include "launch/model_commands.hpp"
#include "launch/preempt.hpp"
#include "launch/session.hpp"
#include "sharding/comm_mpi.hpp"

namespace {

/// CPUs this process may run on (respects Slurm cpusets / cgroups, unlike hardware_concurrency).
int usable_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1, int(std::thread::hardware_concurrency()));
}

int local_rank_count() {
  MPI_Comm local = MPI_COMM_NULL;
  ZT_MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local));
  int n = 1;
  const int rc_size = MPI_Comm_size(local, &n);
  ZT_MPI_CHECK(MPI_Comm_free(&local));
  ZT_MPI_CHECK(rc_size);
  return n;
}

/// `zerotrain train`: its flags (one per config field, registered by zt::TrainFlags) and the run options.
struct TrainCommand {
  CLI::App* app = nullptr;
  std::unique_ptr<zt::TrainFlags> flags;
  zt::RunOptions run_opts;
};

void add_train_command(CLI::App& app, TrainCommand& cmd) {
  cmd.app = app.add_subcommand("train", "Train a GPT-2 family model (run under mpirun for several ranks)");
  cmd.flags = std::make_unique<zt::TrainFlags>(*cmd.app);
  cmd.app->add_option("--debug_dump_dir", cmd.run_opts.debug_dump_dir,
                      "Debug: write initial params, batches, per-step gradients and params here (cross-checks)");
  cmd.app->add_flag("--quiet", cmd.run_opts.quiet, "No progress lines");
}

/// `zerotrain ckpt inspect|verify PATH`, `zerotrain ckpt consolidate PATH -o OUT`.
struct CkptCommand {
  CLI::App* inspect = nullptr;
  CLI::App* verify = nullptr;
  CLI::App* consolidate = nullptr;
  std::string path, out;
  bool json = false;
};

void add_ckpt_command(CLI::App& app, CkptCommand& cmd) {
  CLI::App* ckpt = app.add_subcommand("ckpt", "Inspect, verify or consolidate a checkpoint directory");
  ckpt->require_subcommand(1);
  cmd.inspect = ckpt->add_subcommand("inspect", "Print a checkpoint's manifest summary (or all of it)");
  cmd.inspect->add_option("path", cmd.path, "Checkpoint directory (OUTPUT/checkpoint-<step>)")->required();
  cmd.inspect->add_flag("--json", cmd.json, "Print the whole manifest as JSON");
  cmd.verify = ckpt->add_subcommand("verify", "Check structure and every checksum; exit 1 on any problem");
  cmd.verify->add_option("path", cmd.path, "Checkpoint directory (OUTPUT/checkpoint-<step>)")->required();
  cmd.consolidate = ckpt->add_subcommand(
      "consolidate", "Write a standalone copy of a checkpoint: every tensor stored, none linked to another checkpoint");
  cmd.consolidate->add_option("path", cmd.path, "Checkpoint directory (OUTPUT/checkpoint-<step>)")->required();
  cmd.consolidate->add_option("-o,--output", cmd.out, "New checkpoint directory to write (must not exist)")->required();
}

int inspect_checkpoint(const CkptCommand& cmd, int rank) {
  if (rank != 0) return 0;
  const nlohmann::json m = zt::read_manifest(cmd.path);
  if (cmd.json) {
    fmt::print("{}\n", m.dump(1));
    return 0;
  }
  fmt::print(
      "checkpoint {}\nformat version {} (zerotrain {})\nstep {} | tokens seen {} | data cursor {} | "
      "last lr {}\nsaved by {} rank(s) at ZeRO stage {} | Adam step {}\nmodel {}\ntrain {}\n",
      cmd.path, m.value("format_version", -1), m.value("zerotrain_version", "?"), m.value("step", -1),
      m.value("tokens_seen", -1), m["data"].value("cursor", -1), m["lr_schedule"].value("last_lr", 0.0),
      m.value("world_size", -1), m.value("zero_stage", -1), m["optimizer"].value("step", -1), m["model"].dump(),
      m["train"].dump());
  const nlohmann::json frozen = m["train"].value("freeze", nlohmann::json::array());
  // From format version 3 the frozen tensors' optim/ datasets are absent (optimizer.frozen names them); before, zeros.
  const nlohmann::json stateless = m["optimizer"].value("frozen", nlohmann::json());
  if (frozen.is_array() && !frozen.empty())
    fmt::print("frozen (--freeze): {} (no gradients, no Adam state: {})\n",
               fmt::join(frozen.get<std::vector<std::string>>(), ","),
               stateless.is_array() ? fmt::format("{} tensor(s) without optim/ datasets", stateless.size())
                                    : std::string("their optim/ datasets hold zeros"));
  if (m.contains("incremental"))
    fmt::print("incremental: {} save(s) since a full one; links to {}\n", m["incremental"].value("saves_since_full", 0),
               m["incremental"].value("links_to", nlohmann::json()).dump());
  fmt::print("{} datasets:\n", m["datasets"].size());
  for (auto it = m["datasets"].begin(); it != m["datasets"].end(); ++it) {
    const std::string link = it.value().value("link", std::string());
    fmt::print("  {:<40} shape {:<14} xxh64 {}{}\n", it.key(), it.value()["shape"].dump(),
               it.value()["xxh64"].get<std::string>(), link.empty() ? "" : " -> " + link);
  }
  return 0;
}

int consolidate_checkpoint(const CkptCommand& cmd, int rank) {
  zt::MpiComm comm(MPI_COMM_WORLD);
  zt::consolidate_checkpoint(cmd.path, cmd.out, comm);
  if (rank == 0) fmt::print("{}: a standalone copy of {} (every tensor stored, digests checked)\n", cmd.out, cmd.path);
  return 0;
}

int verify_checkpoint(const CkptCommand& cmd, int rank) {
  zt::MpiComm comm(MPI_COMM_WORLD);
  const std::vector<std::string> problems = zt::verify_checkpoint(cmd.path, comm);
  if (rank == 0) {
    for (const auto& p : problems) fmt::print(stderr, "zerotrain: verify: {}\n", p);
    if (problems.empty())
      fmt::print("{}: OK (structure and every checksum); {}\n", cmd.path,
                 zt::read_manifest(cmd.path).value("format_version", 0) == 1
                     ? "format version 1 has no manifest digest, so the manifest's own fields are unchecked"
                     : "the manifest matches its digest");
    else
      fmt::print(stderr, "{}: {} problem(s)\n", cmd.path, problems.size());
  }
  return problems.empty() ? 0 : 1;
}

int train_command(TrainCommand& cmd, int rank) {
  const zt::TrainSettings settings = cmd.flags->settings();  // flags > config file > preset > defaults
  // Host MPI for agreement and checkpoint I/O, beside the device's comm for ZeRO's collectives.
  zt::MpiComm control(MPI_COMM_WORLD);
  const bool quiet = cmd.run_opts.quiet;
  auto make_device = [rank, quiet](zt::TrainConfig& t) {
    zt::RunDevice device = zt::make_run_device(t, zt::resolve_threads(t.threads));
    if (rank == 0 && !quiet) {
      fmt::print("device {}\n", device.description);
      std::fflush(stdout);
    }
    return device;
  };
  const zt::TrainSummary summary = zt::run_train(settings, control, make_device, cmd.run_opts);
  return summary.preempted ? zt::kExitRequeue : 0;
}

int run(int argc, char** argv, int rank) {
  CLI::App app{"zerotrain: ZeRO-sharded GPT-2 training on CPUs and GPUs, with parallel HDF5 checkpoints"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("zerotrain ") + ZT_VERSION);
  TrainCommand train;
  add_train_command(app, train);
  CLI::App* devices = app.add_subcommand("devices", "List the CUDA devices this process sees and whether NCCL loads");
  CkptCommand ckpt;
  add_ckpt_command(app, ckpt);
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
  if (*ckpt.inspect) return inspect_checkpoint(ckpt, rank);
  if (*ckpt.verify) return verify_checkpoint(ckpt, rank);
  if (*ckpt.consolidate) return consolidate_checkpoint(ckpt, rank);
  if (const int rc = zt::run_model_command(model_cmds, rank); rc >= 0) return rc;
  if (*train.app) return train_command(train, rank);
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
  if (MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) {
    std::fprintf(stderr, "zerotrain: error: MPI_Init_thread failed\n");
    return 2;
  }
  int rank = 0, size = 1;
  if (MPI_Comm_rank(MPI_COMM_WORLD, &rank) != MPI_SUCCESS || MPI_Comm_size(MPI_COMM_WORLD, &size) != MPI_SUCCESS) {
    std::fprintf(stderr, "zerotrain: error: MPI_Comm_rank or MPI_Comm_size failed on MPI_COMM_WORLD\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
    return 2;
  }
  zt::set_error_context(rank, size);
  int rc = 0;
  try {
    rc = run(argc, argv, rank);
  } catch (const zt::DiskFullError& e) {
    // Agreed by every rank before anything was written: a clean, distinct exit, reported once.
    if (rank == 0) std::fprintf(stderr, "zerotrain: error: %s\n", e.what());
    MPI_Finalize();
    return zt::kExitSaveFailed;
  } catch (const zt::CheckpointWriteError& e) {
    // Agreed: every rank holds the same message, and rank 0's report is the one.
    zt::report_fatal_error(e.what(), /*print=*/!e.agreed() || rank == 0);
    if (size > 1) MPI_Abort(MPI_COMM_WORLD, zt::kExitSaveFailed);
    MPI_Finalize();
    return zt::kExitSaveFailed;
  } catch (const zt::MetricsWriteError& e) {
    // Only rank 0 writes metrics.jsonl; the others wait in a collective.
    zt::report_fatal_error(e.what());
    if (size > 1) MPI_Abort(MPI_COMM_WORLD, zt::kExitSaveFailed);
    MPI_Finalize();
    return zt::kExitSaveFailed;
  } catch (const std::exception& e) {
    // One rank's failure ends the whole job: the others may be blocked in a collective.
    zt::report_fatal_error(e.what());
    if (size > 1) MPI_Abort(MPI_COMM_WORLD, 2);
    MPI_Finalize();
    return 2;
  }
  MPI_Finalize();
  return rc;
}
