// `zerotrain ckpt consolidate`: a standalone copy of a checkpoint, every tensor stored (no links), copied chunk by
// chunk through the source's links and checked against its digests on the way.
#include <filesystem>

#include "ckpt/checkpoint.hpp"
#include "ckpt/ckpt_detail.hpp"
#include "ckpt/commit.hpp"
#include "ckpt/h5.hpp"
#include "ckpt/links.hpp"
#include "sharding/comm_mpi.hpp"

namespace zt {
namespace fs = std::filesystem;

namespace {

std::string trimmed(std::string dir) {
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return dir;
}

/// The source's manifest for a standalone copy: nothing in it links any more.
nlohmann::json standalone_manifest(nlohmann::json m) {
  for (auto it = m["datasets"].begin(); it != m["datasets"].end(); ++it) it.value().erase("link");
  if (m.contains("incremental") && m["incremental"].is_object()) {
    m["incremental"]["base"] = "";
    m["incremental"]["saves_since_full"] = 0;
    m["incremental"]["links_to"] = nlohmann::json::array();
  }
  return m;
}

/// Rank 0: model.h5 and manifest.json durable, then the temporary directory renamed to out_dir, as a save commits
/// (without `latest`: the copy belongs to no run). "" or the problem.
std::string commit_copy(const std::string& tmp_dir, const std::string& out_dir, const std::string& manifest_text) {
  std::string err = fsync_path(tmp_dir + "/" + kCheckpointFile, false);
  if (err.empty()) err = write_file_synced(tmp_dir + "/manifest.json", manifest_text + "\n");
  if (err.empty()) err = fsync_path(tmp_dir, true);
  if (!err.empty()) return err;
  std::error_code ec;
  if (fs::exists(out_dir, ec)) return fmt::format("{} appeared while consolidating: not replaced", out_dir);
  fs::rename(tmp_dir, out_dir, ec);
  if (ec) return fmt::format("cannot rename {} to {}: {}", tmp_dir, out_dir, ec.message());
  return fsync_path(fs::path(out_dir).parent_path().string(), true);
}

/// Copies every chunk of the source's tensors into `file` (datasets created here, collectively); returns every
/// rank's problems on every rank.
std::vector<std::string> copy_tensors(const std::string& src, const nlohmann::json& manifest, const ParamTable& table,
                                      hid_t file, MpiComm& comm) {
  const std::vector<std::string> names = checkpoint_dataset_names(table);
  std::vector<haddr_t> offsets;
  // A frozen tensor without Adam state stays without: the copy keeps the manifest's optimizer.frozen.
  std::vector<H5Id> dsets = detail::create_datasets(file, table, names, std::vector<std::string>(names.size()),
                                                    manifest_stateless(manifest, table, src), offsets);
  H5Id dxpl(H5Pcreate(H5P_DATASET_XFER), H5Pclose);
  ZT_H5_CHECK(H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_INDEPENDENT));
  const size_t n_t = table.tensors().size();
  std::vector<std::string> problems;
  // One chunk in memory per rank at a time: each rank writes the chunks it read and checked.
  auto write = [&](size_t d, size_t c0, const std::vector<float>& values) {
    const TensorSpec& t = table.tensors()[d % n_t];
    H5Id fspace(H5Dget_space(dsets[d]), H5Sclose);
    detail::select_range(fspace, t.shape, c0, c0 + values.size());
    const hsize_t count = values.size();
    H5Id mspace(H5Screate_simple(1, &count, nullptr), H5Sclose);
    if (H5Dwrite(dsets[d], H5T_NATIVE_FLOAT, mspace, fspace, dxpl, values.data()) < 0)
      problems.push_back(fmt::format("writing {} failed: {} [{}]", names[d], h5_error_stack(), where()));
  };
  for (std::string& p : detail::visit_chunks(src, manifest, table, comm, write)) problems.push_back(std::move(p));
  for (H5Id& ds : dsets) ZT_H5_CHECK(ds.reset());
  return detail::all_problems(problems, comm);
}

}  // namespace

void consolidate_checkpoint(const std::string& src_dir, const std::string& out_dir_in, MpiComm& comm) {
  const int rank = comm.rank();
  const std::string src = trimmed(src_dir), out_dir = trimmed(out_dir_in);
  const fs::path out(out_dir);
  const std::string parent = out.has_parent_path() ? out.parent_path().string() : std::string(".");
  const std::string tmp_dir = (fs::path(parent) / ("." + out.filename().string() + ".tmp")).string();
  nlohmann::json manifest;
  ModelConfig model;
  TrainConfig train;
  std::string err;
  try {
    manifest = read_manifest(src);
    check_format_version(manifest, src + "/" + kCheckpointFile);
    configs_from_manifest(manifest, model, train);
    std::error_code ec;
    ZT_CHECK(!fs::exists(out, ec), "{} already exists: give -o a new directory (consolidate replaces nothing)",
             out_dir);
    if (rank == 0) err = prepare_temp_dir(parent, tmp_dir);
  } catch (const Error& e) {
    err = e.what();
  }
  err = detail::agree_error(comm, err);
  if (!err.empty()) throw CheckpointError(err);

  const ParamTable table(model);
  const std::string text = standalone_manifest(manifest).dump(1);
  std::vector<std::string> problems;
  {
    H5Id file = detail::open_parallel(tmp_dir + "/" + kCheckpointFile, comm, true);
    problems = copy_tensors(src, manifest, table, file, comm);
    H5Id dxpl = detail::shard_transfer_props();
    detail::write_string_dataset(file, "manifest", text, rank, dxpl);
    detail::write_string_dataset(file, kManifestDigestDataset, manifest_digest(text), rank, dxpl);
    ZT_H5_CHECK(file.reset());
  }
  if (problems.empty() && rank == 0) err = commit_copy(tmp_dir, out_dir, text);
  err = detail::agree_error(comm, err);
  if (!problems.empty() || !err.empty()) {
    std::error_code ec;
    if (rank == 0) fs::remove_all(tmp_dir, ec);
    std::string what = err;
    for (size_t i = 0; i < problems.size() && i < 8; ++i) what += (what.empty() ? "" : "\n") + problems[i];
    if (problems.size() > 8) what += fmt::format("\n... and {} more problems", problems.size() - 8);
    throw CheckpointError(
        fmt::format("consolidating {} into {} failed (nothing written there):\n{}", src, out_dir, what));
  }
}

}  // namespace zt
