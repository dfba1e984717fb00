// StagedMpiComm: device buffers copied through a pinned pool around MpiComm's collectives (staged_mpi_comm.cuh).
#include "cuda/staged_mpi_comm.cuh"

#include <algorithm>
#include <chrono>
#include <limits>

#include "cuda/cuda_common.cuh"

namespace zt::cuda {

StagedMpiComm::StagedMpiComm(MPI_Comm parent, cudaStream_t compute_stream) : host_(parent), stream_(compute_stream) {}

StagedMpiComm::~StagedMpiComm() {
  for (StagedOp& op : ops_) {
    if (op.id == 0) continue;
    (void)take_handle_id(op.inner);  // host_'s destructor deals with its own side of the operation
    abandon(std::move(op.buf));
  }
  // free_ releases its buffers itself (each waits for its last copy out first).
}

bool StagedMpiComm::is_device(const void* p) {
  if (p == nullptr) return false;
  cudaPointerAttributes attr{};
  const cudaError_t rc = cudaPointerGetAttributes(&attr, p);
  if (rc == cudaErrorInvalidValue) {
    cudaGetLastError();  // older drivers reject plain host pointers instead of reporting "unregistered"
    return false;
  }
  // Anything else (a sticky error from a faulted kernel, say) must surface here: taken for host memory, a device
  // pointer would reach MPI, and the job would crash there with the real cause lost.
  ZT_CUDA_CHECK(rc);
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

bool StagedMpiComm::on_device(const void* a, const void* b, const char* what) {
  const bool da = is_device(a), db = is_device(b);
  ZT_CHECK(da == db, "{}: one buffer is device memory and the other host memory; pass both in the same space", what);
  return da;
}

StagedMpiComm::Pinned StagedMpiComm::lend(size_t n_bytes, void** host) {
  // Best fit among free buffers, else the largest one grown (else a new one): a repeated sequence of calls settles
  // on a fixed set of buffers, as MpiComm's own pool does.
  size_t best = free_.size();
  for (size_t i = 0; i < free_.size(); ++i) {
    if (free_[i]->capacity() >= n_bytes && (best == free_.size() || free_[i]->capacity() < free_[best]->capacity()))
      best = i;
  }
  if (best == free_.size() && !free_.empty()) {
    best = size_t(std::max_element(free_.begin(), free_.end(),
                                   [](const Pinned& a, const Pinned& b) { return a->capacity() < b->capacity(); }) -
                  free_.begin());
  }
  Pinned p;
  if (best < free_.size()) {
    p = std::move(free_[best]);
    free_[best] = std::move(free_.back());
    free_.pop_back();
  } else {
    p = std::make_unique<PinnedStaging>();
  }
  if (p->capacity() < n_bytes) ++pinned_allocations_;
  try {
    *host = p->get(n_bytes);  // waits for the last copy out of it; grows it if needed
  } catch (...) {
    give_back(std::move(p), false);
    throw;
  }
  return p;
}

void StagedMpiComm::give_back(Pinned p, bool copied_out) {
  if (!p) return;
  if (copied_out) p->record(stream_);
  free_.push_back(std::move(p));
}

void StagedMpiComm::abandon(Pinned p) { (void)p.release(); }

void StagedMpiComm::to_pinned(void* host_dst, const void* device_src, size_t n_bytes) {
  const auto t0 = std::chrono::steady_clock::now();
  ZT_CUDA_CHECK(cudaMemcpyAsync(host_dst, device_src, n_bytes, cudaMemcpyDeviceToHost, stream_));
  ZT_CUDA_CHECK(cudaStreamSynchronize(stream_));
  wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void StagedMpiComm::from_pinned(void* device_dst, const void* host_src, size_t n_bytes) {
  ZT_CUDA_CHECK(cudaMemcpyAsync(device_dst, host_src, n_bytes, cudaMemcpyHostToDevice, stream_));
}

void StagedMpiComm::device_copy(void* dst, const void* src, size_t n_bytes) {
  if (dst != src) ZT_CUDA_CHECK(cudaMemcpyAsync(dst, src, n_bytes, cudaMemcpyDeviceToDevice, stream_));
}

template <typename T>
void StagedMpiComm::all_reduce_staged(T* data, size_t n) {
  void* staging = nullptr;
  Pinned p = lend(n * sizeof(T), &staging);
  auto* host = static_cast<T*>(staging);
  try {
    to_pinned(host, data, n * sizeof(T));
    host_.all_reduce_sum(host, n);
    from_pinned(data, host, n * sizeof(T));
  } catch (...) {
    give_back(std::move(p), false);  // blocking calls: nothing is in flight once they return or throw
    throw;
  }
  give_back(std::move(p), true);
}

void StagedMpiComm::all_reduce_sum(float* data, size_t n) {
  if (n == 0 || world_size() == 1 || !is_device(data)) return host_.all_reduce_sum(data, n);
  all_reduce_staged(data, n);
}

void StagedMpiComm::all_reduce_sum(double* data, size_t n) {
  if (n == 0 || world_size() == 1 || !is_device(data)) return host_.all_reduce_sum(data, n);
  all_reduce_staged(data, n);
}

void StagedMpiComm::reduce_scatter_sum(const float* send, float* recv, size_t recv_n) {
  if (recv_n == 0 || !on_device(send, recv, "reduce_scatter_sum")) return host_.reduce_scatter_sum(send, recv, recv_n);
  if (world_size() == 1) return device_copy(recv, send, recv_n * sizeof(float));
  const size_t N = size_t(world_size()), mine = size_t(rank()) * recv_n;
  ZT_CHECK(recv_n <= std::numeric_limits<size_t>::max() / sizeof(float) / N,
           "reduce_scatter of {} elements per rank overflows the staging size", recv_n);
  void* staging = nullptr;
  Pinned p = lend(N * recv_n * sizeof(float), &staging);
  auto* host = static_cast<float*>(staging);
  try {
    to_pinned(host, send, N * recv_n * sizeof(float));
    host_.reduce_scatter_sum(host, host + mine, recv_n);  // in place on the host copy
    from_pinned(recv, host + mine, recv_n * sizeof(float));
  } catch (...) {
    give_back(std::move(p), false);
    throw;
  }
  give_back(std::move(p), true);
}

void StagedMpiComm::all_gather(const float* send, float* recv, size_t send_n) {
  if (send_n == 0 || !on_device(send, recv, "all_gather")) return host_.all_gather(send, recv, send_n);
  if (world_size() == 1) return device_copy(recv, send, send_n * sizeof(float));
  const size_t N = size_t(world_size()), mine = size_t(rank()) * send_n;
  ZT_CHECK(send_n <= std::numeric_limits<size_t>::max() / sizeof(float) / N,
           "all_gather of {} elements per rank overflows the staging size", send_n);
  void* staging = nullptr;
  Pinned p = lend(N * send_n * sizeof(float), &staging);
  auto* host = static_cast<float*>(staging);
  try {
    // This rank's block goes straight into its slot, so the host collective runs in place (send may alias recv's
    // slot on the device, as the contract allows).
    to_pinned(host + mine, send, send_n * sizeof(float));
    host_.all_gather(host + mine, host, send_n);
    from_pinned(recv, host, N * send_n * sizeof(float));
  } catch (...) {
    give_back(std::move(p), false);
    throw;
  }
  give_back(std::move(p), true);
}

void StagedMpiComm::broadcast(void* data, size_t n_bytes, int root) {
  if (n_bytes == 0 || world_size() == 1 || !is_device(data)) return host_.broadcast(data, n_bytes, root);
  ZT_CHECK(root >= 0 && root < world_size(), "broadcast root {} is not a rank of a {}-rank communicator", root,
           world_size());
  void* host = nullptr;
  Pinned p = lend(n_bytes, &host);
  const bool receiver = rank() != root;
  try {
    if (!receiver) to_pinned(host, data, n_bytes);
    host_.broadcast(host, n_bytes, root);
    if (receiver) from_pinned(data, host, n_bytes);
  } catch (...) {
    give_back(std::move(p), false);
    throw;
  }
  give_back(std::move(p), receiver);
}

StagedMpiComm::StagedOp& StagedMpiComm::new_op() {
  auto slot = std::find_if(ops_.begin(), ops_.end(), [](const StagedOp& op) { return op.id == 0; });
  StagedOp& op = slot != ops_.end() ? *slot : ops_.emplace_back();
  op.id = kStagedIdBit | next_id_++;
  op.host = op.dst = nullptr;
  op.src_offset = op.n_bytes = 0;
  return op;
}

template <typename Post>
CommHandle StagedMpiComm::start_staged(size_t staging_bytes, const void* send, size_t send_at, size_t send_bytes,
                                       void* dst, size_t back_at, size_t back_bytes, Post&& post) {
  void* staging = nullptr;
  Pinned p = lend(staging_bytes, &staging);
  auto* host = static_cast<std::byte*>(staging);
  try {
    to_pinned(host + send_at, send, send_bytes);
  } catch (...) {
    give_back(std::move(p), false);
    throw;
  }
  StagedOp& op = new_op();
  try {
    op.inner = post(reinterpret_cast<float*>(host));
  } catch (...) {
    // MPI may have started reading or writing the pinned copy: never reuse or free it.
    abandon(std::move(p));
    op.id = 0;
    throw;
  }
  op.buf = std::move(p);
  op.host = host;
  op.dst = dst;
  op.src_offset = back_at;
  op.n_bytes = back_bytes;
  return make_handle(op.id);
}

CommHandle StagedMpiComm::ireduce_scatter_sum(const float* send, float* recv, size_t recv_n) {
  if (recv_n == 0 || !on_device(send, recv, "ireduce_scatter_sum"))
    return host_.ireduce_scatter_sum(send, recv, recv_n);
  if (world_size() == 1) {
    device_copy(recv, send, recv_n * sizeof(float));
    return CommHandle();
  }
  const size_t N = size_t(world_size()), mine = size_t(rank()) * recv_n;
  ZT_CHECK(recv_n <= std::numeric_limits<size_t>::max() / sizeof(float) / N,
           "reduce_scatter of {} elements per rank overflows the staging size", recv_n);
  // The whole send buffer is staged; the sum lands in place in this rank's block, which wait() copies back.
  return start_staged(N * recv_n * sizeof(float), send, 0, N * recv_n * sizeof(float), recv, mine * sizeof(float),
                      recv_n * sizeof(float),
                      [&](float* host) { return host_.ireduce_scatter_sum(host, host + mine, recv_n); });
}

CommHandle StagedMpiComm::iall_gather(const float* send, float* recv, size_t send_n) {
  if (send_n == 0 || !on_device(send, recv, "iall_gather")) return host_.iall_gather(send, recv, send_n);
  if (world_size() == 1) {
    device_copy(recv, send, send_n * sizeof(float));
    return CommHandle();
  }
  const size_t N = size_t(world_size()), mine = size_t(rank()) * send_n;
  ZT_CHECK(send_n <= std::numeric_limits<size_t>::max() / sizeof(float) / N,
           "all_gather of {} elements per rank overflows the staging size", send_n);
  // This rank's block is staged into its own slot; the gather runs in place and wait() copies all of it back.
  return start_staged(N * send_n * sizeof(float), send, mine * sizeof(float), send_n * sizeof(float), recv, 0,
                      N * send_n * sizeof(float),
                      [&](float* host) { return host_.iall_gather(host + mine, host, send_n); });
}

void StagedMpiComm::wait(CommHandle& h) {
  const uint64_t id = take_handle_id(h);
  if (id == 0) return;
  if ((id & kStagedIdBit) == 0) {
    CommHandle host_op = make_handle(id);
    return host_.wait(host_op);
  }
  auto it = std::find_if(ops_.begin(), ops_.end(), [id](const StagedOp& op) { return op.id == id; });
  ZT_CHECK(it != ops_.end(), "wait() on a handle (operation {}) that this communicator did not start",
           id & ~kStagedIdBit);
  StagedOp& op = *it;
  // If the MPI side throws, the slot stays taken and its buffer is leaked at destruction (MPI may still use it).
  host_.wait(op.inner);
  from_pinned(op.dst, static_cast<const std::byte*>(op.host) + op.src_offset, op.n_bytes);
  give_back(std::move(op.buf), true);
  op.id = 0;
}

}  // namespace zt::cuda
