// Resume planning: which checkpoints to try, and how the saved run shape maps onto this run.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "core/config.hpp"

namespace zt {

class MpiComm;

/// Checkpoint directories to try, in order: for "latest" every committed checkpoint in output_dir as
/// checkpoints_by_commit orders them (possibly none); otherwise exactly `spec`. The same list on every rank (rank 0
/// lists, then broadcasts). Rank 0 prints a note naming each checkpoint with a later step but an earlier commit
/// (a run that a later run went back past) and a warning naming each one whose manifest cannot be read.
std::vector<std::string> resume_candidates(const std::string& spec, const std::string& output_dir, MpiComm& comm);
/// One more than the highest commit_seq among output_dir's readable committed checkpoints (1 when there are none).
int64_t next_commit_seq(const std::string& output_dir);

/// This run's training config adjusted to a saved run: the global batch stays what it was (the micro-batch shrinks
/// when it no longer divides over the new world size); throws zt::Error when the world size cannot hold it.
/// `warnings` receives one line per hyper-parameter that differs from the saved run, and per adjustment.
TrainConfig adjust_for_resume(const TrainConfig& now, const nlohmann::json& manifest, int world_size,
                              std::vector<std::string>& warnings);

}  // namespace zt
