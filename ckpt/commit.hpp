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
/// The manifest of a save: configs, progress, partition table and per-dataset chunk digests.
nlohmann::json build_manifest(const ModelConfig& model, const TrainConfig& train, const TrainProgress& progress,
                              ZeroEngine& engine, int world_size,
                              const std::vector<std::vector<uint64_t>>& chunk_digests);

}  // namespace zt
