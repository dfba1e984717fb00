// Checkpoint save and load: collective hyperslab writes/reads of named global tensors, chunked checksums.
#include "ckpt/checkpoint.hpp"

#include <mpi.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <thread>

#include "ckpt/ckpt_detail.hpp"
#include "ckpt/commit.hpp"
#include "ckpt/direct_write.hpp"
#include "ckpt/h5.hpp"
#include "ckpt/incremental.hpp"
#include "core/test_hooks.hpp"
#include "sharding/comm_mpi.hpp"
#include "sharding/shard.hpp"
#include "sharding/zero_engine.hpp"

namespace zt {
namespace fs = std::filesystem;

uint64_t chunk_digest(const float* data, size_t n_elems) { return XXH64(data, n_elems * sizeof(float), 0); }

uint64_t tensor_checksum(const std::vector<uint64_t>& digests) {
  std::vector<unsigned char> bytes(digests.size() * 8);
  for (size_t i = 0; i < digests.size(); ++i)
    for (int b = 0; b < 8; ++b) bytes[i * 8 + size_t(b)] = static_cast<unsigned char>(digests[i] >> (8 * b));
  return XXH64(bytes.data(), bytes.size(), 0);
}

std::string hex64(uint64_t v) { return fmt::format("{:016x}", v); }

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at < text.size()) {
    const size_t nl = text.find('\n', at);
    out.push_back(text.substr(at, nl - at));
    if (nl == std::string::npos) break;
    at = nl + 1;
  }
  return out;
}

std::vector<std::string> checkpoint_dataset_names(const ParamTable& table) {
  std::vector<std::string> names;
  for (const char* kind : {"params/", "optim/exp_avg/", "optim/exp_avg_sq/"})
    for (const auto& t : table.tensors()) names.push_back(kind + t.name);
  return names;
}

using detail::agree_error;
using detail::select_range;
using detail::write_string_dataset;

namespace {

/// A write failure every rank knows of (agreed), so every rank leaves the save with it.
class AgreedWriteFailure : public CheckpointError {
 public:
  explicit AgreedWriteFailure(const std::string& what) : CheckpointError(what) {}
};

/// Writer threads per node, shared by its ranks (detail::threads_per_rank). On the 2-core VM of docs/performance.md
/// 8 was the fastest and steadiest of 1, 2, 4, 8 in standalone runs: 1.5 GB in 2.3-3.5 s with O_DIRECT, against
/// 2.3-5.1 s with 1-4 buffered writers.
constexpr int kWritersPerNode = 8;

/// Rank holding element `e` of tensor `ti` under the snapshot's layout.
int owner_of(const ShardSnapshot& snap, size_t ti, size_t e) {
  const PartLayout& P = snap.parts[snap.tensor_part[ti]];
  return int((snap.table->tensors()[ti].unit_offset - P.begin + e) / P.layout.shard_numel);
}

ShardSnapshot make_snapshot(ZeroEngine& engine, bool copy, std::vector<float> reuse) {
  const ParamTable& table = engine.table();
  ShardSnapshot snap;
  snap.table = &table;
  snap.adam_step = engine.adam_step();
  snap.zero_stage = engine.stage();
  snap.pieces.resize(table.tensors().size());
  for (size_t t = 0; t < table.tensors().size(); ++t)
    if (engine.frozen(int(t))) snap.stateless.resize(table.tensors().size()), snap.stateless[t] = true;
  copy = copy || !engine.backend().host_memory();
  size_t total = 0;
  std::vector<ZeroEngine::OwnedSlice> slices;
  snap.tensor_part.resize(table.tensors().size());
  for (size_t p = 0; p < engine.n_parts(); ++p) {
    const PartLayout& P = engine.part(p);
    snap.parts.push_back(P);
    for (int ti : table.units()[size_t(P.unit)].tensors) {
      const TensorSpec& t = table.tensors()[size_t(ti)];
      if (t.unit_offset >= P.begin && t.unit_offset < P.end) snap.tensor_part[size_t(ti)] = p;
    }
    slices.push_back(engine.owned_slice(p));
    total += slices.back().end - slices.back().begin;
  }
  if (copy) {
    snap.storage = std::move(reuse);
    snap.storage.resize(3 * total);
  }
  size_t at = 0;
  for (size_t p = 0; p < slices.size(); ++p) {
    const ZeroEngine::OwnedSlice& s = slices[p];
    const size_t n = s.end - s.begin;
    const float* params = s.params;
    if (copy) {
      engine.backend().to_host(snap.storage.data() + at, params, n);
      params = snap.storage.data() + at;
    }
    for (const Piece& pc : engine.owned_pieces(p)) {
      ShardSnapshot::TensorPiece& tp = snap.pieces[size_t(pc.tensor)];
      tp.a = pc.tensor_offset;
      tp.b = pc.tensor_offset + pc.count;
      tp.data[0] = params + (pc.flat_offset - s.begin);
      // Frozen tensors have no Adam state: their optim datasets are not written (format version 3).
      for (int k = 1; k < 3; ++k) {
        const float* moment = engine.owned_moment(p, k - 1, pc.flat_offset);
        ZT_ASSERT(moment != nullptr || (!snap.stateless.empty() && snap.stateless[size_t(pc.tensor)]));
        if (moment != nullptr && copy) {
          float* host = snap.storage.data() + at + size_t(k) * n + (pc.flat_offset - s.begin);
          engine.backend().to_host(host, moment, pc.count);
          moment = host;
        }
        tp.data[k] = moment;
      }
    }
    at += copy ? 3 * n : 0;
  }
  return snap;
}

}  // namespace

