// Helpers the ckpt/ sources share (defined in checkpoint.cpp); internal to the layer, not part of its API.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ckpt/h5.hpp"

namespace zt {

class MpiComm;
class ParamTable;

namespace detail {

/// Every rank's non-empty `local` error, joined, on every rank ("" when none). Collective.
std::string agree_error(MpiComm& comm, const std::string& local);
/// Selects logical elements [a, b) of a row-major dataset of `shape` in `space`.
void select_range(hid_t space, const std::vector<int64_t>& shape, size_t a, size_t b);
/// The dataset-transfer properties of shard reads and writes: every rank in each call, independent MPI-IO beneath.
H5Id shard_transfer_props();
/// Threads for each rank when the ranks on one node share `per_node` of them (at least 1). Collective.
int threads_per_rank(MpiComm& comm, int per_node);
/// True on every rank when every rank `wants` it, can open `path` itself with `mode` (R_OK, W_OK) and stores floats
/// natively as float32-LE, so tensor bytes can move with pread/pwrite instead of through HDF5. Collective.
bool all_ranks_posix_io(const std::string& path, int mode, MpiComm& comm, bool wants);
/// Opens (or creates) `path` on every rank through MPI-IO; throws CheckpointError when it cannot. Collective.
H5Id open_parallel(const std::string& path, MpiComm& comm, bool create);
/// Creates a scalar fixed-length string dataset (collective; parallel HDF5 cannot write variable-length strings);
/// rank 0 writes its bytes, the other ranks select nothing.
void write_string_dataset(hid_t file, const char* name, const std::string& text, int rank, hid_t dxpl);
/// Creates every tensor dataset (collectively, space allocated at once) before any byte is written, except those
/// with a link in `links` (an external link to that file's dataset of the same name instead; no dataset handle) and
/// the optim datasets of `stateless` tensors (nothing); `offsets` receives each dataset's address in the file
/// (HADDR_UNDEF where HDF5 gives none, and for a link or an absent dataset).
std::vector<H5Id> create_datasets(hid_t file, const ParamTable& table, const std::vector<std::string>& names,
                                  const std::vector<std::string>& links, const std::vector<bool>& stateless,
                                  std::vector<haddr_t>& offsets);

}  // namespace detail
}  // namespace zt
