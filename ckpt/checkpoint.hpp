// Parallel HDF5 checkpoints: every rank writes its own hyperslabs of named global tensors into one file, with a
// manifest, a chunked xxh64 checksum per tensor, and a rename-based commit. docs/checkpoint-format.md is the spec.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "core/errors.hpp"
#include "core/model.hpp"
#include "sharding/shard.hpp"

namespace zt {

class MpiComm;
class ZeroEngine;

/// Version of the on-disk layout written by this build; a reader refuses a newer one and reads every older one.
/// 2: the manifest's own digest (kManifestDigestDataset), and the external links of incremental checkpoints.
/// 3: tensors frozen by the writer have no optim/ datasets; the manifest's `optimizer.frozen` names them.
/// docs/checkpoint-format.md, section 7, keeps the history.
constexpr int kCheckpointFormatVersion = 3;
/// Dataset beside `manifest` holding the xxh64 of the manifest's bytes (16 lowercase hex digits); from version 2.
constexpr const char* kManifestDigestDataset = "manifest_xxh64";
/// Elements per checksum chunk (in a tensor's row-major order; independent of world size).
constexpr size_t kChecksumChunkElems = size_t(1) << 20;
/// File name of the HDF5 file inside a checkpoint directory.
constexpr const char* kCheckpointFile = "model.h5";

/// A checkpoint problem a user can act on (corrupt, incomplete, mismatched); `latest` skips such a checkpoint.
class CheckpointError : public Error {
 public:
  explicit CheckpointError(const std::string& what) : Error(what) {}
};

/// Training progress saved next to the tensors.
struct TrainProgress {
  int64_t step = 0;         ///< optimizer steps completed
  int64_t data_cursor = 0;  ///< index of the next global batch
  int64_t tokens_seen = 0;
  double lr = 0;  ///< learning rate of the last completed step
  /// Commit order within an output directory: one more than the highest of the directory's checkpoints when the
  /// run started, then +1 per save. Resuming from `latest` takes the highest, i.e. the most recent commit.
  int64_t commit_seq = 0;
};

/// What a resume restored (besides the engine's tensors).
struct LoadedCheckpoint {
  std::string path;
  TrainProgress progress;
  ModelConfig model;
  TrainConfig train;
  int world_size = 0, zero_stage = 0;
  nlohmann::json manifest;
};

/// This rank's part of the state to save: per tensor its logical element range [a, b) and the values of the
/// parameters and Adam m, v there (host memory), plus what the manifest records about the partition.
struct ShardSnapshot {
  struct TensorPiece {
    size_t a = 0, b = 0;
    const float* data[3] = {nullptr, nullptr, nullptr};
  };
  const ParamTable* table = nullptr;
  std::vector<PartLayout> parts;    ///< the writer's parts (how its ranks split each unit)
  std::vector<size_t> tensor_part;  ///< per tensor: the part holding it
  std::vector<TensorPiece> pieces;  ///< per tensor (a == b: nothing on this rank)
  /// Per tensor: frozen, so it has no Adam state and its optim datasets are not written (empty: none frozen).
  std::vector<bool> stateless;
  int64_t adam_step = 0;
  int zero_stage = 0;
  std::vector<float> storage;  ///< owns the values for a copied snapshot
};

/// Views the engine's owned slices in place (copies only when the backend's memory is not host memory). Valid
/// until the engine next changes.
ShardSnapshot snapshot_view(ZeroEngine& engine);
/// Copies the engine's owned slices to host memory the snapshot owns (what async save blocks on). `reuse` lends
/// the storage of an earlier snapshot: its pages are already mapped, so the copy does not pay for page faults.
ShardSnapshot snapshot_copy(ZeroEngine& engine, std::vector<float> reuse = {});

/// Thrown on every rank when the output file system lacks the space a checkpoint needs (nothing was written).
class DiskFullError : public CheckpointError {
 public:
  explicit DiskFullError(const std::string& what) : CheckpointError(what) {}
};
/// A save failed part way (I/O error, disk full mid-write); its temporary files were removed by this rank.
/// `agreed`: every rank threw the same error (a failed direct write is agreed before the ranks leave the save), so
/// one rank reporting it is enough; otherwise only the failing rank knows, and the others may wait in a collective.
class CheckpointWriteError : public Error {
 public:
  explicit CheckpointWriteError(const std::string& what, bool agreed = false) : Error(what), agreed_(agreed) {}
  bool agreed() const { return agreed_; }