std::string save_prepared(const std::string& output_dir, const std::string& name, const std::string& tmp_dir,
                          const ModelConfig& model, const TrainConfig& train, const TrainProgress& progress,
                          const ShardSnapshot& snap, MpiComm& comm, const Retention& retention,
                          const IncrementalPolicy& incremental);

ShardSnapshot snapshot_view(ZeroEngine& engine) { return make_snapshot(engine, false, {}); }
ShardSnapshot snapshot_copy(ZeroEngine& engine, std::vector<float> reuse) {
  return make_snapshot(engine, true, std::move(reuse));
}

std::string save_checkpoint(const std::string& output_dir, const ModelConfig& model, const TrainConfig& train,
                            const TrainProgress& progress, const ShardSnapshot& snap, MpiComm& comm,
                            const Retention& retention, const IncrementalPolicy& incremental) {
  const ParamTable& table = *snap.table;
  const int rank = comm.rank();
  const std::string name = fmt::format("checkpoint-{}", progress.step);
  const std::string tmp_dir = fmt::format("{}/.{}.tmp", output_dir, name);
  std::string err;
  if (rank == 0) {
    err = prepare_temp_dir(output_dir, tmp_dir);
    // Refuse up front when the file system cannot hold the checkpoint: nothing gets written.
    uint64_t need = 1 << 20;
    for (size_t ti = 0; ti < table.tensors().size(); ++ti) {
      const size_t numel = table.tensors()[ti].numel();
      const size_t kinds = dataset_absent(snap.stateless, ti + table.tensors().size()) ? 1 : 3;
      need += kinds * numel * sizeof(float) + 64 * (numel / kChecksumChunkElems + 4);
    }
    const uint64_t avail = free_bytes(output_dir);
    if (err.empty() && avail < need) {
      std::error_code ec;
      fs::remove_all(tmp_dir, ec);
      err = fmt::format(
          "disk full: {} needs about {} bytes in {} but only {} are free; free some space or choose "
          "another --output_dir (earlier checkpoints and `latest` are untouched)",
          name, need, output_dir, avail);
    }
  }
  err = agree_error(comm, err);
  if (err.rfind("disk full", 0) == 0) throw DiskFullError(err);
  if (!err.empty()) throw CheckpointError(err);
  try {
    return save_prepared(output_dir, name, tmp_dir, model, train, progress, snap, comm, retention, incremental);
  } catch (const std::exception& e) {
    // Any rank that fails removes the partial files; the rename never happened, so nothing half-written is
    // committed. Other ranks may be inside a collective: the caller ends the job (MPI_Abort).
    // HDF5 and MPI-IO drop errno ("file write failed"): name a full disk by looking, before our files are freed.
    std::error_code ec;
    const fs::space_info space = fs::space(output_dir, ec);
    const std::string full = !ec && space.available < (1u << 20)
                                 ? fmt::format("; disk full: only {} bytes are free in {}", space.available, output_dir)
                                 : std::string();
    fs::remove_all(tmp_dir, ec);
    throw CheckpointWriteError(fmt::format("saving {} failed: {}{}; its partial files were removed; earlier "
                                           "checkpoints and `latest` are untouched",
                                           name, e.what(), full),
                               dynamic_cast<const AgreedWriteFailure*>(&e) != nullptr);
  }
}

