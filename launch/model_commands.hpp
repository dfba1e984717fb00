// The CLI's model subcommands: `zerotrain export`, `sample` and `eval`, over any model file zerotrain reads.
#pragma once

#include <CLI/CLI.hpp>

#include <string>
#include <utility>
#include <vector>

#include "core/config.hpp"

namespace zt {

/// CPU threads per rank for a requested count (0: the CPUs this rank may use, shared with the node's other ranks).
/// Collective over MPI_COMM_WORLD when `requested` is 0. Defined in launch/main.cpp.
int resolve_threads(int requested);

/// Model config for `train --init_from`: the model file's, checked against every model field that flags, a config
/// file or a preset set explicitly (`explicit_fields`: field name and who set it, e.g. {"n_layer", "--preset
/// small"}; values in `asked`). Throws zt::Error naming the file and, for each field that differs, both values and
/// where each came from.
ModelConfig model_for_init_from(const std::string& path, const ModelConfig& asked,
                                const std::vector<std::pair<std::string, std::string>>& explicit_fields);

/// The flags of export, sample and eval, and what they were parsed into.
struct ModelCommands {
  CLI::App* export_cmd = nullptr;
  CLI::App* sample_cmd = nullptr;
  CLI::App* eval_cmd = nullptr;
  std::string model, format = "safetensors", dtype = "fp32", out, prompt, prompt_ids, tokenizer, data, json_out;
  int max_new_tokens = 64, top_k = 0, max_batches = 0, micro_batch_size = 4, global_batch_size = 0, seq_len = 0;
  int zero_stage = 0;
  float temperature = 1.0f;
  uint64_t seed = 1337;
  bool print_ids = false, no_kv_cache = false;
  double val_fraction = 0;
  TrainConfig device;  ///< --device, --dtype, --comm, --threads
};

/// Adds the three subcommands to `app`.
void add_model_commands(CLI::App& app, ModelCommands& cmds);
/// Runs the one that was given; returns its exit status, or -1 when none was.
int run_model_command(ModelCommands& cmds, int rank);

}  // namespace zt
