// Tensors an incremental checkpoint leaves in earlier checkpoints: its HDF5 external links (relative, depth one) and
// reading a dataset wherever its bytes are. docs/checkpoint-format.md, section 3 ("Links"), is the rule.
#pragma once

#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ckpt/h5.hpp"

namespace zt {

class MpiComm;

/// The link file name a checkpoint stores for a tensor held by the sibling checkpoint `holder` (a directory name,
/// "checkpoint-2"): "../checkpoint-2/model.h5", relative to the linking file's directory.
std::string link_target(const std::string& holder);
/// The sibling checkpoint a link file name names ("checkpoint-2"), or "" when it is not of the form link_target
/// writes (the only form the format allows).
std::string link_holder(const std::string& target);

/// The external links among a checkpoint's tensor datasets (params/, optim/exp_avg/, optim/exp_avg_sq/): dataset
/// path -> link file name as stored. Opens model.h5 serially (any rank, no MPI). Throws CheckpointError when the
/// file cannot be opened.
std::map<std::string, std::string> read_links(const std::string& ckpt_dir);
/// The sibling checkpoints (directory names) a checkpoint links to; retention keeps them while it is kept.
std::set<std::string> linked_checkpoints(const std::string& ckpt_dir);

/// A checkpoint's model.h5 opened for reading through parallel HDF5 (collective), and the earlier checkpoints' files
/// its links lead to, each opened (collectively) when first needed. HDF5 never follows a link by itself here: it
/// would also look for a missing target relative to the working directory and could find someone else's file.
class LinkedFile {
 public:
  /// Opens ckpt_dir/model.h5 on every rank of `comm`; throws CheckpointError when it cannot.
  LinkedFile(const std::string& ckpt_dir, MpiComm& comm);
  hid_t file() const { return file_.get(); }
  /// ckpt_dir/model.h5
  const std::string& path() const { return path_; }

  /// Where a tensor dataset is.
  struct Found {
    H5Id dset;           ///< the dataset, in the file that holds its bytes
    std::string holder;  ///< that file: path(), or the linked checkpoint's model.h5
    std::string link;    ///< the link file name as stored; "" when the dataset is stored in path()
  };
  /// Opens dataset `name`, following an external link of the allowed form to the dataset stored in the sibling
  /// checkpoint. Returns "" or the problem: missing dataset, a link of another form, a missing or unreadable linked
  /// file (naming the tensor and the file), a linked dataset that is missing or itself a link (links are depth
  /// one). Every rank must ask for the same names in the same order (a first use of a linked file opens it
  /// collectively).
  std::string open(const std::string& name, Found& out);
  /// " (a link to FILE)" for messages about a linked dataset's bytes; "" for a stored one.
  static std::string link_note(const Found& f);

 private:
  std::string dir_, path_;
  MpiComm& comm_;
  H5Id file_;
  std::map<std::string, H5Id> bases_;               ///< opened linked files, by path
  std::map<std::string, std::string> base_errors_;  ///< linked files that cannot be opened, by path
};

class ParamTable;

namespace detail {
/// Receives one checksum chunk that matched the manifest: dataset index, first element, the chunk's values.
using ChunkVisitor = std::function<void(size_t dataset, size_t c0, const std::vector<float>& values)>;
/// Reads every checksum chunk of every tensor of a checkpoint (through its links), chunks dealt round-robin over the
/// ranks, checks each against the manifest and hands the good ones to `use` (may be empty). Returns this rank's
/// problems (rank 0 reports those of structure). Collective.
std::vector<std::string> visit_chunks(const std::string& ckpt_dir, const nlohmann::json& manifest,
                                      const ParamTable& table, MpiComm& comm, const ChunkVisitor& use);
/// Every rank's problems, in rank order, on every rank. Collective.
std::vector<std::string> all_problems(const std::vector<std::string>& problems, MpiComm& comm);
}  // namespace detail

}  // namespace zt
