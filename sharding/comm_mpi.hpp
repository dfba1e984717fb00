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
/// A reduce_scatter exchanges and sums its chunks piece by piece, so its staging stays within
/// kReduceScatterStagingBytes whatever the message size (a unit of hundreds of MB must not cost as much again).
/// Staging buffers come from a pool reused across calls: repeating a sequence of calls allocates nothing.
class MpiComm final : public Comm {
 public:
  /// Largest per-peer payload of one MPI call by default (1 GiB; keeps counts far from INT_MAX and clear of MPI
  /// implementations' 2 GiB message limits).
  static constexpr size_t kDefaultMaxBytesPerCall = size_t(1) << 30;
  /// Staging one reduce_scatter holds by default (two pieces, the next one exchanged while the last is summed).
  static constexpr size_t kReduceScatterStagingBytes = size_t(8) << 20;

  /// Duplicates parent (MPI_Comm_dup) and sets the duplicate to MPI_ERRORS_RETURN. Collective over parent.
  /// max_bytes_per_call (>= 8, <= INT_MAX) bounds one MPI call's per-peer payload; reduce_scatter_staging_bytes
  /// bounds one reduce_scatter's staging (at least one element per rank and piece); tests make both tiny.
  explicit MpiComm(MPI_Comm parent, size_t max_bytes_per_call = kDefaultMaxBytesPerCall,
                   size_t reduce_scatter_staging_bytes = kReduceScatterStagingBytes);
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
  /// Bytes of the staging buffers the pool holds now (idle ones; the peak memory they cost).
  size_t staging_bytes() const;
  /// Non-blocking operations started and not yet waited on.
  size_t pending_operations() const;

 private:
  // A host buffer lent from the pool; returned with give_back().
  struct Staging {
    std::unique_ptr<std::byte[]> data;
    size_t n_bytes = 0;
  };
  enum class OpKind { kReduceScatter, kAllGather };
  // One started non-blocking operation; slots are reused so their request vectors keep capacity. A reduce_scatter
  // runs as pieces: elements [off, off + n) of every rank's chunk are exchanged into one half of the staging, and
  // summed into recv once the next piece has been posted into the other half.
  struct PendingOp {
    uint64_t id = 0;  // 0: free slot
    OpKind kind = OpKind::kAllGather;
    MPI_Comm comm = MPI_COMM_NULL;  // the slot's own duplicate of comm_ (new_op says why)
    std::vector<MPI_Request> requests;
    Staging staging;
    float* recv = nullptr;
    size_t recv_n = 0;
    const float* send = nullptr;  // reduce_scatter: the send buffer, read piece by piece
    size_t piece_n = 0;           // elements of each rank's chunk per piece
    size_t posted_off = 0;        // the piece in flight: [posted_off, posted_off + posted_n)
    size_t posted_n = 0;
    int posted_half = 0;  // staging half it lands in
  };

  Staging lend(size_t n_bytes);
  void give_back(Staging s);

  // Exchange, gather and sum on element type T.
  // Posts on op's communicator into op->requests, or (op null) runs blocking on comm_.
  template <typename T>
  void post_alltoall(const T* send, T* staging, size_t off, size_t count, size_t chunk_n, PendingOp* op);
  // Elements per rank's chunk in one reduce_scatter piece.
  template <typename T>
  size_t piece_elems(size_t recv_n) const;
  // The piece in flight of a reduce_scatter finished: posts the next one, then sums the finished one into recv.
  void advance_reduce_scatter(PendingOp& op);
  template <typename T>
  void post_allgather(const T* send, T* recv, size_t send_n, PendingOp* op);
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
  size_t reduce_scatter_staging_bytes_;
  std::vector<Staging> free_staging_;
  size_t staging_allocations_ = 0;
  std::vector<PendingOp> ops_;
  uint64_t next_op_id_ = 1;
};

}  // namespace zt
