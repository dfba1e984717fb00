// The commit protocol (temporary directory, fsync, rename, fsync the parent, atomic `latest`) and the manifest.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "ckpt/checkpoint.hpp"

namespace zt {

/// fsyncs a file or (directory = true) a directory, so that its contents or entries are on disk. Returns an error
/// message or "".
std::string fsync_path(const std::string& path, bool directory);
/// Writes `text` to `path` (created or truncated) and fsyncs it. Returns an error message or "".
std::string write_file_synced(const std::string& path, const std::string& text);
/// Creates output_dir and an empty tmp_dir (removing a stale one). Returns an error message or "".
std::string prepare_temp_dir(const std::string& output_dir, const std::string& tmp_dir);
/// fsyncs the files in tmp_dir, writes manifest.json beside model.h5, renames tmp_dir to output_dir/name, fsyncs
/// output_dir, then replaces output_dir/latest atomically. Returns an error message or "".
std::string commit_checkpoint(const std::string& output_dir, const std::string& tmp_dir, const std::string& name,
                              const std::string& manifest_text);
/// Deletes committed checkpoints beyond the newest `keep` by commit order (checkpoints_by_commit, as `latest`
/// resumes), never the one `latest` names nor one whose manifest cannot be read, each by renaming it to
/// `.checkpoint-<step>.pruning` and then deleting that; first finishes such leftovers of an interrupted prune.
/// Checkpoints named in `unloadable` (`checkpoint-<step>`: a resume found them damaged or unreadable) are neither
/// counted nor removed. Logs what it removes.
void apply_retention(const std::string& output_dir, int keep, const std::vector<std::string>& unloadable = {});
/// What a dot-name in an output directory is left from (docs/checkpoint-format.md, section 1).
enum class Leftover {
  kNone,        ///< not one of the names below
  kSaveTemp,    ///< .checkpoint-<step>.tmp: a save in progress or one that died
  kMovedAside,  ///< .checkpoint-<step>.old: the previous copy of a step being saved again
  kPruning,     ///< .checkpoint-<step>.pruning: a checkpoint being deleted by retention
  kLatestTemp,  ///< .latest.tmp: `latest` being replaced
};
/// Classifies a file name in an output directory; `step` (if given) receives the step of a checkpoint leftover.
Leftover classify_leftover(const std::string& name, int64_t* step);
/// Bytes free for an unprivileged writer on the file system holding `dir` (statvfs f_bavail).
uint64_t free_bytes(const std::string& dir);
/// The manifest of a save: configs, progress, partition table and per-dataset chunk digests.
nlohmann::json build_manifest(const ModelConfig& model, const TrainConfig& train, const TrainProgress& progress,
                              const ShardSnapshot& snap, int world_size,
                              const std::vector<std::vector<uint64_t>>& chunk_digests);

}  // namespace zt
