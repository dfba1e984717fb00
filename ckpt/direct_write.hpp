// Writes a rank's slices of the contiguous tensor datasets of model.h5 straight into the file (on writer threads,
// write-back started as it goes) and digests every checksum chunk that lies whole inside a slice.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace zt {

/// Elements [a, b) of one contiguous float32-LE dataset (allocated in the file, numel elements), from host memory
/// `src` (b - a elements). a == b: nothing to write, but the dataset still passes (the `before_dataset` hook).
struct SliceWrite {
  size_t dataset = 0;        ///< index in checkpoint_dataset_names order
  std::string name;          ///< dataset path, for messages
  uint64_t file_offset = 0;  ///< byte offset of the dataset's element 0 in the file
  size_t numel = 0;          ///< elements of the whole dataset
  size_t a = 0, b = 0;
  const float* src = nullptr;
};

/// The digest of checksum chunk `chunk` of dataset `dataset`.
struct ChunkDigest {
  size_t dataset = 0, chunk = 0;
  uint64_t digest = 0;
};

/// Writes every slice into the existing file at `path` (never created or truncated here) with pwrite on
/// `n_threads` threads (the calling one included), in pieces of at most one checksum chunk taken in slice order,
/// starting the write-back of each piece as soon as it is written (Linux sync_file_range), then fdatasync.
/// `before_dataset(d)` runs when the first piece of slice d is taken, empty slices included (test kill points).
/// Appends to `digests` the digest of every chunk [c*K, min(numel, (c+1)*K)) inside [a, b); a chunk that starts
/// before a or ends past b is left to the caller. Returns "" or the first problem (dataset, offset, errno text).
/// Independent of other ranks (no MPI, no HDF5).
std::string write_slices(const std::string& path, const std::vector<SliceWrite>& slices, int n_threads,
                         const std::function<void(size_t)>& before_dataset, std::vector<ChunkDigest>& digests);

}  // namespace zt
