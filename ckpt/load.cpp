// Checkpoint load (re-partitioning to this run's world size and stage) and verification.
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <memory>

#include "ckpt/checkpoint.hpp"
#include "ckpt/ckpt_detail.hpp"
#include "ckpt/commit.hpp"
#include "ckpt/direct_read.hpp"
#include "ckpt/h5.hpp"
#include "ckpt/incremental.hpp"
#include "ckpt/links.hpp"
#include "sharding/comm_mpi.hpp"
#include "sharding/shard.hpp"
#include "sharding/zero_engine.hpp"

namespace zt {
namespace fs = std::filesystem;

std::string detail::manifest_chunks(const nlohmann::json& manifest, const std::string& name, size_t numel,
                                    std::vector<uint64_t>& out) {
  const auto& ds = manifest["datasets"];
  if (!ds.contains(name)) return fmt::format("the manifest has no entry for dataset {}", name);
  const auto& e = ds[name];
  if (!e.contains("chunks") || !e["chunks"].is_array() || !e.contains("xxh64"))
    return fmt::format("the manifest entry of {} lacks chunks or xxh64", name);
  const size_t K = kChecksumChunkElems;
  if (e["chunks"].size() != (numel + K - 1) / K)
    return fmt::format("the manifest lists {} checksum chunks for {} but its {} elements need {}", e["chunks"].size(),
                       name, numel, (numel + K - 1) / K);
  out.clear();
  for (const auto& c : e["chunks"]) out.push_back(std::stoull(c.get<std::string>(), nullptr, 16));
  if (hex64(tensor_checksum(out)) != e["xxh64"].get<std::string>())
    return fmt::format("the manifest's xxh64 of {} does not match its chunk digests (manifest corrupt)", name);
  return std::string();
}

std::vector<bool> manifest_stateless(const nlohmann::json& manifest, const ParamTable& table, const std::string& path) {
  const nlohmann::json& opt = manifest.contains("optimizer") ? manifest["optimizer"] : nlohmann::json();
  if (!opt.is_object() || !opt.contains("frozen")) return {};  // versions 1-2: every tensor has its optim datasets
  const nlohmann::json& listed = opt["frozen"];
  if (!listed.is_array())
    throw CheckpointError(fmt::format("checkpoint {}: the manifest's optimizer.frozen is not a list", path));
  std::vector<bool> stateless(table.tensors().size(), false);
  for (const nlohmann::json& name : listed) {
    const auto& ts = table.tensors();
    const auto it = std::find_if(ts.begin(), ts.end(), [&](const TensorSpec& t) { return name == t.name; });
    if (it == ts.end())
      throw CheckpointError(fmt::format(
          "checkpoint {}: the manifest's optimizer.frozen names {}, not a tensor of the model", path, name.dump()));
    stateless[size_t(it - ts.begin())] = true;
  }
  if (std::find(stateless.begin(), stateless.end(), true) == stateless.end()) return {};
  return stateless;
}

namespace {

using detail::manifest_chunks;

/// Opens a dataset, wherever its bytes are (LinkedFile), and checks its shape; "" or the problem.
std::string open_checked(LinkedFile& file, const std::string& name, const std::vector<int64_t>& shape,
                         LinkedFile::Found& found) {
  std::string problem = file.open(name, found);
  // Only optimizer.frozen makes an optim dataset optional (callers skip those): any other absence is damage.
  if (name.rfind("optim/", 0) == 0 && problem == fmt::format("dataset {} is missing", name))
    problem += fmt::format(" (its tensor {} has Adam state: the manifest's optimizer.frozen does not name it)",
                           name.substr(name.rfind('/') + 1));
  if (!problem.empty()) return problem;
  H5Id space(H5Dget_space(found.dset), H5Sclose);
  const int nd = H5Sget_simple_extent_ndims(space);
  std::vector<hsize_t> dims(size_t(std::max(nd, 0)));
  if (nd > 0) H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  if (std::vector<int64_t>(dims.begin(), dims.end()) != shape)
    return fmt::format("dataset {} has shape [{}], expected [{}]", name, fmt::join(dims, ", "), fmt::join(shape, ", "));
  return std::string();
}

/// The byte offset in the file (user block included) of a dataset's data when it can be read as raw bytes: contiguous
/// layout, allocated, float32 little-endian, all `numel` elements stored; else HADDR_UNDEF. Depends only on the
/// file, so every rank decides the same.
haddr_t contiguous_f32le_offset(hid_t dset, size_t numel) {
  H5Id dcpl(H5Dget_create_plist(dset), H5Pclose);
  H5Id type(H5Dget_type(dset), H5Tclose);
  if (dcpl.get() < 0 || type.get() < 0 || H5Pget_layout(dcpl) != H5D_CONTIGUOUS || H5Pget_external_count(dcpl) != 0 ||
      H5Tequal(type, H5T_IEEE_F32LE) <= 0 || H5Dget_storage_size(dset) != numel * sizeof(float))
    return HADDR_UNDEF;
  return H5Dget_offset(dset);
}

/// Reader threads per node, shared by its ranks (a virtio disk on the 2-core VM of docs/performance.md read fastest
/// with 8 x 4 MiB outstanding: 4 ranks x 2 readers took 0.9-1.0 s cold, 4 x 4 took 1.6-1.7 s).
constexpr int kReadersPerNode = 8;

/// read_slices into the engine's shards: directly where the backend's memory is host memory; otherwise through a
/// host staging buffer, in batches of at most kStagingElems elements (slices cut at checksum-chunk boundaries, so
/// every chunk is still verified whole), each batch then copied to the device.
std::vector<LoadProblem> read_into_engine(const std::string& path, const std::vector<SliceRead>& reads, int n_threads,
                                          Backend& backend) {
  if (backend.host_memory()) return read_slices(path, reads, n_threads);
  constexpr size_t kStagingElems = size_t(64) << 20;  // 256 MiB
  const size_t K = kChecksumChunkElems;
  size_t total = 0;
  for (const SliceRead& r : reads) total += r.b - r.a;
  std::unique_ptr<float[]> staging(new float[std::max<size_t>(1, std::min(total, kStagingElems))]);
  std::vector<LoadProblem> problems;
  std::vector<SliceRead> batch;
  std::vector<float*> device_dst;
  size_t used = 0;
  auto flush = [&] {
    for (LoadProblem& p : read_slices(path, batch, n_threads)) problems.push_back(std::move(p));
    for (size_t i = 0; i < batch.size(); ++i) backend.from_host(device_dst[i], batch[i].dst, batch[i].b - batch[i].a);
    batch.clear();
    device_dst.clear();
    used = 0;
  };
  for (const SliceRead& r : reads) {
    for (size_t a = r.a; a < r.b;) {
      if (used + std::min(K, r.b - a) > kStagingElems) flush();
      // Up to the batch's room, ending on a chunk boundary (or at b).
      size_t b = r.b;
      if (b - a > kStagingElems - used) b = std::max((a + kStagingElems - used) / K * K, a / K * K + K);
      SliceRead piece = r;
      piece.a = a;
      piece.b = std::min(b, r.b);
      piece.dst = staging.get() + used;
      batch.push_back(std::move(piece));
      device_dst.push_back(r.dst + (a - r.a));
      used += batch.back().b - a;
      a = batch.back().b;
    }
  }
  flush();
  return problems;
}

/// This rank's new slice of every tensor under the engine's layout: [a, b) in the tensor's elements, and where the
/// parameters, Adam m and v of that range go.
struct ShardTargets {
  std::vector<size_t> a, b;
  std::vector<std::array<float*, 3>> dst;
};

ShardTargets shard_targets(ZeroEngine& engine) {
  const ParamTable& table = engine.table();
  const size_t n_t = table.tensors().size();
  ShardTargets out{std::vector<size_t>(n_t, 0), std::vector<size_t>(n_t, 0),
                   std::vector<std::array<float*, 3>>(n_t, {nullptr, nullptr, nullptr})};
  for (size_t p = 0; p < engine.n_parts(); ++p) {
    const ZeroEngine::OwnedSlice s = engine.owned_slice(p);
    for (const Piece& pc : engine.owned_pieces(p)) {
      out.a[size_t(pc.tensor)] = pc.tensor_offset;
      out.b[size_t(pc.tensor)] = pc.tensor_offset + pc.count;
      // A tensor without Adam state here (frozen now) reads none.
      out.dst[size_t(pc.tensor)] = {s.params + (pc.flat_offset - s.begin), engine.owned_moment(p, 0, pc.flat_offset),
                                    engine.owned_moment(p, 1, pc.flat_offset)};
    }
  }
  return out;
}

/// Reads elements [a, b) of a dataset through H5Dread (collective), extended to the end of the last checksum chunk
/// that starts in it, checks the digests of the chunks that start in it against `want`, and copies [a, b) to `dst`
/// (backend memory). `buf` is reused across calls. Returns the problems found.
std::vector<std::string> read_through_hdf5(hid_t dset, hid_t dxpl, const TensorSpec& t, size_t a, size_t b,
                                           const std::string& path, const std::string& name,
                                           const std::vector<uint64_t>& want, float* dst, Backend& backend,
                                           std::unique_ptr<float[]>& buf, size_t& buf_elems) {
  const size_t K = kChecksumChunkElems;
  size_t ext_b = b;
  if (a < b) {
    const size_t last_c = (b - 1) / K;
    if (last_c * K >= a) ext_b = std::min(t.numel(), (last_c + 1) * K);
  }
  if (std::max<size_t>(1, ext_b - a) > buf_elems) {
    buf_elems = std::max<size_t>(1, ext_b - a);
    buf.reset(new float[buf_elems]);
  }
  H5Id fspace(H5Dget_space(dset), H5Sclose);
  detail::select_range(fspace, t.shape, a, ext_b);
  const hsize_t count = ext_b - a, one = 1;
  H5Id mspace(H5Screate_simple(1, count ? &count : &one, nullptr), H5Sclose);
  if (!count) ZT_H5_CHECK(H5Sselect_none(mspace));
  if (H5Dread(dset, H5T_NATIVE_FLOAT, mspace, fspace, dxpl, buf.get()) < 0)
    return {fmt::format("checkpoint {}: reading {} failed: {}", path, name, h5_error_stack())};
  std::vector<std::string> problems;
  for (size_t c = (a + K - 1) / K; c * K < b; ++c) {
    const size_t c0 = c * K, c1 = std::min(t.numel(), c0 + K);
    const uint64_t got = chunk_digest(buf.get() + (c0 - a), c1 - c0);
    if (got != want[c]) problems.push_back(checksum_mismatch(path, name, c, c0, c1, got, want[c]));
  }
  if (a < b) backend.from_host(dst, buf.get(), b - a);
  return problems;
}

/// The first 8 problems, in dataset order, as one message ("" when there are none).
std::string summarize(std::vector<LoadProblem> problems) {
  std::stable_sort(problems.begin(), problems.end(),
                   [](const LoadProblem& x, const LoadProblem& y) { return x.dataset < y.dataset; });
  std::string out;
  for (size_t i = 0; i < problems.size() && i < 8; ++i) out += (i ? "\n" : "") + problems[i].text;
  if (problems.size() > 8) out += fmt::format("\n... and {} more problems", problems.size() - 8);
  return out;
}

/// What a manifest says about the run that saved it; throws zt::Error when it needs a newer zerotrain or was
/// written for another model.
LoadedCheckpoint loaded_from_manifest(const std::string& ckpt_dir, const nlohmann::json& manifest,
                                      const ModelConfig& model) {
  LoadedCheckpoint out;
  out.path = ckpt_dir;
  out.manifest = manifest;
  check_format_version(manifest, ckpt_dir + "/" + kCheckpointFile);
  configs_from_manifest(manifest, out.model, out.train);
  const std::vector<std::string> diffs = diff_model_config(out.model, model);
  ZT_CHECK(diffs.empty(),
           "checkpoint {} was written for a different model: {}; pass the same model flags (or "
           "--preset) as the run that saved it",
           ckpt_dir, fmt::join(diffs, "; "));
  out.world_size = manifest.value("world_size", 0);
  out.zero_stage = manifest.value("zero_stage", 0);
  out.progress.step = manifest.value("step", int64_t(0));
  out.progress.tokens_seen = manifest.value("tokens_seen", int64_t(0));
  out.progress.data_cursor = manifest["data"].value("cursor", int64_t(0));
  out.progress.lr = manifest["lr_schedule"].value("last_lr", 0.0);
  return out;
}

}  // namespace

void check_format_version(const nlohmann::json& manifest, const std::string& path) {
  const int version = manifest.value("format_version", -1);
  ZT_CHECK(version <= kCheckpointFormatVersion,
           "checkpoint {} has format version {}, written by zerotrain {}; this build ({}) reads versions 1..{}: "
           "upgrade zerotrain to resume it",
           path, version, manifest.value("zerotrain_version", "?"), ZT_VERSION, kCheckpointFormatVersion);
  ZT_CHECK(version >= 1, "checkpoint {} has no valid format_version ({}); this build reads versions 1..{}", path,
           manifest.contains("format_version") ? manifest["format_version"].dump() : "missing",
           kCheckpointFormatVersion);
}

void configs_from_manifest(const nlohmann::json& manifest, ModelConfig& model, TrainConfig& train) {
  auto known_only = [&](const char* key, const nlohmann::json& known) {
    nlohmann::json out = nlohmann::json::object();
    const nlohmann::json& j = manifest.contains(key) ? manifest[key] : out;
    if (j.is_object())
      for (auto it = j.begin(); it != j.end(); ++it)
        if (known.contains(it.key())) out[it.key()] = it.value();
    return out;
  };
  ModelConfig unused_model;
  TrainConfig unused_train;
  update_from_json(known_only("model", to_json(ModelConfig())), model, unused_train, "checkpoint manifest `model`: ");
  update_from_json(known_only("train", to_json(TrainConfig())), unused_model, train, "checkpoint manifest `train`: ");
}

LoadedCheckpoint load_checkpoint(const std::string& ckpt_dir, const ModelConfig& model, ZeroEngine& engine,
                                 MpiComm& comm) {
  const std::string path = ckpt_dir + "/" + kCheckpointFile;
  std::string base = ckpt_dir;
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  base = fs::path(base).filename().string();
  ZT_CHECK(classify_leftover(base, nullptr) == Leftover::kNone,
           "{} is not a committed checkpoint: a name starting with '.' is a save or a prune that did not finish "
           "(docs/checkpoint-format.md, section 1), and is never loaded",
           ckpt_dir);
  // Every rank reads the manifest itself; failures are agreed so all ranks throw the same error.
  nlohmann::json manifest;
  std::string err;
  try {
    manifest = read_manifest(ckpt_dir);
  } catch (const Error& e) {
    err = e.what();
  }
  err = detail::agree_error(comm, err);
  if (!err.empty()) throw CheckpointError(err);

  const LoadedCheckpoint out = loaded_from_manifest(ckpt_dir, manifest, model);
  const ParamTable& table = engine.table();
  const size_t n_t = table.tensors().size();
  const std::vector<std::string> names = checkpoint_dataset_names(table);
  std::vector<LoadProblem> problems;
  const ShardTargets targets = shard_targets(engine);
  // Tensors the writer kept no Adam state for (frozen there) have no optim datasets: their m and v load as zeros.
  const std::vector<bool> stateless = manifest_stateless(manifest, table, path);
  // Tensor bytes are read straight from the file (read_slices: several reads in flight, O_DIRECT, hashing on the
  // reader threads, no collective per dataset) wherever the dataset is what the format prescribes: contiguous
  // float32-LE. Under HDF5 the same bytes would move by independent MPI-IO reads anyway (shard_transfer_props);
  // what HDF5 adds per dataset is a collective file-view set-up, one synchronous read and a staging copy. Any
  // other dataset is read through H5Dread. Whether every rank can read a file itself is agreed, so the choice of
  // path per dataset stays collective. A linked tensor is read the same way from the file that holds it.
  std::map<std::string, bool> direct;                          // by file
  std::map<std::string, std::vector<SliceRead>> direct_reads;  // by file
  {
    LinkedFile file(ckpt_dir, comm);
    H5Id dxpl = detail::shard_transfer_props();
    // Uninitialised on purpose: H5Dread fills it, and a vector's resize would first zero every element it adds
    // (one extra pass over up to the whole model per load).
    std::unique_ptr<float[]> buf;
    size_t buf_elems = 0;
    std::vector<uint64_t> want;
    for (size_t d = 0; d < names.size(); ++d) {
      const size_t ti = d % n_t;
      const TensorSpec& t = table.tensors()[ti];
      float* dst = targets.dst[ti][d / n_t];
      if (dataset_absent(stateless, d)) {
        if (dst != nullptr) engine.backend().zero(dst, targets.b[ti] - targets.a[ti]);
        continue;
      }
      LinkedFile::Found found;
      // The structure is the same for every rank (same files), so skipping a broken dataset stays collective.
      std::string p = open_checked(file, names[d], t.shape, found);
      if (p.empty()) p = manifest_chunks(manifest, names[d], t.numel(), want);
      if (!p.empty()) {
        problems.push_back({d, fmt::format("checkpoint {}: {}", path, p)});
        continue;
      }
      // No destination (frozen Adam state): the rank still takes part in the collective read, of nothing.
      const size_t a = dst != nullptr ? targets.a[ti] : 0, b = dst != nullptr ? targets.b[ti] : 0;
      if (!direct.count(found.holder))
        direct[found.holder] = detail::all_ranks_posix_io(found.holder, R_OK, comm, true);
      const haddr_t at = direct[found.holder] ? contiguous_f32le_offset(found.dset, t.numel()) : HADDR_UNDEF;
      if (at != HADDR_UNDEF) {
        if (a < b) direct_reads[found.holder].push_back({d, names[d], uint64_t(at), t.numel(), a, b, dst, want});
        continue;
      }
      for (std::string& text : read_through_hdf5(found.dset, dxpl, t, a, b, path + LinkedFile::link_note(found),
                                                 names[d], want, dst, engine.backend(), buf, buf_elems))
        problems.push_back({d, std::move(text)});
    }
  }
  const int n_readers = detail::threads_per_rank(comm, kReadersPerNode);
  for (const auto& [holder, reads] : direct_reads)
    for (LoadProblem& p : read_into_engine(holder, reads, n_readers, engine.backend())) {
      if (holder != path) p.text += fmt::format(" (a tensor that {} links to)", path);
      problems.push_back(std::move(p));
    }
  err = detail::agree_error(comm, summarize(std::move(problems)));
  if (!err.empty()) throw CheckpointError(err);
  engine.finish_load(manifest["optimizer"].value("step", int64_t(0)));
  return out;
}

std::vector<std::string> verify_checkpoint(const std::string& ckpt_dir, MpiComm& comm) {
  const std::string path = ckpt_dir + "/" + kCheckpointFile;
  nlohmann::json manifest;
  std::string err;
  ModelConfig model;
  TrainConfig train;
  try {
    manifest = read_manifest(ckpt_dir);
    check_format_version(manifest, path);
    configs_from_manifest(manifest, model, train);
  } catch (const Error& e) {
    err = e.what();
  }
  err = detail::agree_error(comm, err);
  if (!err.empty()) return {err};
  ParamTable table(model);
  const std::vector<std::string> names = checkpoint_dataset_names(table);
  std::vector<std::string> problems;
  const auto& listed = manifest["datasets"];
  std::vector<bool> stateless;
  try {
    stateless = manifest_stateless(manifest, table, path);
  } catch (const Error& e) {
    return {e.what()};  // every rank reads the same manifest: the same answer everywhere
  }
  for (auto it = listed.begin(); it != listed.end(); ++it) {
    const auto at = std::find(names.begin(), names.end(), it.key());
    if (comm.rank() == 0 && at == names.end())
      problems.push_back(fmt::format("checkpoint {}: manifest lists unknown dataset {}", path, it.key()));
    else if (comm.rank() == 0 && dataset_absent(stateless, size_t(at - names.begin())))
      problems.push_back(fmt::format(
          "checkpoint {}: manifest lists dataset {} of a tensor its optimizer.frozen declares without Adam state", path,
          it.key()));
  }
  for (std::string& p : detail::visit_chunks(ckpt_dir, manifest, table, comm, nullptr))
    problems.push_back(std::move(p));
  return detail::all_problems(problems, comm);
}

std::vector<std::string> detail::visit_chunks(const std::string& ckpt_dir, const nlohmann::json& manifest,
                                              const ParamTable& table, MpiComm& comm, const ChunkVisitor& use) {
  const std::string path = ckpt_dir + "/" + kCheckpointFile;
  const std::vector<std::string> names = checkpoint_dataset_names(table);
  const size_t K = kChecksumChunkElems, n_t = table.tensors().size();
  const int rank = comm.rank(), N = comm.world_size();
  std::vector<std::string> problems;
  size_t chunk_counter = 0;
  try {
    const std::vector<bool> stateless = manifest_stateless(manifest, table, path);
    LinkedFile file(ckpt_dir, comm);
    H5Id dxpl(H5Pcreate(H5P_DATASET_XFER), H5Pclose);
    ZT_H5_CHECK(H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_INDEPENDENT));
    std::vector<float> buf;
    std::vector<uint64_t> want;
    for (size_t d = 0; d < names.size(); ++d) {
      const TensorSpec& t = table.tensors()[d % n_t];
      if (dataset_absent(stateless, d)) continue;  // declared absent (no Adam state): zeros, nothing to check
      LinkedFile::Found found;
      std::string p = open_checked(file, names[d], t.shape, found);
      if (p.empty()) p = manifest_chunks(manifest, names[d], t.numel(), want);
      const std::string listed = manifest["datasets"].contains(names[d])
                                     ? manifest["datasets"][names[d]].value("link", std::string())
                                     : std::string();
      if (p.empty() && listed != found.link)
        p = fmt::format("the manifest says dataset {} {}, but the file {}", names[d],
                        listed.empty() ? "is stored there" : "is a link to " + listed,
                        found.link.empty() ? "stores it" : "links it to " + found.link);
      if (!p.empty()) {
        if (rank == 0) problems.push_back(fmt::format("checkpoint {}: {}", path, p));
        continue;
      }
      const std::string where = path + LinkedFile::link_note(found);
      // Chunks are dealt round-robin over the ranks; each rank reads and hashes its own.
      for (size_t c = 0; c * K < t.numel(); ++c, ++chunk_counter) {
        if (int(chunk_counter % size_t(N)) != rank) continue;
        const size_t c0 = c * K, c1 = std::min(t.numel(), c0 + K);
        buf.resize(c1 - c0);
        H5Id fspace(H5Dget_space(found.dset), H5Sclose);
        detail::select_range(fspace, t.shape, c0, c1);
        const hsize_t count = c1 - c0;
        H5Id mspace(H5Screate_simple(1, &count, nullptr), H5Sclose);
        if (H5Dread(found.dset, H5T_NATIVE_FLOAT, mspace, fspace, dxpl, buf.data()) < 0) {
          problems.push_back(fmt::format("checkpoint {}: reading {} failed: {}", where, names[d], h5_error_stack()));
          continue;
        }
        const uint64_t got = chunk_digest(buf.data(), buf.size());
        if (got != want[c])
          problems.push_back(checksum_mismatch(where, names[d], c, c0, c1, got, want[c]));
        else if (use)
          use(d, c0, buf);
      }
    }
  } catch (const Error& e) {
    problems.push_back(e.what());
  }
  return problems;
}

std::vector<std::string> detail::all_problems(const std::vector<std::string>& problems, MpiComm& comm) {
  const int N = comm.world_size();
  // Everyone's problems, in rank order, on every rank.
  std::string local;
  for (const auto& p : problems) local += p + "\n";
  int len = int(local.size());
  std::vector<int> lens(size_t(N), 0), displs(size_t(N), 0);
  ZT_MPI_CHECK(MPI_Allgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, comm.mpi_comm()));
  int total = 0;
  for (int r = 0; r < N; ++r) {
    displs[size_t(r)] = total;
    total += lens[size_t(r)];
  }
  std::string all(size_t(total), '\0');
  ZT_MPI_CHECK(
      MPI_Allgatherv(local.data(), len, MPI_CHAR, all.data(), lens.data(), displs.data(), MPI_CHAR, comm.mpi_comm()));
  return split_lines(all);
}

}  // namespace zt