 private:
  bool agreed_;
};

/// The dataset names of a table: params/<name>, optim/exp_avg/<name>, optim/exp_avg_sq/<name>, in that order per
/// kind, tensors in table order.
std::vector<std::string> checkpoint_dataset_names(const ParamTable& table);
/// Whether dataset `d` (checkpoint_dataset_names order) is absent from a file whose stateless tensors are
/// `stateless` (per tensor; empty: none): the optim datasets of a tensor without Adam state (format version 3).
inline bool dataset_absent(const std::vector<bool>& stateless, size_t d) {
  return !stateless.empty() && d >= stateless.size() && stateless[d % stateless.size()];
}
/// Per tensor of `table`: whether the manifest declares it without Adam state (`optimizer.frozen`, version 3; none in
/// versions 1-2); empty when it declares none. Readers take that state as zeros; any other missing dataset is
/// damage. Throws CheckpointError on a malformed list or a name that is not a tensor of the table.
std::vector<bool> manifest_stateless(const nlohmann::json& manifest, const ParamTable& table, const std::string& path);

/// Incremental saves (docs/checkpoint-format.md, section 9): a tensor whose every checksum chunk equals the base's
/// is not written but linked (an HDF5 external link) to the checkpoint that holds its bytes.
struct IncrementalPolicy {
  bool enabled = false;  ///< --incremental_checkpoints
  /// The checkpoint to compare with: the run's previous save, or the one it resumed. Used only when it is a
  /// committed checkpoint of the same output directory (links are relative); otherwise, and when empty, the save
  /// writes every tensor.
  std::string base;
  int full_interval = 0;  ///< --full_checkpoint_interval: every Nth save writes every tensor (0: only the first)
};

/// What --save_total_limit keeps after a save.
struct Retention {
  int keep = 0;  ///< the newest `keep` committed checkpoints by commit order (0: keep all)
  /// Names (`checkpoint-<step>`) of checkpoints this run found it could not load: damaged, or unreadable for now.
  /// They are neither counted among the kept nor removed, so a damaged newer one never pushes out an intact one.
  std::vector<std::string> unloadable;
};

/// Writes OUTPUT/checkpoint-<step>/ collectively (temporary name, fsync, rename, fsync dir, then OUTPUT/latest),
/// then applies `retention` (apply_retention; checkpoints that kept ones link to are kept too). Returns the committed
/// directory. Throws DiskFullError (agreed, nothing written) when space is short, CheckpointWriteError when a write
/// fails; a failed save never leaves a committed checkpoint and never touches the previous one or `latest`.
std::string save_checkpoint(const std::string& output_dir, const ModelConfig& model, const TrainConfig& train,
                            const TrainProgress& progress, const ShardSnapshot& snap, MpiComm& comm,
                            const Retention& retention = {}, const IncrementalPolicy& incremental = {});

/// Committed checkpoint directories in output_dir, newest step first.
std::vector<std::string> list_checkpoints(const std::string& output_dir);
/// A committed checkpoint as `latest` and retention order it.
struct CommittedCheckpoint {
  std::string path;
  int64_t step = 0;         ///< from the directory name
  int64_t commit_seq = -1;  ///< from the manifest in model.h5 (0: written before the field existed); -1: unreadable
  std::string problem;      ///< why the manifest could not be read (commit_seq == -1)
};
/// Committed checkpoints in output_dir, most recently committed first: readable ones by the commit_seq of the
/// authoritative manifest inside model.h5 (manifest.json is not consulted), highest first, ties newest step first;
/// then those whose manifest cannot be read, newest step first, so that one never outranks a readable checkpoint.
std::vector<CommittedCheckpoint> checkpoints_by_commit(const std::string& output_dir);
/// The directory OUTPUT/latest names, or "" when there is none.
std::string read_latest(const std::string& output_dir);

/// Reads the manifest inside a checkpoint's model.h5 (independent, any rank) and checks it against its digest
/// (kManifestDigestDataset) when the file has one; a file of a version that requires the digest but lacks it is
/// refused. Version 1 has no digest: its manifest is taken as it is. Throws CheckpointError.
nlohmann::json read_manifest(const std::string& ckpt_dir);
/// The digest stored for manifest bytes `text`: xxh64 (seed 0) as 16 lowercase hex digits.
std::string manifest_digest(const std::string& text);
/// Throws zt::Error unless this build reads the manifest's format_version (a newer one: "upgrade zerotrain").
void check_format_version(const nlohmann::json& manifest, const std::string& path);
/// The model and training configs a manifest records. Keys this build does not know are ignored: a writer may add
/// manifest fields without bumping the format version (docs/checkpoint-format.md, "Versions").
void configs_from_manifest(const nlohmann::json& manifest, ModelConfig& model, TrainConfig& train);

/// Loads a checkpoint written with any world size and stage into `engine` (this run's world size and stage):
/// each rank reads exactly its own new slice and verifies the checksums of the chunks that start in it. Errors
/// are agreed across ranks (every rank throws the same CheckpointError). Collective.
LoadedCheckpoint load_checkpoint(const std::string& ckpt_dir, const ModelConfig& model, ZeroEngine& engine,
                                 MpiComm& comm);

/// Checks structure and every checksum (chunks spread over the ranks); returns the problems found (the same list
/// on every rank; empty when the checkpoint is sound). Collective.
std::vector<std::string> verify_checkpoint(const std::string& ckpt_dir, MpiComm& comm);

/// Writes a standalone copy of checkpoint `src_dir` (every tensor stored, no links) to the new directory `out_dir`,
/// which must not exist: the same tensors and manifest (less what links), checked against the source's digests
/// while copying, one checksum chunk at a time per rank. Written under a temporary name beside out_dir and renamed
/// into place, as a save commits. Throws CheckpointError (agreed) on any problem, leaving nothing at out_dir.
/// Collective.
void consolidate_checkpoint(const std::string& src_dir, const std::string& out_dir, MpiComm& comm);

/// The xxh64 of one chunk's bytes, and the tensor checksum over its chunk digests (little-endian u64 array).
uint64_t chunk_digest(const float* data, size_t n_elems);
uint64_t tensor_checksum(const std::vector<uint64_t>& chunk_digests);
/// Splits newline-terminated lines (the form in which ranks exchange lists of paths and problems).
std::vector<std::string> split_lines(const std::string& text);
/// 16 lowercase hex digits.
std::string hex64(uint64_t v);

}  // namespace zt
