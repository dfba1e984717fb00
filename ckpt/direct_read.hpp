// Reads a rank's slices of contiguous tensor datasets straight from model.h5 (on reader threads; O_DIRECT for what
// is not in the page cache) and checks every checksum chunk that starts in a slice.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace zt {

/// Elements [a, b) of one contiguous float32-LE dataset, to be read into host memory `dst` (b - a elements).
struct SliceRead {
  size_t dataset = 0;        ///< index in checkpoint_dataset_names order (orders the problems)
  std::string name;          ///< dataset path, for messages
  uint64_t file_offset = 0;  ///< byte offset of the dataset's element 0 in the file
  size_t numel = 0;          ///< elements of the whole dataset
  size_t a = 0, b = 0;
  float* dst = nullptr;
  std::vector<uint64_t> chunk_digests;  ///< the manifest's digests of the dataset's checksum chunks
};

/// A problem found while loading, with the dataset it concerns (for a stable order).
struct LoadProblem {
  size_t dataset = 0;
  std::string text;
};

/// Reads every slice from the file at `path` on `n_threads` threads (the calling one included) and verifies each
/// checksum chunk whose first element lies in [a, b): a chunk that runs past b is completed from the file into
/// scratch memory, so the digest covers the whole chunk. Pages already in the page cache are copied from there;
/// the rest is read with O_DIRECT where the file system allows it (else buffered). Independent of other ranks (no
/// MPI, no HDF5). Returns read failures and checksum mismatches, in slice order.
std::vector<LoadProblem> read_slices(const std::string& path, const std::vector<SliceRead>& slices, int n_threads);

/// The message of a chunk whose digest differs from the manifest's (docs/checkpoint-format.md, section 8).
std::string checksum_mismatch(const std::string& path, const std::string& dataset, size_t chunk, size_t c0, size_t c1,
                              uint64_t got, uint64_t want);

}  // namespace zt
