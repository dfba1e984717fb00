// Reusable device scratch and pinned host staging (see device_memory.cuh).
#include <atomic>

#include "cuda/cuda_common.cuh"
#include "cuda/device_memory.cuh"

namespace zt::cuda {

namespace {
std::atomic<uint64_t> scratch_reallocations{0};
}  // namespace

DeviceScratch::~DeviceScratch() {
  if (ptr_ != nullptr) cudaFree(ptr_);  // no throw from a destructor; a failure here changes nothing
}

void* DeviceScratch::get(size_t n_bytes) {
  if (n_bytes <= capacity_ && ptr_ != nullptr) return ptr_;
  if (ptr_ != nullptr) {
    ZT_CUDA_CHECK(cudaDeviceSynchronize());  // kernels in flight may still use the old block
    ZT_CUDA_CHECK(cudaFree(ptr_));
    ptr_ = nullptr;
    capacity_ = 0;
  }
  // Grow by half again so that a slowly rising size does not reallocate on every call.
  const size_t n_alloc = align_bytes(n_bytes + n_bytes / 2 + 256);
  ZT_CUDA_CHECK(cudaMalloc(&ptr_, n_alloc));
  capacity_ = n_alloc;
  scratch_reallocations.fetch_add(1);
  return ptr_;
}

uint64_t DeviceScratch::reallocations() { return scratch_reallocations.load(); }

PinnedStaging::~PinnedStaging() {
  if (done_ != nullptr) {
    cudaEventSynchronize(done_);
    cudaEventDestroy(done_);
  }
  if (ptr_ != nullptr) cudaFreeHost(ptr_);
}

void* PinnedStaging::get(size_t n_bytes) {
  if (pending_) {
    ZT_CUDA_CHECK(cudaEventSynchronize(done_));
    pending_ = false;
  }
  if (n_bytes > capacity_ || ptr_ == nullptr) {
    if (ptr_ != nullptr) ZT_CUDA_CHECK(cudaFreeHost(ptr_));
    ptr_ = nullptr;
    const size_t n_alloc = align_bytes(n_bytes + n_bytes / 2 + 256);
    ZT_CUDA_CHECK(cudaMallocHost(&ptr_, n_alloc));
    capacity_ = n_alloc;
  }
  return ptr_;
}

void PinnedStaging::record(cudaStream_t stream) {
  if (done_ == nullptr) ZT_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  ZT_CUDA_CHECK(cudaEventRecord(done_, stream));
  pending_ = true;
}

}  // namespace zt::cuda
