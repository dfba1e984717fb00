// MpiComm: chunk exchanges over MPI followed by rank-ordered local sums, a staging pool, and MPI setup helpers.
#include "sharding/comm_mpi.hpp"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace zt {
namespace {

template <typename T>
MPI_Datatype mpi_type();
template <>
MPI_Datatype mpi_type<float>() {
  return MPI_FLOAT;
}
template <>
MPI_Datatype mpi_type<double>() {
  return MPI_DOUBLE;
}

// Adds the wall time of its scope to a counter (time blocked in a collective or a wait).
class BlockedTimer {
 public:
  explicit BlockedTimer(double* acc) : acc_(acc), t0_(std::chrono::steady_clock::now()) {}
  ~BlockedTimer() { *acc_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }
  BlockedTimer(const BlockedTimer&) = delete;
  BlockedTimer& operator=(const BlockedTimer&) = delete;

 private:
  double* acc_;
  std::chrono::steady_clock::time_point t0_;
};

// Frees a derived datatype at scope exit; MPI keeps it alive for operations still using it.
class TypeGuard {
 public:
  explicit TypeGuard(MPI_Datatype type) : type_(type) {}
  ~TypeGuard() { MPI_Type_free(&type_); }
  TypeGuard(const TypeGuard&) = delete;
  TypeGuard& operator=(const TypeGuard&) = delete;

 private:
  MPI_Datatype type_;
};

// `count` consecutive elements whose extent is `stride` elements: one call's slice of every rank's block when a
// block is cut into several calls (block j's slice then starts at base + j*stride).
template <typename T>
MPI_Datatype make_strided_slice_type(size_t count, size_t stride) {
  MPI_Datatype contiguous = MPI_DATATYPE_NULL, resized = MPI_DATATYPE_NULL;
  ZT_MPI_CHECK(MPI_Type_contiguous(int(count), mpi_type<T>(), &contiguous));
  TypeGuard contiguous_guard(contiguous);
  ZT_MPI_CHECK(MPI_Type_create_resized(contiguous, 0, MPI_Aint(stride * sizeof(T)), &resized));
  ZT_MPI_CHECK(MPI_Type_commit(&resized));
  return resized;
}

// out[k] = ((blocks[0][k] + blocks[1][k]) + blocks[2][k]) + ...: the one summation order of the contract. Tiled so
// out stays in cache while the blocks stream past; each element still sees the same left-to-right order.
template <typename T>
void ordered_sum(const T* blocks, T* out, size_t n, int world_size) {
  constexpr size_t kTile = 4096;
  for (size_t base = 0; base < n; base += kTile) {
    const size_t len = std::min(kTile, n - base);
    T* o = out + base;
    std::memcpy(o, blocks + base, len * sizeof(T));
    for (int r = 1; r < world_size; ++r) {
      const T* src = blocks + size_t(r) * n + base;
      for (size_t k = 0; k < len; ++k) o[k] += src[k];
    }
  }
}

// Elements of type T per MPI call so that one peer's payload stays within max_bytes.
template <typename T>
size_t elems_per_call(size_t max_bytes) {
  return std::max<size_t>(1, max_bytes / sizeof(T));
}

}  // namespace

std::string mpi_error_string(int rc) {
  char text[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  int error_class = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) std::snprintf(text, sizeof(text), "unknown MPI error");
  if (MPI_Error_class(rc, &error_class) != MPI_SUCCESS) error_class = -1;
  return fmt::format("{} (MPI error code {}, class {})", text, rc, error_class);
}

int mpi_init_once(int* argc, char*** argv) {
  int initialized = 0;
  ZT_MPI_CHECK(MPI_Initialized(&initialized));
  if (!initialized) {
    // Without its own progress thread, Open MPI's TCP transport moves a non-blocking collective's bytes only inside
    // MPI calls (a few hundred KB per call), so the engine's reduce-scatters and gathers between nodes barely
    // overlap compute: measured in docs/performance.md, "Overlap on a shaped link". The thread sleeps in epoll when
    // idle. A value the user set (mpirun --mca, the environment) wins; other MPIs ignore the variable.
    setenv("OMPI_MCA_btl_tcp_progress_thread", "1", 0);
    int provided = 0;
    ZT_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
    // OpenMP threads compute, only the main thread calls MPI: FUNNELED is all we need.
    ZT_CHECK(provided >= MPI_THREAD_FUNNELED,
             "the MPI library offers thread level {} but zerotrain needs MPI_THREAD_FUNNELED", provided);
  }
  int rank = 0, world_size = 1;
  ZT_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  ZT_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_size));
  set_error_context(rank, world_size);
  return rank;
}

