// The Comm contract: deterministic collectives over ranks, blocking and non-blocking, with traffic counters.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <utility>

#include "core/errors.hpp"

namespace zt {

class Comm;

/// A pending non-blocking collective: move-only; Comm::wait completes it. An empty handle (default-constructed,
/// moved-from or already waited) is a no-op for wait. Destroying a pending handle is a bug and aborts, except while
/// an exception unwinds the stack (then the operation is abandoned and its staging memory kept alive).
class CommHandle {
 public:
  CommHandle() = default;
  CommHandle(CommHandle&& other) noexcept : id_(std::exchange(other.id_, 0)) {}
  CommHandle& operator=(CommHandle&& other) noexcept {
    if (this != &other) {
      check_not_pending();
      id_ = std::exchange(other.id_, 0);
    }
    return *this;
  }
  CommHandle(const CommHandle&) = delete;
  CommHandle& operator=(const CommHandle&) = delete;
  ~CommHandle() { check_not_pending(); }

  /// True until the operation has been waited on.
  bool pending() const { return id_ != 0; }

 private:
  friend class Comm;
  explicit CommHandle(uint64_t id) : id_(id) {}
  void check_not_pending() const {
    if (id_ != 0 && std::uncaught_exceptions() == 0)
      ::zt::abort_invariant(__FILE__, __LINE__, "!pending()", "a CommHandle was dropped without Comm::wait");
  }
  uint64_t id_ = 0;  // backend's operation id; 0 = nothing pending
};

/// Collectives over the ranks of one communicator. Pointers are buffers in the memory space this comm serves (host
/// memory for MpiComm). Every rank of the communicator calls every collective in the same order with the same sizes.
///
/// Determinism: for a given world size, every summed element is computed as
/// ((rank 0's value + rank 1's value) + rank 2's value) + ... + rank N-1's value, whatever the message size and
/// whichever collective carried it, so all_reduce_sum and reduce_scatter_sum give the same bits for an element.
///
/// Buffers passed to a non-blocking call belong to the operation until wait() returns. A Comm is not thread-safe.
class Comm {
 public:
  virtual ~Comm() = default;

  /// This process's rank in the communicator, 0 <= rank() < world_size().
  virtual int rank() const = 0;
  /// Number of ranks in the communicator.
  virtual int world_size() const = 0;

  /// In-place sum over ranks of n floats; deterministic (see the class comment).
  virtual void all_reduce_sum(float* data, size_t n) = 0;
  /// recv[recv_n] = sum over ranks of send[rank()*recv_n .. +recv_n]; send has world_size*recv_n elements.
  /// recv may point into send (in place: recv == send + rank()*recv_n).
  virtual void reduce_scatter_sum(const float* send, float* recv, size_t recv_n) = 0;
  /// recv[world_size*send_n] = concatenation of every rank's send[send_n] in rank order.
  /// send may be this rank's own slot of recv (in place: send == recv + rank()*send_n); no other overlap.
  virtual void all_gather(const float* send, float* recv, size_t send_n) = 0;
  /// Copies n_bytes from root's data into every other rank's data.
  virtual void broadcast(void* data, size_t n_bytes, int root) = 0;
  /// Returns once every rank has entered it.
  virtual void barrier() = 0;
  /// Deterministic sum of n doubles (losses, squared-norm partials); same order rule as the float sum.
  virtual void all_reduce_sum(double* data, size_t n) = 0;
  /// Max over ranks of an int (flags: "any rank got a signal").
  virtual int all_reduce_max(int value) = 0;

  /// Non-blocking reduce_scatter_sum: starts the exchange; wait() completes it and performs the ordered sum into recv.
  virtual CommHandle ireduce_scatter_sum(const float* send, float* recv, size_t recv_n) = 0;
  /// Non-blocking all_gather: recv is complete once wait() returns.
  virtual CommHandle iall_gather(const float* send, float* recv, size_t send_n) = 0;
  /// Completes a non-blocking operation and empties the handle; an empty handle returns at once.
  virtual void wait(CommHandle& h) = 0;
  /// Lets outstanding non-blocking operations progress (called by the engine between compute ops).
  virtual void progress() = 0;

  /// Payload bytes this rank has sent since construction/reset_counters, by the algorithm's own accounting (N ranks):
  /// reduce_scatter (N-1)*recv_n*elem, all_gather (N-1)*send_n*elem, all_reduce the two on the size padded to a
  /// multiple of N, broadcast n_bytes*(N-1) counted on the root only, barrier and all_reduce_max 0. A comm built
  /// on another (a device comm over an MpiComm) includes the inner comm's count.
  virtual uint64_t bytes_sent() const { return bytes_sent_; }
  /// Seconds spent blocked in wait() and in blocking collectives since construction/reset_counters.
  virtual double wait_seconds() const { return wait_seconds_; }
  /// Zeroes bytes_sent() and wait_seconds().
  virtual void reset_counters() {
    bytes_sent_ = 0;
    wait_seconds_ = 0;
  }

 protected:
  /// Wraps a backend operation id (non-zero) in a pending handle.
  static CommHandle make_handle(uint64_t id) { return CommHandle(id); }
  /// Empties a handle and returns its operation id (0 when it was empty).
  static uint64_t take_handle_id(CommHandle& h) { return std::exchange(h.id_, 0); }

  uint64_t bytes_sent_ = 0;  ///< see bytes_sent()
  double wait_seconds_ = 0;  ///< see wait_seconds()
};

}  // namespace zt
