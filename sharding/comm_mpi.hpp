// MpiComm: the Comm contract over MPI in host memory, with rank-ordered (deterministic) sums and chunked messages.
#pragma once

// Only the C API is used; skipping the deprecated C++ bindings keeps their warnings out of -Wall -Wextra builds.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sharding/comm.hpp"

/// Checks an MPI call's return code (communicators must use MPI_ERRORS_RETURN); throws zt::Error naming the call,
/// the MPI error text, file:line, rank and host.
#define ZT_MPI_CHECK(stmt) ZT_LIB_CHECK_GEN("MPI", stmt, ::zt::mpi_failed, ::zt::mpi_error_string)

namespace zt {

/// True when an MPI return code is not MPI_SUCCESS.
inline bool mpi_failed(int rc) { return rc != MPI_SUCCESS; }
/// MPI_Error_string of a return code, with its error class.
std::string mpi_error_string(int rc);

/// Initializes MPI (MPI_THREAD_FUNNELED) unless already initialized, sets MPI_COMM_WORLD to MPI_ERRORS_RETURN and the
/// error context (rank, world size); returns the world rank.
int mpi_init_once(int* argc, char*** argv);
/// Finalizes MPI if it is initialized and not yet finalized (every MpiComm must be destroyed before).
void mpi_finalize_once();

/// The Comm contract over an MPI communicator, host buffers only. It serves two roles in a run (launch/trainer.hpp):
/// the data communicator of a CPU run, and every run's control communicator (checkpoint I/O agreement and parallel
/// HDF5, scalars, stop decisions), which is why the checkpoint code takes an MpiComm. `final`: the device comms
/// (cuda/device_comm.hpp) own an MpiComm instead of deriving from it, so none of them passes for host MPI.
///
/// Every float/double sum is an exchange of chunks (MPI_Alltoall) into a staging buffer followed by a local sum in
/// rank order, never an MPI_SUM reduction, whose order MPI leaves to the implementation. all_reduce_sum pads to a
/// multiple of world_size and runs reduce_scatter then all_gather, so its bits equal reduce_scatter's for an element.
/// Messages are cut into calls of at most max_bytes_per_call bytes per peer, so no MPI count exceeds INT_MAX.
/// Staging buffers come from a pool reused across calls: repeating a sequence of calls allocates nothing.
class MpiComm final : public Comm {
 public:
  /// Largest per-peer payload of one MPI call by default (1 GiB; keeps counts far from INT_MAX and clear of MPI
  /// implementations' 2 GiB message limits).
  static constexpr size_t kDefaultMaxBytesPerCall = size_t(1) << 30;

  /// Duplicates parent (MPI_Comm_dup) and sets the duplicate to MPI_ERRORS_RETURN. Collective over parent.
  /// max_bytes_per_call (>= 8, <= INT_MAX) bounds one MPI call's per-peer payload; tests make it tiny.
  explicit MpiComm(MPI_Comm parent, size_t max_bytes_per_call = kDefaultMaxBytesPerCall);
  /// Frees the duplicated communicator. Staging of operations still in flight (abandoned during an exception) is
  /// deliberately leaked so MPI never writes into freed memory.
  ~MpiComm() override;
  MpiComm(const MpiComm&) = delete;
  MpiComm& operator=(const MpiComm&) = delete;

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }

  void all_reduce_sum(float* data, size_t n) override;
  void reduce_scatter_sum(const float* send, float* recv, size_t recv_n) override;
  void all_gather(const float* send, float* recv, size_t send_n) override;
  void broadcast(void* data, size_t n_bytes, int root) override;
  void barrier() override;
  void all_reduce_sum(double* data, size_t n) override;
  int all_reduce_max(int value) override;

  CommHandle ireduce_scatter_sum(const float* send, float* recv, size_t recv_n) override;
  CommHandle iall_gather(const float* send, float* recv, size_t send_n) override;
  void wait(CommHandle& h) override;
  void progress() override;

  /// The duplicated communicator (for callers that need raw MPI on the same group, e.g. parallel HDF5).
  MPI_Comm mpi_comm() const { return comm_; }
  /// Staging buffers allocated or grown since construction (flat in steady state; tests check the pool reuses).
  size_t staging_allocations() const { return staging_allocations_; }
  /// Non-blocking operations started and not yet waited on.
  size_t pending_operations() const;

 private:
  // A host buffer lent from the pool; returned with give_back().
  struct Staging {
    std::unique_ptr<std::byte[]> data;
    size_t n_bytes = 0;
  };
  enum class OpKind { kReduceScatter, kAllGather };
  // One started non-blocking operation; slots are reused so their request vectors keep capacity.
  struct PendingOp {
    uint64_t id = 0;  // 0: free slot
    OpKind kind = OpKind::kAllGather;
    std::vector<MPI_Request> requests;
    Staging staging;
    float* recv = nullptr;
    size_t recv_n = 0;
  };

  Staging lend(size_t n_bytes);
  void give_back(Staging s);

  // Exchange, gather and sum on element type T; requests == nullptr runs blocking calls.
  template <typename T>
  void post_alltoall(const T* send, T* staging, size_t chunk_n, std::vector<MPI_Request>* requests);
  template <typename T>
  void post_allgather(const T* send, T* recv, size_t send_n, std::vector<MPI_Request>* requests);
  template <typename T>
  void reduce_scatter_impl(const T* send, T* recv, size_t recv_n);
  template <typename T>
  void all_gather_impl(const T* send, T* recv, size_t send_n);
  template <typename T>
  void all_reduce_impl(T* data, size_t n);
  template <typename T>
  void check_gather_overlap(const T* send, const T* recv, size_t send_n) const;
  PendingOp& new_op(OpKind kind);

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int world_size_ = 1;
  size_t max_bytes_per_call_;
  std::vector<Staging> free_staging_;
  size_t staging_allocations_ = 0;
  std::vector<PendingOp> ops_;
  uint64_t next_op_id_ = 1;
};

}  // namespace zt
