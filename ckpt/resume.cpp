// Resume planning: candidate checkpoints and the saved global batch on a new world size.
#include "ckpt/resume.hpp"

#include <algorithm>
#include <cstdint>

#include "ckpt/checkpoint.hpp"
#include "sharding/comm_mpi.hpp"

namespace zt {

namespace {

/// Rank 0's view of the candidates, with a note per checkpoint that a later run went back past and a warning per
/// checkpoint whose manifest cannot be read.
std::string list_candidates(const std::string& output_dir) {
  const std::vector<CommittedCheckpoint> all = checkpoints_by_commit(output_dir);
  std::string joined;
  for (const auto& c : all) joined += c.path + "\n";
  for (const auto& c : all) {
    if (c.commit_seq < 0)
      fmt::print(stderr,
                 "zerotrain: warning: skipping checkpoint {}: {} (it is tried again only after every checkpoint "
                 "whose manifest reads)\n",
                 c.path, c.problem);
    else if (c.step > all.front().step)
      fmt::print(stderr,
                 "zerotrain: note: {} has a later step than {} but was committed before it (by a run that a later "
                 "run went back past): not resumed\n",
                 c.path, all.front().path);
  }
  return joined;
}

}  // namespace

std::vector<std::string> resume_candidates(const std::string& spec, const std::string& output_dir, MpiComm& comm) {
  if (spec != "latest") return {spec};
  std::string joined;
  if (comm.rank() == 0) joined = list_candidates(output_dir);
  uint64_t len = joined.size();
  comm.broadcast(&len, sizeof(len), 0);
  joined.resize(len);
  comm.broadcast(joined.data(), len, 0);
  return split_lines(joined);
}

int64_t next_commit_seq(const std::string& output_dir) {
  const std::vector<CommittedCheckpoint> all = checkpoints_by_commit(output_dir);
  return all.empty() ? 1 : std::max<int64_t>(all.front().commit_seq, 0) + 1;
}

TrainConfig adjust_for_resume(const TrainConfig& now, const nlohmann::json& manifest, int world_size,
                              std::vector<std::string>& warnings) {
  // Fields this build does not know are ignored here; load_checkpoint refuses a newer format_version by name.
  ModelConfig unused;
  TrainConfig saved;
  configs_from_manifest(manifest, unused, saved);
  const nlohmann::json a = to_json(saved), b = to_json(now);
  for (const char* key :
       {"data", "val_data", "val_fraction", "global_batch_size", "max_steps", "learning_rate", "warmup_steps",
        "min_lr_ratio", "weight_decay", "beta1", "beta2", "adam_eps", "grad_clip", "seed"})
    if (a[key] != b[key] && !(key == std::string("global_batch_size") && now.global_batch_size == 0))  // 0: unset
      warnings.push_back(fmt::format("{}: {} in the checkpoint, {} now", key, a[key].dump(), b[key].dump()));
  TrainConfig out = now;
  const int G = saved.global_batch_size;
  out.global_batch_size = G;
  ZT_CHECK(G % world_size == 0,
           "the checkpoint's global batch of {} sequences cannot be split evenly over {} ranks; resume with a world "
           "size that divides {}",
           G, world_size, G);
  if (G % (out.micro_batch_size * world_size) != 0) {
    int mb = std::min(out.micro_batch_size, G / world_size);
    while ((G / world_size) % mb != 0) --mb;
    warnings.push_back(
        fmt::format("micro_batch_size adjusted from {} to {} so the global batch of {} splits over {} "
                    "ranks",
                    out.micro_batch_size, mb, G, world_size));
    out.micro_batch_size = mb;
  }
  return out;
}

}  // namespace zt
