// Resume planning: candidate checkpoints, the one whose configuration a resume takes, and the saved global batch on
// a new world size.
#include "ckpt/resume.hpp"

#include <algorithm>
#include <cstdint>
#include <fstream>

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

// Rank 0's text on every rank.
std::string broadcast_text(std::string text, MpiComm& comm) {
  uint64_t len = text.size();
  comm.broadcast(&len, sizeof(len), 0);
  text.resize(len);
  comm.broadcast(text.data(), len, 0);
  return text;
}

}  // namespace

std::vector<std::string> resume_candidates(const std::string& spec, const std::string& output_dir, MpiComm& comm) {
  if (spec != "latest") return {spec};
  std::string joined;
  if (comm.rank() == 0) joined = list_candidates(output_dir);
  return split_lines(broadcast_text(joined, comm));
}

ResumeSource read_resume_source(const std::string& path, MpiComm& comm) {
  std::string found;  // "0 manifest" or "1 problem"
  if (comm.rank() == 0) {
    try {
      found = "0" + read_manifest(path).dump();
    } catch (const Error& e) {
      found = std::string("1") + e.what();
    }
  }
  found = broadcast_text(found, comm);
  ResumeSource src;
  src.path = path;
  if (found[0] == '0')
    src.manifest = nlohmann::json::parse(found.substr(1));
  else
    src.problem = found.substr(1);
  return src;
}

namespace {

/// commit_seq of the informative manifest.json copy, or -1.
int64_t json_commit_seq(const std::string& ckpt_dir) {
  std::ifstream in(ckpt_dir + "/manifest.json");
  try {
    const nlohmann::json m = nlohmann::json::parse(in);
    const auto it = m.find("commit_seq");
    if (it == m.end()) return 0;
    return it->is_number_integer() ? std::max<int64_t>(it->get<int64_t>(), 0) : -1;
  } catch (const nlohmann::json::exception&) {
    return -1;
  }
}

}  // namespace

int64_t next_commit_seq(const std::string& output_dir, std::string& problem) {
  int64_t top = 0;
  for (const CommittedCheckpoint& c : checkpoints_by_commit(output_dir)) {
    int64_t seq = c.commit_seq;
    if (seq < 0) seq = json_commit_seq(c.path);
    if (seq < 0 && problem.empty())
      problem = fmt::format(
          "cannot tell where {} stands in commit order: {}; and its manifest.json does not read either. A new "
          "checkpoint could be numbered below it and be passed over once it reads again: make it readable, or move "
          "it out of the output directory",
          c.path, c.problem);
    top = std::max(top, seq);
  }
  return top + 1;
}

TrainConfig adjust_for_resume(const TrainConfig& now, const nlohmann::json& manifest, int world_size,
                              std::vector<std::string>& warnings) {
  // Fields this build does not know are ignored here; load_checkpoint refuses a newer format_version by name.
  ModelConfig unused;
  TrainConfig saved;
  configs_from_manifest(manifest, unused, saved);
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