namespace {

/// Fragments of checksum chunks that start on a lower rank go to that rank, and the tails of this rank's last
/// chunks come from higher ranks (recv_frag[d]); posted before the writes, completed after them.
void post_fragment_exchange(const ShardSnapshot& snap, const std::vector<std::string>& names, MpiComm& comm,
                            std::vector<std::vector<float>>& recv_frag, std::vector<MPI_Request>& reqs) {
  const ParamTable& table = *snap.table;
  const size_t n_t = table.tensors().size(), K = kChecksumChunkElems;
  recv_frag.assign(names.size(), {});
  for (size_t d = 0; d < names.size(); ++d) {
    const int kind = int(d / n_t);
    const TensorSpec& t = table.tensors()[d % n_t];
    const ShardSnapshot::TensorPiece& p = snap.pieces[d % n_t];
    if (p.a >= p.b || dataset_absent(snap.stateless, d)) continue;
    if (p.a % K != 0) {  // the chunk holding our first element starts on a lower rank
      const size_t c_end = std::min(t.numel(), (p.a / K + 1) * K);
      const size_t n = std::min(p.b, c_end) - p.a;
      reqs.emplace_back();
      ZT_MPI_CHECK(MPI_Isend(p.data[kind], int(n), MPI_FLOAT, owner_of(snap, d % n_t, (p.a / K) * K), int(d),
                             comm.mpi_comm(), &reqs.back()));
    }
    const size_t last_c = (p.b - 1) / K;
    const size_t c_end = std::min(t.numel(), (last_c + 1) * K);
    if (last_c * K >= p.a && c_end > p.b) {  // our last chunk runs past our piece: collect its tail
      recv_frag[d].resize(c_end - p.b);
      size_t at = p.b;
      while (at < c_end) {
        const int src = owner_of(snap, d % n_t, at);
        const PartLayout& P = snap.parts[snap.tensor_part[d % n_t]];
        const size_t src_end_flat = std::min(P.begin + P.layout.end(src), t.unit_offset + t.numel());
        const size_t n = std::min(c_end, src_end_flat - t.unit_offset) - at;
        reqs.emplace_back();
        ZT_MPI_CHECK(
            MPI_Irecv(recv_frag[d].data() + (at - p.b), int(n), MPI_FLOAT, src, int(d), comm.mpi_comm(), &reqs.back()));
        at += n;
      }
    }
  }
}

}  // namespace

namespace detail {

std::vector<H5Id> create_datasets(hid_t file, const ParamTable& table, const std::vector<std::string>& names,
                                  const std::vector<std::string>& links, const std::vector<bool>& stateless,
                                  std::vector<haddr_t>& offsets) {
  for (const char* g : {"params", "optim", "optim/exp_avg", "optim/exp_avg_sq"}) {
    H5Id grp(H5Gcreate2(file, g, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
    ZT_H5_CHECK(grp.get());
  }
  H5Id dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  ZT_H5_CHECK(H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER));
  ZT_H5_CHECK(H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY));
  const size_t n_t = table.tensors().size();
  std::vector<H5Id> dsets;
  for (size_t d = 0; d < names.size(); ++d) {
    const TensorSpec& t = table.tensors()[d % n_t];
    if (dataset_absent(stateless, d)) {
      dsets.emplace_back();
      offsets.push_back(HADDR_UNDEF);
      continue;
    }
    if (!links[d].empty()) {
      ZT_H5_CHECK(H5Lcreate_external(links[d].c_str(), ("/" + names[d]).c_str(), file, names[d].c_str(), H5P_DEFAULT,
                                     H5P_DEFAULT));
      dsets.emplace_back();
      offsets.push_back(HADDR_UNDEF);
      continue;
    }
    std::vector<hsize_t> dims(t.shape.begin(), t.shape.end());
    H5Id space(H5Screate_simple(int(dims.size()), dims.data(), nullptr), H5Sclose);
    dsets.emplace_back(H5Dcreate2(file, names[d].c_str(), H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT),
                       H5Dclose);
    ZT_H5_CHECK(dsets.back().get());
    offsets.push_back(H5Dget_offset(dsets.back()));
  }
  return dsets;
}

uint64_t own_chunk_digest(const ShardSnapshot& snap, size_t d, size_t c, const std::vector<float>& frag,
                          std::vector<float>& scratch) {
  const size_t n_t = snap.table->tensors().size(), K = kChecksumChunkElems;
  const TensorSpec& t = snap.table->tensors()[d % n_t];
  const ShardSnapshot::TensorPiece& p = snap.pieces[d % n_t];
  const float* src = p.data[d / n_t];
  const size_t c0 = c * K, c1 = std::min(t.numel(), c0 + K);
  if (c1 <= p.b) return chunk_digest(src + (c0 - p.a), c1 - c0);
  scratch.assign(src + (c0 - p.a), src + (p.b - p.a));
  scratch.insert(scratch.end(), frag.begin(), frag.end());
  ZT_ASSERT(scratch.size() == c1 - c0);
  return chunk_digest(scratch.data(), scratch.size());
}

}  // namespace detail

