// What the process sees of its CUDA devices (cuda/cuda_backend.hpp): how many, what each is, memory in use.
#include <cuda_runtime.h>

#include <string>

#include "cuda/cuda_backend.hpp"
#include "cuda/cuda_common.cuh"

namespace zt {

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver / no device" error for later calls
    return 0;
  }
  return n;
}

std::string cuda_device_description(int device) {
  const int n_devices = cuda_device_count();
  ZT_CHECK(device >= 0 && device < n_devices, "CUDA device {} does not exist: this process sees {} device(s)", device,
           n_devices);
  cudaDeviceProp prop{};
  ZT_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return fmt::format("{} (sm_{}{}, {} SMs, {:.1f} GiB)", prop.name, prop.major, prop.minor, prop.multiProcessorCount,
                     double(prop.totalGlobalMem) / double(1ull << 30));
}

size_t cuda_device_memory_used() {
  size_t free_bytes = 0, total_bytes = 0;
  ZT_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return total_bytes - free_bytes;
}

}  // namespace zt
