// Incremental saves: the base's plan (rank 0), the scan for unchanged tensors, and the manifest's record of it.
#include "ckpt/incremental.hpp"

#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <map>
#include <set>

#include "ckpt/io_threads.hpp"
#include "ckpt/links.hpp"
#include "sharding/comm_mpi.hpp"

namespace zt {
namespace fs = std::filesystem;

namespace {

/// A checkpoint directory's name ("checkpoint-4") when it is one of output_dir's committed checkpoints, else "".
std::string sibling_name(const std::string& dir, const std::string& output_dir) {
  std::string d = dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  const fs::path p(d);
  const std::string n = p.filename().string();
  const std::string digits = n.rfind("checkpoint-", 0) == 0 ? n.substr(11) : std::string();
  if (digits.empty() || digits.size() > 18 || !std::all_of(digits.begin(), digits.end(), ::isdigit))
    return std::string();
  std::error_code ec;
  const fs::path parent = p.has_parent_path() ? p.parent_path() : fs::path(".");
  return fs::equivalent(parent, output_dir, ec) ? n : std::string();
}

/// The plan as rank 0 makes it; `why_full` receives the reason a base given cannot be compared with.
IncrementalPlan plan_on_rank0(const IncrementalPolicy& policy, const std::string& output_dir, const std::string& name,
                              const ParamTable& table, const std::vector<bool>& stateless, std::string& why_full) {
  IncrementalPlan plan;
  plan.enabled = true;
  plan.full_interval = policy.full_interval;
  if (policy.base.empty()) return plan;  // the run's first save: nothing to compare with
  plan.base = sibling_name(policy.base, output_dir);
  if (plan.base.empty()) {
    why_full = fmt::format("its base {} is not a checkpoint of --output_dir {}", policy.base, output_dir);
    return plan;
  }
  if (plan.base == name) {
    why_full = fmt::format("its base {} is the checkpoint this save replaces", policy.base);
    return plan;
  }
  nlohmann::json manifest;
  std::map<std::string, std::string> base_links;
  std::vector<bool> base_stateless;
  try {
    manifest = read_manifest(policy.base);
    check_format_version(manifest, policy.base);
    base_stateless = manifest_stateless(manifest, table, policy.base);
    base_links = read_links(policy.base);
  } catch (const Error& e) {
    why_full = fmt::format("its base cannot be read: {}", e.what());
    return plan;
  }
  const nlohmann::json inc = manifest.value("incremental", nlohmann::json::object());
  plan.base_saves_since_full = inc.is_object() ? inc.value("saves_since_full", int64_t(0)) : 0;
  if (policy.full_interval > 0 && plan.base_saves_since_full + 1 >= policy.full_interval) return plan;
  const std::vector<std::string> names = checkpoint_dataset_names(table);
  const size_t n_t = table.tensors().size();
  plan.base_chunks.resize(names.size());
  plan.targets.assign(names.size(), std::string());
  for (size_t d = 0; d < names.size(); ++d) {
    const TensorSpec& t = table.tensors()[d % n_t];
    // Not written now (frozen: no Adam state), or absent from the base (frozen there, trains now): nothing to link.
    if (dataset_absent(stateless, d) || dataset_absent(base_stateless, d)) continue;
    std::string problem = detail::manifest_chunks(manifest, names[d], t.numel(), plan.base_chunks[d]);
    if (problem.empty() && manifest["datasets"][names[d]].value("shape", nlohmann::json()) != nlohmann::json(t.shape))
      problem = fmt::format("dataset {} has another shape", names[d]);
    if (!problem.empty()) {
      why_full = fmt::format("its base {}: {}", policy.base, problem);
      return plan;
    }
    // Depth one: a tensor the base links to is linked to where its bytes are, not to the base.
    const auto l = base_links.find(names[d]);
    const std::string target = l != base_links.end() ? l->second : link_target(plan.base);
    const std::string holder = link_holder(target);
    std::error_code ec;
    if (!holder.empty() && holder != name && fs::is_regular_file(fs::path(output_dir) / holder / kCheckpointFile, ec))
      plan.targets[d] = target;
  }
  plan.compare = true;
  return plan;
}

nlohmann::json plan_to_json(const IncrementalPlan& p) {
  return {{"enabled", p.enabled},
          {"compare", p.compare},
          {"base", p.base},
          {"since", p.base_saves_since_full},
          {"interval", p.full_interval},
          {"chunks", p.base_chunks},
          {"targets", p.targets}};
}

IncrementalPlan plan_from_json(const nlohmann::json& j) {
  IncrementalPlan p;
  p.enabled = j.at("enabled").get<bool>();
  p.compare = j.at("compare").get<bool>();
  p.base = j.at("base").get<std::string>();
  p.base_saves_since_full = j.at("since").get<int64_t>();
  p.full_interval = j.at("interval").get<int>();
  p.base_chunks = j.at("chunks").get<std::vector<std::vector<uint64_t>>>();
  p.targets = j.at("targets").get<std::vector<std::string>>();
  return p;
}

}  // namespace

IncrementalPlan plan_incremental(const IncrementalPolicy& policy, const std::string& output_dir,
                                 const std::string& name, const ParamTable& table, const std::vector<bool>& stateless,
                                 MpiComm& comm) {
  if (!policy.enabled) return IncrementalPlan();
  std::string text;
  if (comm.rank() == 0) {
    std::string why_full;
    text = plan_to_json(plan_on_rank0(policy, output_dir, name, table, stateless, why_full)).dump();
    if (!why_full.empty())
      fmt::print(stderr, "zerotrain: warning: {} is written in full (--incremental_checkpoints): {}\n", name, why_full);
  }
  uint64_t len = text.size();
  comm.broadcast(&len, sizeof(len), 0);
  text.resize(len);
  comm.broadcast(text.data(), len, 0);
  return plan_from_json(nlohmann::json::parse(text));
}

std::vector<std::string> unchanged_links(const IncrementalPlan& plan, const ShardSnapshot& snap,
                                         const std::vector<std::vector<float>>& frag, int n_threads, MpiComm& comm) {
  const size_t n_d = plan.targets.size(), n_t = snap.table->tensors().size(), K = kChecksumChunkElems;
  // changed[d] != 0: this rank found a chunk of dataset d that differs from the base's (or d cannot be linked).
  std::vector<unsigned char> changed(n_d, 0);
  std::atomic<size_t> next{0};
  run_on_threads(n_threads, [&] {
    std::vector<float> scratch;
    for (size_t d = next.fetch_add(1); d < n_d; d = next.fetch_add(1)) {
      if (plan.targets[d].empty()) {
        changed[d] = 1;
        continue;
      }
      const ShardSnapshot::TensorPiece& p = snap.pieces[d % n_t];
      for (size_t c = (p.a + K - 1) / K; p.a < p.b && c * K < p.b; ++c)
        if (detail::own_chunk_digest(snap, d, c, frag[d], scratch) != plan.base_chunks[d][c]) {
          changed[d] = 1;  // the first changed chunk decides: the writers digest the rest
          break;
        }
    }
  });
  ZT_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, changed.data(), int(n_d), MPI_UNSIGNED_CHAR, MPI_MAX, comm.mpi_comm()));
  std::vector<std::string> links(n_d);
  for (size_t d = 0; d < n_d; ++d)
    if (!changed[d]) links[d] = plan.targets[d];
  return links;
}

std::string record_incremental(nlohmann::json& manifest, const IncrementalPlan& plan,
                               const std::vector<std::string>& names, const std::vector<std::string>& links) {
  std::set<std::string> holders;
  size_t n_linked = 0;
  for (size_t d = 0; d < links.size(); ++d) {
    if (links[d].empty()) continue;
    manifest["datasets"][names[d]]["link"] = links[d];
    holders.insert(link_holder(links[d]));
    ++n_linked;
  }
  // Only a checkpoint that links to others extends the chain; one that links to nothing is full.
  const bool any = n_linked > 0;
  manifest["incremental"] = {{"base", any ? plan.base : std::string()},
                             {"saves_since_full", any ? plan.base_saves_since_full + 1 : 0},
                             {"full_checkpoint_interval", plan.full_interval},
                             {"links_to", holders}};
  // Frozen tensors' absent optim datasets are neither written nor linked: the counts are of the file's datasets.
  const size_t n_datasets = manifest["datasets"].size();
  return any ? fmt::format("{} of {} tensors written, {} linked to {}", n_datasets - n_linked, n_datasets, n_linked,
                           fmt::join(holders, ", "))
             : fmt::format("all {} tensors written (a full checkpoint)", n_datasets);
}

}  // namespace zt