void mpi_finalize_once() {
  int initialized = 0, finalized = 0;
  ZT_MPI_CHECK(MPI_Initialized(&initialized));
  ZT_MPI_CHECK(MPI_Finalized(&finalized));
  if (initialized && !finalized) ZT_MPI_CHECK(MPI_Finalize());
}

MpiComm::MpiComm(MPI_Comm parent, size_t max_bytes_per_call, size_t reduce_scatter_staging_bytes)
    : max_bytes_per_call_(max_bytes_per_call), reduce_scatter_staging_bytes_(reduce_scatter_staging_bytes) {
  ZT_CHECK(max_bytes_per_call >= sizeof(double) && max_bytes_per_call <= size_t(INT_MAX),
           "max_bytes_per_call must lie in [{}, {}], got {}", sizeof(double), INT_MAX, max_bytes_per_call);
  int initialized = 0;
  ZT_MPI_CHECK(MPI_Initialized(&initialized));
  ZT_CHECK(initialized, "MpiComm needs MPI to be initialized first (call mpi_init_once)");
  ZT_MPI_CHECK(MPI_Comm_dup(parent, &comm_));
  try {
    ZT_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    ZT_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    ZT_MPI_CHECK(MPI_Comm_size(comm_, &world_size_));
  } catch (...) {
    MPI_Comm_free(&comm_);
    throw;
  }
}

MpiComm::~MpiComm() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;  // MPI already tore the communicator down; nothing can be freed or tested
  for (PendingOp& op : ops_) {
    if (op.id == 0) continue;
    int done = 0;
    if (MPI_Testall(int(op.requests.size()), op.requests.data(), &done, MPI_STATUSES_IGNORE) != MPI_SUCCESS) done = 0;
    // Still in flight (abandoned while an exception unwound): MPI may write into it later, so never free it.
    if (!done) (void)op.staging.data.release();
  }
  for (PendingOp& op : ops_)
    if (op.comm != MPI_COMM_NULL) MPI_Comm_free(&op.comm);
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

size_t MpiComm::pending_operations() const {
  return size_t(std::count_if(ops_.begin(), ops_.end(), [](const PendingOp& op) { return op.id != 0; }));
}

MpiComm::Staging MpiComm::lend(size_t n_bytes) {
  // Best fit among free buffers; otherwise grow the largest free one (or make one), so a repeated sequence of
  // calls settles on a fixed set of buffers.
  size_t best = free_staging_.size();
  for (size_t i = 0; i < free_staging_.size(); ++i) {
    if (free_staging_[i].n_bytes >= n_bytes &&
        (best == free_staging_.size() || free_staging_[i].n_bytes < free_staging_[best].n_bytes))
      best = i;
  }
  if (best == free_staging_.size() && !free_staging_.empty()) {
    best = size_t(std::max_element(free_staging_.begin(), free_staging_.end(),
                                   [](const Staging& a, const Staging& b) { return a.n_bytes < b.n_bytes; }) -
                  free_staging_.begin());
  }
  Staging s;
  if (best < free_staging_.size()) {
    s = std::move(free_staging_[best]);
    free_staging_[best] = std::move(free_staging_.back());
    free_staging_.pop_back();
  }
  if (s.n_bytes < n_bytes) {
    s.data.reset();  // release the old buffer before taking the larger one
    s.data.reset(new std::byte[n_bytes]);
    s.n_bytes = n_bytes;
    ++staging_allocations_;
  }
  return s;
}

void MpiComm::give_back(Staging s) {
  if (s.data) free_staging_.push_back(std::move(s));
}

MpiComm::PendingOp& MpiComm::new_op(OpKind kind) {
  auto slot = std::find_if(ops_.begin(), ops_.end(), [](const PendingOp& op) { return op.id == 0; });
  if (slot == ops_.end()) {
    // Each slot posts on a communicator of its own: a reduce_scatter posts its pieces as earlier ones complete,
    // which differs between ranks, and MPI matches collectives by their order on a communicator. Slots are taken
    // and freed in program order (new_op, wait), so every rank creates them at the same call.
    MPI_Comm slot_comm = MPI_COMM_NULL;
    ZT_MPI_CHECK(MPI_Comm_dup(comm_, &slot_comm));
    ops_.emplace_back().comm = slot_comm;
    slot = ops_.end() - 1;
  }
  PendingOp& op = *slot;
  op.id = next_op_id_++;
  op.kind = kind;
  op.requests.clear();
  op.recv = nullptr;
  op.recv_n = 0;
  return op;
}

