// Reusable device scratch and pinned host staging: grown rarely, so steady-state training never allocates.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace zt::cuda {

/// Bytes rounded up to the 256-byte alignment cudaMalloc gives, so carved sub-buffers keep it.
inline size_t align_bytes(size_t n_bytes) { return (n_bytes + 255) / 256 * 256; }

/// A growable device allocation for one user's scratch. Growing waits for the device to drain first (work in
/// flight may still read the old block); a steady state with fixed shapes never grows.
class DeviceScratch {
 public:
  DeviceScratch() = default;
  ~DeviceScratch();
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  /// At least n_bytes of device memory, 256-byte aligned, contents undefined, valid until the next get().
  void* get(size_t n_bytes);
  size_t capacity() const { return capacity_; }
  /// Blocks any DeviceScratch of the process has allocated anew: a CUDA graph that points into one is stale once
  /// this changes (cuda_graph.cu).
  static uint64_t reallocations();

 private:
  void* ptr_ = nullptr;
  size_t capacity_ = 0;
};

/// Hands out consecutive 256-byte-aligned pieces of one scratch block.
class ScratchCarver {
 public:
  explicit ScratchCarver(void* base) : base_(static_cast<char*>(base)) {}
  template <typename T>
  T* take(size_t n_elems) {
    T* p = reinterpret_cast<T*>(base_ + used_);
    used_ += align_bytes(n_elems * sizeof(T));
    return p;
  }

 private:
  char* base_;
  size_t used_ = 0;
};

/// Pinned host memory for asynchronous uploads, with an event recorded after the last copy out of it, so the host
/// never overwrites bytes a copy still reads.
class PinnedStaging {
 public:
  PinnedStaging() = default;
  ~PinnedStaging();
  PinnedStaging(const PinnedStaging&) = delete;
  PinnedStaging& operator=(const PinnedStaging&) = delete;
  /// At least n_bytes of pinned host memory, once the previous copy out of it has finished.
  void* get(size_t n_bytes);
  /// Marks the end of the copies issued on `stream` that read the staging memory.
  void record(cudaStream_t stream);
  /// Bytes the next get() can return without growing.
  size_t capacity() const { return capacity_; }

 private:
  void* ptr_ = nullptr;
  size_t capacity_ = 0;
  cudaEvent_t done_ = nullptr;
  bool pending_ = false;
};

}  // namespace zt::cuda