namespace {

/// Writes this rank's piece of every dataset through H5Dwrite (collective per dataset).
void write_through_hdf5(const ShardSnapshot& snap, const std::vector<H5Id>& dsets, hid_t dxpl, int rank) {
  const ParamTable& table = *snap.table;
  const size_t n_t = table.tensors().size();
  for (size_t d = 0; d < dsets.size(); ++d) {
    if (dsets[d].get() < 0) continue;  // a link: nothing written
    const int kind = int(d / n_t);
    const TensorSpec& t = table.tensors()[d % n_t];
    const ShardSnapshot::TensorPiece& p = snap.pieces[d % n_t];
    test_hooks::kill_point("dataset", long(d), rank);
    H5Id space(H5Dget_space(dsets[d]), H5Sclose);
    const hsize_t count = p.b - p.a;
    hsize_t one = 1;
    H5Id mspace(H5Screate_simple(1, count ? &count : &one, nullptr), H5Sclose);
    if (!count) ZT_H5_CHECK(H5Sselect_none(mspace));
    select_range(space, t.shape, p.a, p.b);
    static float dummy = 0;
    ZT_H5_CHECK(H5Dwrite(dsets[d], H5T_NATIVE_FLOAT, mspace, space, dxpl, count ? p.data[kind] : &dummy));
  }
}

/// Writes this rank's piece of every dataset but the links straight into the file (write_slices); the writers digest
/// every chunk that lies whole inside a piece, appended to `digests` as (dataset, chunk, digest) triples. Returns the
/// problem or "".
std::string write_direct(const std::string& h5_path, const ShardSnapshot& snap, const std::vector<std::string>& names,
                         const std::vector<std::string>& links, const std::vector<haddr_t>& offsets, MpiComm& comm,
                         std::vector<uint64_t>& digests) {
  const ParamTable& table = *snap.table;
  const size_t n_t = table.tensors().size();
  std::vector<SliceWrite> writes;
  for (size_t d = 0; d < names.size(); ++d) {
    if (!links[d].empty() || dataset_absent(snap.stateless, d)) continue;
    const TensorSpec& t = table.tensors()[d % n_t];
    const ShardSnapshot::TensorPiece& p = snap.pieces[d % n_t];
    writes.push_back({d, names[d], uint64_t(offsets[d]), t.numel(), p.a, p.b, p.data[d / n_t]});
  }
  std::vector<ChunkDigest> whole;
  const int rank = comm.rank();
  const std::string problem = write_slices(
      h5_path, writes, detail::threads_per_rank(comm, kWritersPerNode),
      [rank](size_t d) { test_hooks::kill_point("dataset", long(d), rank); }, whole);
  for (const ChunkDigest& c : whole) digests.insert(digests.end(), {uint64_t(c.dataset), uint64_t(c.chunk), c.digest});
  return problem;
}

/// Digests every chunk that starts in this rank's piece of each written (not linked) dataset (its tail, if any,
/// arrived from higher ranks in recv_frag); `skip_whole`: the direct writers already digested the chunks that lie
/// whole inside the piece.
void digest_own_chunks(const ShardSnapshot& snap, const std::vector<std::string>& links,
                       const std::vector<std::vector<float>>& recv_frag, bool skip_whole,
                       std::vector<uint64_t>& digests) {
  const ParamTable& table = *snap.table;
  const size_t n_t = table.tensors().size(), K = kChecksumChunkElems;
  std::vector<float> buf;
  for (size_t d = 0; d < links.size(); ++d) {
    const TensorSpec& t = table.tensors()[d % n_t];
    const ShardSnapshot::TensorPiece& p = snap.pieces[d % n_t];
    if (p.a >= p.b || !links[d].empty() || dataset_absent(snap.stateless, d)) continue;
    for (size_t c = (p.a + K - 1) / K; c * K < p.b; ++c) {
      if (skip_whole && std::min(t.numel(), c * K + K) <= p.b) continue;
      digests.insert(digests.end(),
                     {uint64_t(d), uint64_t(c), detail::own_chunk_digest(snap, d, c, recv_frag[d], buf)});
    }
  }
}

/// Every rank's (dataset, chunk, digest) triples, concatenated on rank 0 (empty elsewhere).
std::vector<uint64_t> gather_digests(const std::vector<uint64_t>& mine, MpiComm& comm) {
  const int rank = comm.rank(), N = comm.world_size();
  int my_n = int(mine.size());
  std::vector<int> counts(size_t(N), 0), displs(size_t(N), 0);
  ZT_MPI_CHECK(MPI_Gather(&my_n, 1, MPI_INT, counts.data(), 1, MPI_INT, 0, comm.mpi_comm()));
  std::vector<uint64_t> all;
  if (rank == 0) {
    int total = 0;
    for (int r = 0; r < N; ++r) {
      displs[size_t(r)] = total;
      total += counts[size_t(r)];
    }
    all.resize(size_t(total));
  }
  ZT_MPI_CHECK(MPI_Gatherv(mine.data(), my_n, MPI_UINT64_T, all.data(), counts.data(), displs.data(), MPI_UINT64_T, 0,
                           comm.mpi_comm()));
  return all;
}

/// Tensor bytes and chunk digests of a save: straight into the file (write_direct: several writes in flight,
/// write-back started as they go, no collective per dataset) where every rank can open it and the datasets have
/// addresses, which depends only on the file, so every rank sees the same. Else, and with --ckpt_write hdf5, through
/// H5Dwrite; "auto" still honours the deprecated ZT_CKPT_WRITE=hdf5 (for one release). The choice is agreed with the
/// rest: mpirun need not pass a variable to the ranks on other nodes. A failed write (a full disk, an I/O error) is
/// agreed, so every rank leaves the collective calls together. An incremental save first finds the tensors unchanged
/// since its base (`links` receives their link file names) and writes only the others. Returns every rank's digests
/// of the written datasets on rank 0.
std::vector<uint64_t> write_tensors(const std::string& h5_path, hid_t file, const ShardSnapshot& snap,
                                    const std::vector<std::string>& names, const std::string& ckpt_write,
                                    const IncrementalPlan& inc, std::vector<std::string>& links, MpiComm& comm) {
  const int rank = comm.rank();
  std::vector<std::vector<float>> recv_frag;
  std::vector<MPI_Request> reqs;
  post_fragment_exchange(snap, names, comm, recv_frag, reqs);
  links.assign(names.size(), std::string());
  if (inc.compare) {
    // The scan digests whole chunks, so it needs the tails now; they are at most a chunk per tensor per rank.
    if (!reqs.empty()) ZT_MPI_CHECK(MPI_Waitall(int(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE));
    reqs.clear();
    test_hooks::kill_point("scan", 0, rank);
    links = unchanged_links(inc, snap, recv_frag, detail::threads_per_rank(comm, kWritersPerNode), comm);
  }
  std::vector<haddr_t> offsets;
  std::vector<H5Id> dsets = detail::create_datasets(file, *snap.table, names, links, snap.stateless, offsets);
  const char* legacy = ckpt_write == "auto" ? std::getenv("ZT_CKPT_WRITE") : nullptr;
  const bool via_hdf5 = ckpt_write == "hdf5" || (legacy != nullptr && std::string(legacy) == "hdf5");
  bool addressed = true;
  for (size_t d = 0; d < names.size(); ++d)
    addressed = addressed && (!links[d].empty() || dataset_absent(snap.stateless, d) || offsets[d] != HADDR_UNDEF);
  const bool direct = detail::all_ranks_posix_io(h5_path, W_OK, comm, !via_hdf5) && addressed;
  std::vector<uint64_t> my_digests;  // triples: dataset index, chunk index, digest
  std::string write_problem;
  if (direct)
    write_problem = write_direct(h5_path, snap, names, links, offsets, comm, my_digests);
  else
    write_through_hdf5(snap, dsets, detail::shard_transfer_props(), rank);
  if (!reqs.empty()) ZT_MPI_CHECK(MPI_Waitall(int(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE));
  if (!write_problem.empty()) write_problem = fmt::format("{} [{}]", write_problem, where());
  write_problem = agree_error(comm, write_problem);
  if (!write_problem.empty()) throw AgreedWriteFailure(write_problem);
  for (H5Id& ds : dsets) ZT_H5_CHECK(ds.reset());

  test_hooks::kill_point("digests", 0, rank);
  digest_own_chunks(snap, links, recv_frag, direct, my_digests);
  return gather_digests(my_digests, comm);
}

}  // namespace

std::string save_prepared(const std::string& output_dir, const std::string& name, const std::string& tmp_dir,
                          const ModelConfig& model, const TrainConfig& train, const TrainProgress& progress,
                          const ShardSnapshot& snap, MpiComm& comm, const Retention& retention,
                          const IncrementalPolicy& incremental) {
  const ParamTable& table = *snap.table;
  const int rank = comm.rank(), N = comm.world_size();
  const std::string h5_path = tmp_dir + "/" + kCheckpointFile;
  std::string err, summary;
  const IncrementalPlan inc = plan_incremental(incremental, output_dir, name, table, snap.stateless, comm);

  const size_t n_t = table.tensors().size();
  const size_t K = kChecksumChunkElems;
  {
    H5Id file = detail::open_parallel(h5_path, comm, true);
    // A rank whose write fails must not close the file while unwinding: H5Fclose is collective and the other ranks
    // wait in a different collective, so the job would hang instead of aborting. Leak the handle; the job ends.
    struct LeakOnThrow {
      H5Id& f;
      int n;
      ~LeakOnThrow() {
        if (std::uncaught_exceptions() > n) new H5Id(std::move(f));
      }
    } leak_on_throw{file, std::uncaught_exceptions()};
    const std::vector<std::string> names = checkpoint_dataset_names(table);
    H5Id dxpl = detail::shard_transfer_props();
    // Rank 0 assembles the manifest from everyone's digests; the manifest dataset is created by all ranks.
    std::vector<std::string> links;
    const std::vector<uint64_t> all = write_tensors(h5_path, file, snap, names, train.ckpt_write, inc, links, comm);
    std::string manifest_text;
    if (rank == 0) {
      std::vector<std::vector<uint64_t>> digests(names.size());
      for (size_t d = 0; d < names.size(); ++d) {
        const size_t numel = table.tensors()[d % n_t].numel();
        // A linked tensor equals the base's, chunk for chunk: that is what made it a link.
        if (dataset_absent(snap.stateless, d)) continue;  // no dataset, no manifest entry
        digests[d] = links[d].empty() ? std::vector<uint64_t>((numel + K - 1) / K, 0) : inc.base_chunks[d];
      }
      for (size_t i = 0; i + 2 < all.size(); i += 3) digests[all[i]][all[i + 1]] = all[i + 2];
      nlohmann::json manifest = build_manifest(model, train, progress, snap, N, digests);
      if (inc.enabled) summary = record_incremental(manifest, inc, names, links);
      manifest_text = manifest.dump(1);
    }
    uint64_t len = manifest_text.size();
    comm.broadcast(&len, sizeof(len), 0);
    manifest_text.resize(len);
    comm.broadcast(manifest_text.data(), len, 0);
    write_string_dataset(file, "manifest", manifest_text, rank, dxpl);
    write_string_dataset(file, kManifestDigestDataset, manifest_digest(manifest_text), rank, dxpl);
    test_hooks::kill_point("close", 0, rank);
    ZT_H5_CHECK(file.reset());
    test_hooks::kill_point("commit", 0, rank);
    // Test-only: stretches every save before the commit, as a large model's write would (the launch scripts'
    // signal tests need a save that outlasts mpirun's default SIGTERM-to-SIGKILL delay).
    if (const int ms = test_hooks::save_delay_ms(); ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    if (rank == 0) {
      err = commit_checkpoint(output_dir, tmp_dir, name, manifest_text);
      if (err.empty() && !summary.empty()) fmt::print("{}: {}\n", name, summary);
      if (err.empty() && retention.keep > 0) apply_retention(output_dir, retention.keep, retention.unloadable);
    }
  }
  err = agree_error(comm, err);
  if (!err.empty()) throw CheckpointError(err);
  return output_dir + "/" + name;
}

std::string manifest_digest(const std::string& text) { return hex64(XXH64(text.data(), text.size(), 0)); }

namespace {

/// The bytes of scalar string dataset `name` up to the first NUL (readers must stop there; section 3 of
/// docs/checkpoint-format.md); "" and `problem` set when it is missing or unreadable.
std::string read_string_dataset(hid_t file, const char* name, const std::string& path, std::string& problem) {
  H5Id dset(H5Dopen2(file, name, H5P_DEFAULT), H5Dclose);
  if (dset.get() < 0) {
    problem = fmt::format("checkpoint file {} has no {} dataset", path, name);
    return std::string();
  }
  H5Id type(H5Dget_type(dset), H5Tclose);
  const size_t len = type.get() < 0 ? 0 : H5Tget_size(type);
  std::string text(len, '\0');
  if (len == 0 || H5Tget_class(type) != H5T_STRING || H5Tis_variable_str(type) != 0 ||
      H5Dread(dset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, text.data()) < 0) {
    problem = fmt::format("cannot read the {} dataset of {}: {}", name, path, h5_error_stack());
    return std::string();
  }
  text.resize(strnlen(text.data(), len));
  return text;
}

}  // namespace

nlohmann::json read_manifest(const std::string& ckpt_dir) {
  const std::string path = ckpt_dir + "/" + kCheckpointFile;
  h5_quiet();
  if (!fs::exists(path)) throw CheckpointError(fmt::format("checkpoint file {} does not exist", path));
  H5Id file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (file.get() < 0)
    throw CheckpointError(
        fmt::format("cannot open checkpoint file {} (truncated or not HDF5?): {}", path, h5_error_stack()));
  std::string problem;
  const std::string text = read_string_dataset(file, "manifest", path, problem);
  if (!problem.empty()) throw CheckpointError(problem);
  // The digest is judged before anything in the manifest, its format_version included: a flipped bit there must
  // read as damage, not as "upgrade zerotrain". Every version from 2 on keeps this dataset's meaning.
  const bool has_digest = H5Lexists(file, kManifestDigestDataset, H5P_DEFAULT) > 0;
  if (has_digest) {
    const std::string stored = read_string_dataset(file, kManifestDigestDataset, path, problem);
    if (!problem.empty()) throw CheckpointError(problem);
    if (stored != manifest_digest(text))
      throw CheckpointError(fmt::format(
          "the manifest of {} does not match its digest (/{}: stored {}, computed {}): the manifest is corrupt", path,
          kManifestDigestDataset, stored, manifest_digest(text)));
  }
  nlohmann::json j;
  int version = -1;
  try {
    j = nlohmann::json::parse(text);
    ZT_CHECK(j.is_object() && j.value("format", "") == "zerotrain-checkpoint",
             "{} is not a zerotrain checkpoint (manifest format field)", path);
    const auto v = j.find("format_version");
    if (v != j.end() && v->is_number_integer()) version = v->get<int>();
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError(fmt::format("the manifest of {} is not valid JSON: {}", path, e.what()));
  }
  // Version 1 predates the digest (its manifest is taken as it is); a newer version than ours is refused by
  // check_format_version with "upgrade zerotrain", whatever it stores.
  if (!has_digest && version >= 2 && version <= kCheckpointFormatVersion)
    throw CheckpointError(fmt::format(
        "checkpoint file {} has format version {} but no manifest digest (dataset /{} is missing): its manifest "
        "cannot be checked, so it is not used",
        path, version, kManifestDigestDataset));
  return j;
}

}  // namespace zt