template <typename T>
void MpiComm::post_alltoall(const T* send, T* staging, size_t off, size_t count, size_t chunk_n, PendingOp* op) {
  // Elements [off, off + count) of every rank's chunk of send (chunks chunk_n apart) into staging, rank r's at
  // staging + r * count; a whole chunk needs no derived type.
  MPI_Datatype send_type = mpi_type<T>();
  int send_count = int(count);
  MPI_Datatype strided = MPI_DATATYPE_NULL;
  if (count != chunk_n) {
    strided = make_strided_slice_type<T>(count, chunk_n);
    send_type = strided;
    send_count = 1;
  }
  if (op) {
    op->requests.emplace_back(MPI_REQUEST_NULL);
    ZT_MPI_CHECK(MPI_Ialltoall(send + off, send_count, send_type, staging, int(count), mpi_type<T>(), op->comm,
                               &op->requests.back()));
  } else {
    ZT_MPI_CHECK(MPI_Alltoall(send + off, send_count, send_type, staging, int(count), mpi_type<T>(), comm_));
  }
  if (strided != MPI_DATATYPE_NULL) ZT_MPI_CHECK(MPI_Type_free(&strided));
}

template <typename T>
size_t MpiComm::piece_elems(size_t recv_n) const {
  // Half the staging budget per piece (the next piece is exchanged while the last is summed); at least one element.
  const size_t budget = std::max<size_t>(1, reduce_scatter_staging_bytes_ / 2 / (size_t(world_size_) * sizeof(T)));
  return std::min({recv_n, elems_per_call<T>(max_bytes_per_call_), budget});
}

template <typename T>
void MpiComm::post_allgather(const T* send, T* recv, size_t send_n, PendingOp* op) {
  const bool in_place = send == recv + size_t(rank_) * send_n;
  const size_t per_call = elems_per_call<T>(max_bytes_per_call_);
  for (size_t off = 0; off < send_n; off += per_call) {
    const size_t count = std::min(per_call, send_n - off);
    MPI_Datatype recv_type = mpi_type<T>();
    int recv_count = int(count);
    MPI_Datatype strided = MPI_DATATYPE_NULL;
    if (count != send_n) {
      strided = make_strided_slice_type<T>(count, send_n);
      recv_type = strided;
      recv_count = 1;
    }
    const void* send_buf = in_place ? MPI_IN_PLACE : static_cast<const void*>(send + off);
    if (op) {
      op->requests.emplace_back(MPI_REQUEST_NULL);
      ZT_MPI_CHECK(MPI_Iallgather(send_buf, int(count), mpi_type<T>(), recv + off, recv_count, recv_type, op->comm,
                                  &op->requests.back()));
    } else {
      ZT_MPI_CHECK(MPI_Allgather(send_buf, int(count), mpi_type<T>(), recv + off, recv_count, recv_type, comm_));
    }
    if (strided != MPI_DATATYPE_NULL) ZT_MPI_CHECK(MPI_Type_free(&strided));
  }
}

template <typename T>
void MpiComm::check_gather_overlap(const T* send, const T* recv, size_t send_n) const {
  if (send == recv + size_t(rank_) * send_n) return;  // in place
  const auto s = reinterpret_cast<uintptr_t>(send), r = reinterpret_cast<uintptr_t>(recv);
  const bool disjoint = s + send_n * sizeof(T) <= r || r + size_t(world_size_) * send_n * sizeof(T) <= s;
  ZT_CHECK(disjoint, "all_gather: send overlaps recv but is not this rank's slot recv + {}*{}", rank_, send_n);
}

