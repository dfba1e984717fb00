// The CLI's model subcommands: `zerotrain export`, `sample` and `eval`, over any model file zerotrain reads.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/config.hpp"
#include "launch/config_cli.hpp"

namespace zt {

/// CPU threads per rank for a requested count (0: the CPUs this rank may use, shared with the node's other ranks).
/// Collective over MPI_COMM_WORLD when `requested` is 0. Defined in launch/main.cpp.
int resolve_threads(int requested);

/// Model config for `train --init_from`: the model file's, checked against every model field the settings name
/// explicitly (a flag, a config-file key, or any --preset). Throws zt::Error naming the file and, for each field
/// that differs, both values and where each came from (the file's field; TrainSettings::sources).
ModelConfig model_for_init_from(const std::string& path, const TrainSettings& settings);

/// The flags of export, sample and eval, and what they were parsed into.
struct ModelCommands {
  CLI::App* export_cmd = nullptr;
  CLI::App* sample_cmd = nullptr;
  CLI::App* eval_cmd = nullptr;
  std::string model, format = "safetensors", dtype = "fp32", out, prompt, prompt_ids, tokenizer, json_out;
  int max_new_tokens = 64, top_k = 0, max_batches = 0;
  float temperature = 1.0f;
  uint64_t seed = 1337;
  bool print_ids = false, no_kv_cache = false;
  std::unique_ptr<FieldFlags> sample_fields;  ///< train's --device, --dtype, --threads
  std::unique_ptr<FieldFlags> eval_fields;    ///< train's data, batch, stage and device flags
};

/// Adds the three subcommands to `app`.
void add_model_commands(CLI::App& app, ModelCommands& cmds);
/// Runs the one that was given; returns its exit status, or -1 when none was.
int run_model_command(ModelCommands& cmds, int rank);

}  // namespace zt
