// StagedMpiComm: the MPI comm for device buffers, staged through reusable pinned host memory, so several ranks
// may share one GPU and no NCCL is needed.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "cuda/device_memory.cuh"
#include "sharding/comm_mpi.hpp"

namespace zt::cuda {

/// The Comm contract over device buffers, through an MpiComm it owns (composition, not inheritance: a device comm
/// is a data communicator only, so code that needs host MPI, such as the checkpoint code, cannot be handed one).
/// Every collective on device memory copies device -> pinned host on the compute stream and waits for that copy,
/// runs the MpiComm collective on the host copy, and copies the result back on the compute stream (later ops are
/// ordered after it; nothing waits for it on the host). The sums are therefore MpiComm's rank-ordered sums: bitwise
/// the results of the MPI comm on the same values. Non-blocking calls stage at start and copy back in wait(). With
/// one rank a collective is a copy on the device. Host pointers (pageable or pinned) go straight to the MpiComm. A
/// call's buffers must all be device memory or all host memory. Pinned buffers come from a pool that only grows: a
/// repeated sequence of calls allocates nothing after its first round. The traffic counters include the MpiComm's.
class StagedMpiComm : public Comm {
 public:
  /// Duplicates `parent` (collective) and orders its copies on `compute_stream` (the CUDA backend's stream); the
  /// stream must outlive the comm.
  StagedMpiComm(MPI_Comm parent, cudaStream_t compute_stream);
  /// Frees the pinned pool; the buffers of operations still in flight (abandoned during an exception) are leaked on
  /// purpose, as MpiComm does, so MPI never writes into freed memory.
  ~StagedMpiComm() override;

  int rank() const override { return host_.rank(); }
  int world_size() const override { return host_.world_size(); }
  void all_reduce_sum(float* data, size_t n) override;
  void reduce_scatter_sum(const float* send, float* recv, size_t recv_n) override;
  void all_gather(const float* send, float* recv, size_t send_n) override;
  void broadcast(void* data, size_t n_bytes, int root) override;
  void barrier() override { host_.barrier(); }
  void all_reduce_sum(double* data, size_t n) override;
  int all_reduce_max(int value) override { return host_.all_reduce_max(value); }
  CommHandle ireduce_scatter_sum(const float* send, float* recv, size_t recv_n) override;
  CommHandle iall_gather(const float* send, float* recv, size_t send_n) override;
  void wait(CommHandle& h) override;
  void progress() override { host_.progress(); }

  uint64_t bytes_sent() const override { return bytes_sent_ + host_.bytes_sent(); }
  double wait_seconds() const override { return wait_seconds_ + host_.wait_seconds(); }
  void reset_counters() override {
    Comm::reset_counters();
    host_.reset_counters();
  }

  /// Pinned buffers allocated or grown since construction (flat in steady state; the tests check the pool reuses).
  size_t pinned_allocations() const { return pinned_allocations_; }

  /// True for device or managed memory, false for host memory (pageable, or pinned by cudaMallocHost/HostRegister).
  static bool is_device(const void* p);

 protected:
  cudaStream_t compute_stream() const { return stream_; }
  /// The host communicator underneath (host buffers, agreement during set-up).
  MpiComm& host() { return host_; }
  /// True when both buffers are device memory, false when both are host memory; throws zt::Error when mixed.
  static bool on_device(const void* a, const void* b, const char* what);

 private:
  using Pinned = std::unique_ptr<PinnedStaging>;
  // One started non-blocking operation on device buffers; slots are reused.
  struct StagedOp {
    uint64_t id = 0;   // 0: free slot
    CommHandle inner;  // the MpiComm operation on the pinned copy
    Pinned buf;
    void* host = nullptr;  // buf's memory
    void* dst = nullptr;   // device destination of the copy back
    size_t src_offset = 0, n_bytes = 0;
  };
  // Operation ids this class hands out carry this bit; ids without it are host_'s (host buffers).
  static constexpr uint64_t kStagedIdBit = uint64_t(1) << 63;

  // A pinned buffer of at least n_bytes from the pool (*host = its memory), once copies out of it have finished.
  Pinned lend(size_t n_bytes, void** host);
  // Returns a buffer to the pool; `copied_out` when a copy out of it was issued on the stream (recorded, so the
  // next lend of it waits for that copy).
  void give_back(Pinned p, bool copied_out);
  // Device -> pinned on the compute stream, waiting until the bytes are there (counted as time blocked).
  void to_pinned(void* host_dst, const void* device_src, size_t n_bytes);
  // Pinned -> device on the compute stream; returns at once.
  void from_pinned(void* device_dst, const void* host_src, size_t n_bytes);
  // Device -> device on the compute stream (one rank: every collective is a copy, or nothing when in place).
  void device_copy(void* dst, const void* src, size_t n_bytes);
  template <typename T>
  void all_reduce_staged(T* data, size_t n);
  // A non-blocking operation on a pinned copy: stages send_bytes of device `send` at byte send_at of a buffer of
  // staging_bytes, posts post(buffer) (the MpiComm operation), and records that wait() copies back_bytes from byte
  // back_at of the buffer to device `dst`.
  template <typename Post>
  CommHandle start_staged(size_t staging_bytes, const void* send, size_t send_at, size_t send_bytes, void* dst,
                          size_t back_at, size_t back_bytes, Post&& post);
  StagedOp& new_op();
  // Keeps a buffer MPI may still touch alive for the rest of the process.
  void abandon(Pinned p);

  MpiComm host_;  // first: destroyed last, after the operations that may still refer to its requests
  cudaStream_t stream_;
  std::vector<Pinned> free_;
  std::vector<StagedOp> ops_;
  uint64_t next_id_ = 1;
  size_t pinned_allocations_ = 0;
};

}  // namespace zt::cuda