template <typename T>
void MpiComm::reduce_scatter_impl(const T* send, T* recv, size_t recv_n) {
  if (recv_n == 0) return;
  if (world_size_ == 1) {
    if (recv != send) std::memmove(recv, send, recv_n * sizeof(T));
    return;
  }
  const size_t piece_n = piece_elems<T>(recv_n);
  Staging staging = lend(size_t(world_size_) * piece_n * sizeof(T));
  T* blocks = reinterpret_cast<T*>(staging.data.get());
  for (size_t off = 0; off < recv_n; off += piece_n) {
    const size_t count = std::min(piece_n, recv_n - off);
    try {
      post_alltoall(send, blocks, off, count, recv_n, nullptr);
    } catch (...) {
      give_back(std::move(staging));
      throw;
    }
    // Summed only after the piece's exchange, and later pieces read other elements, so recv may alias send.
    ordered_sum(blocks, recv + off, count, world_size_);
  }
  give_back(std::move(staging));
  bytes_sent_ += uint64_t(world_size_ - 1) * recv_n * sizeof(T);
}

template <typename T>
void MpiComm::all_gather_impl(const T* send, T* recv, size_t send_n) {
  if (send_n == 0) return;
  if (world_size_ == 1) {
    if (recv != send) std::memmove(recv, send, send_n * sizeof(T));
    return;
  }
  check_gather_overlap(send, recv, send_n);
  post_allgather(send, recv, send_n, nullptr);
  bytes_sent_ += uint64_t(world_size_ - 1) * send_n * sizeof(T);
}

template <typename T>
void MpiComm::all_reduce_impl(T* data, size_t n) {
  if (n == 0 || world_size_ == 1) return;
  const size_t chunk = n / size_t(world_size_) + (n % size_t(world_size_) != 0);
  const size_t padded = chunk * size_t(world_size_);
  T* buf = data;
  Staging staging;
  if (padded != n) {
    staging = lend(padded * sizeof(T));
    buf = reinterpret_cast<T*>(staging.data.get());
    std::memcpy(buf, data, n * sizeof(T));
    std::fill(buf + n, buf + padded, T(0));
  }
  try {
    T* mine = buf + size_t(rank_) * chunk;
    reduce_scatter_impl(buf, mine, chunk);
    all_gather_impl(mine, buf, chunk);
  } catch (...) {
    give_back(std::move(staging));
    throw;
  }
  if (buf != data) std::memcpy(data, buf, n * sizeof(T));
  give_back(std::move(staging));
}

void MpiComm::all_reduce_sum(float* data, size_t n) {
  BlockedTimer timer(&wait_seconds_);
  all_reduce_impl(data, n);
}

void MpiComm::all_reduce_sum(double* data, size_t n) {
  BlockedTimer timer(&wait_seconds_);
  all_reduce_impl(data, n);
}

void MpiComm::reduce_scatter_sum(const float* send, float* recv, size_t recv_n) {
  BlockedTimer timer(&wait_seconds_);
  reduce_scatter_impl(send, recv, recv_n);
}

void MpiComm::all_gather(const float* send, float* recv, size_t send_n) {
  BlockedTimer timer(&wait_seconds_);
  all_gather_impl(send, recv, send_n);
}

void MpiComm::broadcast(void* data, size_t n_bytes, int root) {
  ZT_CHECK(root >= 0 && root < world_size_, "broadcast root {} is not a rank of a {}-rank communicator", root,
           world_size_);
  if (n_bytes == 0 || world_size_ == 1) return;
  BlockedTimer timer(&wait_seconds_);
  auto* bytes = static_cast<std::byte*>(data);
  for (size_t off = 0; off < n_bytes; off += max_bytes_per_call_) {
    const size_t count = std::min(max_bytes_per_call_, n_bytes - off);
    ZT_MPI_CHECK(MPI_Bcast(bytes + off, int(count), MPI_BYTE, root, comm_));
  }
  // Counted as if the root sent the payload to every other rank, whatever tree MPI uses.
  if (rank_ == root) bytes_sent_ += uint64_t(n_bytes) * uint64_t(world_size_ - 1);
}

void MpiComm::barrier() {
  if (world_size_ == 1) return;
  BlockedTimer timer(&wait_seconds_);
  ZT_MPI_CHECK(MPI_Barrier(comm_));
}

int MpiComm::all_reduce_max(int value) {
  if (world_size_ == 1) return value;
  BlockedTimer timer(&wait_seconds_);
  // An integer max is exact in any order, so MPI's own reduction is deterministic here.
  int result = value;
  ZT_MPI_CHECK(MPI_Allreduce(&value, &result, 1, MPI_INT, MPI_MAX, comm_));
  return result;
}

