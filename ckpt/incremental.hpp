// Incremental saves: which tensors are unchanged since the base checkpoint (decided from the chunk digests), the
// links that stand in for them, and what the manifest records. docs/checkpoint-format.md, section 9.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "ckpt/checkpoint.hpp"

namespace zt {

/// What one save compares with; the same on every rank.
struct IncrementalPlan {
  bool enabled = false;  ///< --incremental_checkpoints: the manifest records `incremental`
  bool compare = false;  ///< a usable base: unchanged tensors become links (false: every tensor is written)
  std::string base;      ///< the base's directory name ("checkpoint-4")
  int64_t base_saves_since_full = 0;
  int full_interval = 0;
  std::vector<std::vector<uint64_t>> base_chunks;  ///< per dataset (checkpoint_dataset_names order)
  /// Per dataset: the link file name of the checkpoint that holds the base's bytes ("": it must be written).
  std::vector<std::string> targets;
};

/// Rank 0 reads the base (its manifest, its links, whether the files it links to exist) and every rank receives the
/// plan. A base that cannot be used (unreadable, outside output_dir, the checkpoint being replaced) makes a full
/// save, with a warning saying why; so does --full_checkpoint_interval. `stateless`: the save's tensors without Adam
/// state (ShardSnapshot::stateless), whose optim datasets are neither written nor linked. Collective.
IncrementalPlan plan_incremental(const IncrementalPolicy& policy, const std::string& output_dir,
                                 const std::string& name, const ParamTable& table, const std::vector<bool>& stateless,
                                 MpiComm& comm);

/// Per dataset, the link file name when every chunk of the tensor equals the base's, on every rank; "" when it is
/// written. Each rank digests the chunks that start in its pieces (`frag`: the tails of its last chunks, received
/// from higher ranks), on n_threads threads, and stops at a tensor's first changed chunk. Collective.
std::vector<std::string> unchanged_links(const IncrementalPlan& plan, const ShardSnapshot& snap,
                                         const std::vector<std::vector<float>>& frag, int n_threads, MpiComm& comm);

/// Records an incremental save in its manifest: `link` on each linked dataset, and the `incremental` object. Returns
/// the one-line summary rank 0 prints.
std::string record_incremental(nlohmann::json& manifest, const IncrementalPlan& plan,
                               const std::vector<std::string>& names, const std::vector<std::string>& links);

namespace detail {
/// The digest of checksum chunk `c` of dataset `d`, which starts in this rank's piece; its tail past the piece comes
/// from `frag`. `scratch` is reused.
uint64_t own_chunk_digest(const ShardSnapshot& snap, size_t d, size_t c, const std::vector<float>& frag,
                          std::vector<float>& scratch);
/// The manifest's chunk digests of dataset `name` (of `numel` elements), checked against its xxh64; "" or the problem.
std::string manifest_chunks(const nlohmann::json& manifest, const std::string& name, size_t numel,
                            std::vector<uint64_t>& out);
}  // namespace detail

}  // namespace zt
