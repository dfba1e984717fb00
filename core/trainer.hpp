// The training loop: data slices per rank and micro-step, ZeRO engine step, LR schedule, logging, metrics.jsonl.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "core/config.hpp"

namespace zt {

class Comm;

/// What a finished run reports (identical on every rank).
struct TrainSummary {
  int steps_done = 0;
  double first_loss = 0, last_loss = 0, last_val_loss = -1;
  std::vector<double> losses;          ///< training loss of every step
  std::vector<float> final_params;     ///< logical parameters in table order (when RunOptions::collect_params)
  std::vector<uint64_t> bytes_sent;    ///< bytes this rank sent in each step
  std::vector<double> comm_wait_s;     ///< seconds this rank waited on communication in each step
  bool preempted = false;              ///< stopped after a SIGTERM/SIGUSR1 with a checkpoint saved
  std::vector<double> save_blocked_s;  ///< per checkpoint: seconds the training loop was blocked by the save
};

/// Options that are not part of the saved training configuration.
struct RunOptions {
  std::string debug_dump_dir;   ///< when set: initial params, batches, per-step grads and params (for cross-checks)
  bool quiet = false;           ///< no progress lines (tests)
  bool collect_params = false;  ///< gather the final parameters into TrainSummary::final_params (collective)
};

/// Runs `train.max_steps` optimizer steps of `model` on `comm`'s ranks with `backend`.
TrainSummary train(const ModelConfig& model, const TrainConfig& train, Comm& comm, Backend& backend,
                   const RunOptions& opts);

}  // namespace zt
