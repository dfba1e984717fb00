// The commit protocol (temporary directory, fsync, rename, fsync the parent, atomic `latest`) and the manifest.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "ckpt/checkpoint.hpp"

namespace zt {

/// Creates output_dir and an empty tmp_dir (removing a stale one). Returns an error message or "".
std::string prepare_temp_dir(const std::string& output_dir, const std::string& tmp_dir);
/// fsyncs the files in tmp_dir, writes manifest.json beside model.h5, renames tmp_dir to output_dir/name, fsyncs
/// output_dir, then replaces output_dir/latest atomically. Returns an error message or "".
std::string commit_checkpoint(const std::string& output_dir, const std::string& tmp_dir, const std::string& name,
                              const std::string& manifest_text);
/// Deletes committed checkpoints beyond the newest `keep`, never the one `latest` names. Logs what it removes.
void apply_retention(const std::string& output_dir, int keep);
/// Bytes free for an unprivileged writer on the file system holding `dir` (statvfs f_bavail).
uint64_t free_bytes(const std::string& dir);
/// The manifest of a save: configs, progress, partition table and per-dataset chunk digests.
nlohmann::json build_manifest(const ModelConfig& model, const TrainConfig& train, const TrainProgress& progress,
                              const ShardSnapshot& snap, int world_size,
                              const std::vector<std::vector<uint64_t>>& chunk_digests);

}  // namespace zt
