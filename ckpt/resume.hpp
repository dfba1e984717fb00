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
/// One more than the highest commit_seq among output_dir's committed checkpoints (1 when there are none), so that a
/// new save outranks every one of them. A checkpoint whose manifest inside model.h5 cannot be read (damaged, or a
/// passing read error) still counts, by the commit_seq of its manifest.json: numbering too high is harmless, too low
/// would let it outrank this run's saves once it reads again. When neither reads, `problem` names the checkpoint
/// and the number must not be used.
int64_t next_commit_seq(const std::string& output_dir, std::string& problem);

/// A checkpoint a resume may take its configuration (zt::resume_config) and state from, with its manifest.
struct ResumeSource {
  std::string path;  ///< "" when there is none
  nlohmann::json manifest;
  std::string problem;  ///< why the manifest cannot be read ("" when it was)
};
/// Rank 0 reads the manifest of `path` (read_manifest); every rank gets the same ResumeSource. Collective.
ResumeSource read_resume_source(const std::string& path, MpiComm& comm);

/// This run's training config (already resolved against the checkpoint by zt::resume_config) fitted to this world
/// size: the global batch stays the saved one, and the micro-batch shrinks when it no longer divides over the new
/// world size. Throws zt::Error when the world size cannot hold the global batch. `warnings` receives one line per
/// adjustment.
TrainConfig adjust_for_resume(const TrainConfig& now, const nlohmann::json& manifest, int world_size,
                              std::vector<std::string>& warnings);

}  // namespace zt