CommHandle MpiComm::ireduce_scatter_sum(const float* send, float* recv, size_t recv_n) {
  if (recv_n == 0) return CommHandle();
  if (world_size_ == 1) {
    if (recv != send) std::memmove(recv, send, recv_n * sizeof(float));
    return CommHandle();
  }
  PendingOp& op = new_op(OpKind::kReduceScatter);
  op.send = send;
  op.recv = recv;
  op.recv_n = recv_n;
  op.piece_n = piece_elems<float>(recv_n);
  op.posted_off = 0;
  op.posted_n = op.piece_n;
  op.posted_half = 0;
  try {
    const size_t halves = op.piece_n < recv_n ? 2 : 1;
    op.staging = lend(halves * size_t(world_size_) * op.piece_n * sizeof(float));
    post_alltoall(send, reinterpret_cast<float*>(op.staging.data.get()), 0, op.piece_n, recv_n, &op);
  } catch (...) {
    // Nothing in flight: free the slot. Otherwise the slot stays taken and keeps its staging alive.
    if (op.requests.empty()) {
      give_back(std::move(op.staging));
      op.id = 0;
    }
    throw;
  }
  bytes_sent_ += uint64_t(world_size_ - 1) * recv_n * sizeof(float);
  return make_handle(op.id);
}

void MpiComm::advance_reduce_scatter(PendingOp& op) {
  auto* staging = reinterpret_cast<float*>(op.staging.data.get());
  const size_t half_n = size_t(world_size_) * op.piece_n;
  const size_t done_off = op.posted_off, done_n = op.posted_n;
  const int done_half = op.posted_half;
  op.requests.clear();
  op.posted_off = done_off + done_n;
  op.posted_n = std::min(op.piece_n, op.recv_n - op.posted_off);
  op.posted_half = 1 - done_half;
  if (op.posted_n > 0)
    post_alltoall(op.send, staging + size_t(op.posted_half) * half_n, op.posted_off, op.posted_n, op.recv_n, &op);
  ordered_sum(staging + size_t(done_half) * half_n, op.recv + done_off, done_n, world_size_);
}

CommHandle MpiComm::iall_gather(const float* send, float* recv, size_t send_n) {
  if (send_n == 0) return CommHandle();
  if (world_size_ == 1) {
    if (recv != send) std::memmove(recv, send, send_n * sizeof(float));
    return CommHandle();
  }
  check_gather_overlap(send, recv, send_n);
  PendingOp& op = new_op(OpKind::kAllGather);
  try {
    post_allgather(send, recv, send_n, &op);
  } catch (...) {
    if (op.requests.empty()) op.id = 0;
    throw;
  }
  bytes_sent_ += uint64_t(world_size_ - 1) * send_n * sizeof(float);
  return make_handle(op.id);
}

void MpiComm::wait(CommHandle& h) {
  const uint64_t id = take_handle_id(h);
  if (id == 0) return;
  BlockedTimer timer(&wait_seconds_);
  auto it = std::find_if(ops_.begin(), ops_.end(), [id](const PendingOp& op) { return op.id == id; });
  ZT_CHECK(it != ops_.end(), "wait() on a handle (operation {}) that this communicator did not start", id);
  PendingOp& op = *it;
  for (;;) {
    ZT_MPI_CHECK(MPI_Waitall(int(op.requests.size()), op.requests.data(), MPI_STATUSES_IGNORE));
    if (op.kind != OpKind::kReduceScatter) break;
    advance_reduce_scatter(op);
    if (op.posted_n == 0) break;
  }
  give_back(std::move(op.staging));
  op.staging = Staging();
  op.requests.clear();
  op.id = 0;
}

void MpiComm::progress() {
  for (PendingOp& op : ops_) {
    if (op.id == 0 || op.requests.empty()) continue;
    int done = 0;
    // Completed requests become MPI_REQUEST_NULL, which the later MPI_Waitall accepts.
    ZT_MPI_CHECK(MPI_Testall(int(op.requests.size()), op.requests.data(), &done, MPI_STATUSES_IGNORE));
    // A reduce_scatter moves on to its next piece (the last one is summed by wait()).
    if (done && op.kind == OpKind::kReduceScatter && op.posted_off + op.posted_n < op.recv_n)
      advance_reduce_scatter(op);
  }
}

size_t MpiComm::staging_bytes() const {
  size_t n = 0;
  for (const Staging& s : free_staging_) n += s.n_bytes;
  return n;
}

}  // namespace zt
