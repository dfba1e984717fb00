// Resume planning: candidate checkpoints, the one whose configuration a resume takes, and the saved global batch on
// a new world size.
#include "ckpt/resume.hpp"

#include <algorithm>
#include <climits>
#include <cstdint>

#include "ckpt/checkpoint.hpp"
#include "sharding/comm_mpi.hpp"

namespace zt {

std::vector<std::string> order_by_commit(const std::vector<std::string>& by_step, std::vector<std::string>* notes) {
  // Unreadable manifests sort first: loading them fails with a warning that names the problem, as for any broken
  // newest checkpoint. Ties (checkpoints from before commit_seq existed: 0) keep the step order.
  std::vector<std::pair<int64_t, std::string>> keyed;
  for (const auto& c : by_step) {
    const int64_t seq = read_commit_seq(c);
    keyed.emplace_back(seq < 0 ? INT64_MAX : seq, c);
  }
  std::stable_sort(keyed.begin(), keyed.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<std::string> out;
  for (auto& k : keyed) out.push_back(k.second);
  if (notes && !out.empty() && out.front() != by_step.front())
    for (const auto& c : by_step) {
      if (c == out.front()) break;
      notes->push_back(
          fmt::format("{} has a later step than {} but was committed before it (by a run that a later "
                      "run went back past): not resumed",
                      c, out.front()));
    }
  return out;
}

namespace {

// Rank 0's text on every rank.
std::string broadcast_text(std::string text, MpiComm& comm) {
  uint64_t len = text.size();
  comm.broadcast(&len, sizeof(len), 0);
  text.resize(len);
  comm.broadcast(text.data(), len, 0);
  return text;
}

std::vector<std::string> candidates_on_rank0(const std::string& spec, const std::string& output_dir,
                                             std::vector<std::string>* notes) {
  if (spec != "latest") return {spec};
  return order_by_commit(list_checkpoints(output_dir), notes);
}

}  // namespace

std::vector<std::string> resume_candidates(const std::string& spec, const std::string& output_dir, MpiComm& comm) {
  if (spec != "latest") return {spec};
  std::string joined;
  if (comm.rank() == 0) {
    std::vector<std::string> notes;
    for (const auto& c : candidates_on_rank0(spec, output_dir, &notes)) joined += c + "\n";
    for (const auto& n : notes) fmt::print(stderr, "zerotrain: note: {}\n", n);
  }
  return split_lines(broadcast_text(joined, comm));
}

ResumeSource resume_source(const std::string& spec, const std::string& output_dir, MpiComm& comm) {
  std::string found;  // "path\nmanifest"
  if (comm.rank() == 0)
    for (const auto& c : candidates_on_rank0(spec, output_dir, nullptr)) {
      try {
        found = c + "\n" + read_manifest(c).dump();
        break;
      } catch (const Error&) {
        // Unreadable: the load skips it (latest) or reports it (a path), as without this look-ahead.
      }
    }
  found = broadcast_text(found, comm);
  if (found.empty()) return {};
  const size_t nl = found.find('\n');
  return {found.substr(0, nl), nlohmann::json::parse(found.substr(nl + 1))};
}

int64_t next_commit_seq(const std::string& output_dir) {
  int64_t top = 0;
  for (const auto& c : list_checkpoints(output_dir)) top = std::max(top, read_commit_seq(c));
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
