// The CUDA simulator's runtime API: the calls of cuda/ done on host memory. Kernels, async copies and memsets are
// queued on their stream and run in order when the host waits for that stream (sim_runtime.hpp), so a result read
// or a buffer reused before the wait shows stale or changed data, as it may on a GPU. Waiting on an event runs its
// stream's queue, and a stream waiting on an event runs the event's stream: one order the real streams could take.
// Device allocations are tracked: copies, memsets and frees that fall outside one are refused as the driver would
// (cudaErrorInvalidValue), and new allocations are filled with 0xff bytes (NaN floats) where cudaMalloc leaves
// whatever was there. One device, reported as an sm_90 part named for what it is.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "test/cuda_sim/sim_runtime.hpp"

namespace zt_sim {
namespace {

constexpr size_t kDeviceBytes = size_t(80) << 30;  // what cudaMemGetInfo reports as the total
constexpr size_t kAlignment = 256;                 // cudaMalloc's alignment

struct State {
  std::mutex mutex;
  std::map<uintptr_t, size_t> device;  // start -> bytes
  std::map<uintptr_t, size_t> pinned;
  size_t device_bytes = 0;
  cudaError_t last_error = cudaSuccess;
  std::string last_failure;
};
State& state() {
  static State s;
  return s;
}

struct Event {
  cudaStream_t stream = nullptr;  // where it was last recorded
  bool captured = false;          // recorded into a capture: a node of a graph, not a point in stream order
};

struct Queues {
  std::mutex mutex;
  std::map<cudaStream_t, std::deque<std::function<void()>>> work;
};
Queues& queues() {
  static Queues q;
  return q;
}
struct Stream {};  // a stream is its queue (Queues); the object only gives it an address

bool inside(const std::map<uintptr_t, size_t>& allocs, const void* p, size_t n) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  auto it = allocs.upper_bound(a);
  if (it == allocs.begin()) return false;
  --it;
  return a >= it->first && a + n <= it->first + it->second;
}

cudaError_t fail(cudaError_t rc) { return set_last_error(rc); }

// The kind a pointer range has: 1 device, 2 pinned host, 0 other host memory.
int kind_of(const void* p, size_t n) {
  State& s = state();
  if (inside(s.device, p, n)) return 1;
  if (inside(s.pinned, p, n)) return 2;
  return 0;
}

// A copy, checked now; `stream` null and `async` false: cudaMemcpy (after the legacy stream's queued work).
// Asynchronously: a pageable source is read now (the driver stages it before returning), a pageable destination is
// written before returning (after the stream's queued work); pinned and device memory are read and written when the
// stream gets there.
cudaError_t copy(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t stream, bool async) {
  if (n == 0) return cudaSuccess;
  std::unique_lock<std::mutex> lock(state().mutex);
  const int d = kind_of(dst, n), s = kind_of(src, n);
  lock.unlock();
  bool ok = false;
  switch (kind) {
    case cudaMemcpyHostToDevice:
      ok = d == 1 && s != 1;
      break;
    case cudaMemcpyDeviceToHost:
      ok = d != 1 && s == 1;
      break;
    case cudaMemcpyDeviceToDevice:
      ok = d == 1 && s == 1;
      break;
    case cudaMemcpyHostToHost:
      ok = d != 1 && s != 1;
      break;
    case cudaMemcpyDefault:
      ok = true;
      break;
  }
  if (!ok) return fail(cudaErrorInvalidValue);
  // A capture cannot hold a synchronous copy or one through pageable memory (its bytes would be frozen into the
  // graph): refused, as the driver refuses them.
  if (!async) {
    if (const cudaError_t rc = refuse_during_capture(nullptr, true, cudaErrorStreamCaptureImplicit)) return rc;
  } else if (d == 0 || s == 0) {
    if (const cudaError_t rc = refuse_during_capture(stream, false)) return rc;
  }
  if (!async || d == 0) {  // synchronous, or into pageable memory: done when the call returns
    drain(stream);
    std::memmove(dst, src, n);
    return cudaSuccess;
  }
  if (s == 0) {  // from pageable memory: what it holds now
    auto staged = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char*>(src),
                                                               static_cast<const unsigned char*>(src) + n);
    enqueue(stream, [dst, staged] { std::memcpy(dst, staged->data(), staged->size()); });
  } else {
    enqueue(stream, [dst, src, n] { std::memmove(dst, src, n); });
  }
  return cudaSuccess;
}

// Exactly n bytes (at least 1), 256-byte aligned: under AddressSanitizer a kernel that reads or writes past what was
// asked for is caught at the first byte beyond it.
void* host_alloc(std::map<uintptr_t, size_t>& allocs, size_t n) {
  void* p = nullptr;
  if (posix_memalign(&p, kAlignment, n == 0 ? 1 : n) != 0) return nullptr;
  allocs[reinterpret_cast<uintptr_t>(p)] = n;
  return p;
}

// fail() for callers that hold the state's lock.
cudaError_t fail_locked(cudaError_t rc) {
  state().last_error = rc;
  return rc;
}

// Frees the block of `allocs` that starts at ptr (the state's lock held); its size goes to *freed_bytes.
cudaError_t host_free(std::map<uintptr_t, size_t>& allocs, void* ptr, size_t* freed_bytes) {
  auto it = allocs.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == allocs.end()) return fail_locked(cudaErrorInvalidValue);
  if (freed_bytes != nullptr) *freed_bytes = it->second;
  allocs.erase(it);
  std::free(ptr);
  return cudaSuccess;
}

}  // namespace

cudaError_t set_last_error(cudaError_t rc) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (rc != cudaSuccess) state().last_error = rc;
  return rc;
}

void report_failure(const std::string& what) {
  std::fprintf(stderr, "zerotrain CUDA simulator: %s\n", what.c_str());
  std::lock_guard<std::mutex> lock(state().mutex);
  state().last_failure = what;
}

std::string last_failure() {
  std::lock_guard<std::mutex> lock(state().mutex);
  return state().last_failure;
}

void enqueue(cudaStream_t stream, std::function<void()> work) {
  if (take_captured(stream, work)) return;
  Queues& q = queues();
  std::lock_guard<std::mutex> lock(q.mutex);
  q.work[stream].push_back(std::move(work));
}

void drain(cudaStream_t stream) {
  Queues& q = queues();
  for (;;) {
    std::function<void()> next;
    {
      std::lock_guard<std::mutex> lock(q.mutex);
      auto it = q.work.find(stream);
      if (it == q.work.end() || it->second.empty()) return;
      next = std::move(it->second.front());
      it->second.pop_front();
    }
    next();  // without the lock: a copy or kernel queues nothing, but other threads may
  }
}

void drain_all() {
  std::vector<cudaStream_t> streams;
  {
    std::lock_guard<std::mutex> lock(queues().mutex);
    for (const auto& kv : queues().work) streams.push_back(kv.first);
  }
  for (cudaStream_t s : streams) drain(s);
}

bool is_device_range(const void* p, size_t n_bytes) {
  std::lock_guard<std::mutex> lock(state().mutex);
  return inside(state().device, p, n_bytes);
}

// What a wait returns: the error a queued kernel left (a fault), once.
cudaError_t after_wait() {
  std::lock_guard<std::mutex> lock(state().mutex);
  const cudaError_t rc = state().last_error;
  state().last_error = cudaSuccess;
  return rc;
}

}  // namespace zt_sim

using zt_sim::after_wait;
using zt_sim::fail;
using zt_sim::state;

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice); }

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return fail(cudaErrorInvalidDevice);
  std::memset(prop, 0, sizeof *prop);
  std::snprintf(prop->name, sizeof prop->name, "zerotrain CUDA simulator (CPU, sm_90 model)");
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = 132;
  prop->totalGlobalMem = zt_sim::kDeviceBytes;
  prop->sharedMemPerBlock = size_t(48) << 10;
  prop->sharedMemPerBlockOptin = 232448;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
  if (const cudaError_t rc = zt_sim::refuse_during_capture(nullptr, true)) return rc;
  zt_sim::drain_all();
  return after_wait();
}

cudaError_t cudaGetLastError(void) {
  std::lock_guard<std::mutex> lock(state().mutex);
  const cudaError_t rc = state().last_error;
  state().last_error = cudaSuccess;
  return rc;
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure (the simulator printed why)";
    case cudaErrorNotSupported:
      return "operation not supported";
    case cudaErrorStreamCaptureUnsupported:
      return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
      return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureIsolation:
      return "dependency created on uncaptured work in another stream";
    case cudaErrorStreamCaptureImplicit:
      return "operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorIllegalState:
      return "the operation is not permitted in the current state (stream capture)";
    default:
      return "unknown error";
  }
}

cudaError_t cudaMalloc(void** ptr, size_t size) {
  if (const cudaError_t rc = zt_sim::refuse_during_capture(nullptr, true)) return rc;
  std::lock_guard<std::mutex> lock(state().mutex);
  void* p = state().device_bytes + size > zt_sim::kDeviceBytes ? nullptr : zt_sim::host_alloc(state().device, size);
  *ptr = p;
  if (p == nullptr) return zt_sim::fail_locked(cudaErrorMemoryAllocation);
  std::memset(p, 0xff, size);
  state().device_bytes += size;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  if (const cudaError_t rc = zt_sim::refuse_during_capture(nullptr, true)) return rc;
  zt_sim::drain_all();  // cudaFree waits for the device, so queued work may still use the block
  std::lock_guard<std::mutex> lock(state().mutex);
  size_t freed = 0;
  const cudaError_t rc = zt_sim::host_free(state().device, ptr, &freed);
  state().device_bytes -= freed;
  return rc;
}

cudaError_t cudaMallocHost(void** ptr, size_t size) {
  if (const cudaError_t rc = zt_sim::refuse_during_capture(nullptr, true)) return rc;
  std::lock_guard<std::mutex> lock(state().mutex);
  *ptr = zt_sim::host_alloc(state().pinned, size);
  return *ptr != nullptr ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaHostAlloc(void** ptr, size_t size, unsigned int /*flags*/) { return cudaMallocHost(ptr, size); }

cudaError_t cudaFreeHost(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  if (const cudaError_t rc = zt_sim::refuse_during_capture(nullptr, true)) return rc;
  zt_sim::drain_all();
  std::lock_guard<std::mutex> lock(state().mutex);
  return zt_sim::host_free(state().pinned, ptr, nullptr);
}

cudaError_t cudaHostGetDevicePointer(void** device, void* host, unsigned int /*flags*/) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (!zt_sim::inside(state().pinned, host, 1)) return zt_sim::fail_locked(cudaErrorInvalidValue);
  *device = host;
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  std::lock_guard<std::mutex> lock(state().mutex);
  *total_bytes = zt_sim::kDeviceBytes;
  *free_bytes = zt_sim::kDeviceBytes - state().device_bytes;
  return cudaSuccess;
}

cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attr, const void* ptr) {
  std::lock_guard<std::mutex> lock(state().mutex);
  std::memset(attr, 0, sizeof *attr);
  const int kind = zt_sim::kind_of(ptr, 1);
  attr->type = kind == 1 ? cudaMemoryTypeDevice : kind == 2 ? cudaMemoryTypeHost : cudaMemoryTypeUnregistered;
  attr->device = 0;
  attr->devicePointer = kind != 0 ? const_cast<void*>(ptr) : nullptr;
  attr->hostPointer = kind == 2 ? const_cast<void*>(ptr) : nullptr;
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  return zt_sim::copy(dst, src, count, kind, nullptr, false);
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
  return zt_sim::copy(dst, src, count, kind, stream, true);
}

cudaError_t cudaMemset(void* ptr, int value, size_t count) {
  if (count == 0) return cudaSuccess;
  if (!zt_sim::is_device_range(ptr, count)) return fail(cudaErrorInvalidValue);
  if (const cudaError_t rc = zt_sim::refuse_during_capture(nullptr, true, cudaErrorStreamCaptureImplicit)) return rc;
  zt_sim::drain(nullptr);
  std::memset(ptr, value, count);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (!zt_sim::is_device_range(ptr, count)) return fail(cudaErrorInvalidValue);
  zt_sim::enqueue(stream, [ptr, value, count] { std::memset(ptr, value, count); });
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int /*flags*/) {
  *stream = reinterpret_cast<cudaStream_t>(new zt_sim::Stream{});
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  zt_sim::drain(stream);  // work queued on a destroyed stream still completes
  {
    std::lock_guard<std::mutex> lock(zt_sim::queues().mutex);
    zt_sim::queues().work.erase(stream);
  }
  delete reinterpret_cast<zt_sim::Stream*>(stream);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (const cudaError_t rc = zt_sim::refuse_during_capture(stream, false)) return rc;
  zt_sim::drain(stream);
  return after_wait();
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int /*flags*/) {
  if (event == nullptr) return fail(cudaErrorInvalidValue);
  auto* e = reinterpret_cast<zt_sim::Event*>(event);
  // Joining another stream into a capture through an event is not modelled: refused, in either direction.
  const bool in_capture = e->captured && zt_sim::is_capturing(e->stream);
  if (in_capture != zt_sim::is_capturing(stream))
    return zt_sim::refuse_during_capture(in_capture ? e->stream : stream, false, cudaErrorStreamCaptureIsolation);
  if (e->stream != stream) zt_sim::drain(e->stream);  // what `stream` does next comes after the event
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int /*flags*/) {
  *event = reinterpret_cast<cudaEvent_t>(new zt_sim::Event{});
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  if (event != nullptr) zt_sim::drain(reinterpret_cast<zt_sim::Event*>(event)->stream);  // a queued record uses it
  delete reinterpret_cast<zt_sim::Event*>(event);
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (event == nullptr) return fail(cudaErrorInvalidValue);
  auto* e = reinterpret_cast<zt_sim::Event*>(event);
  e->stream = stream;  // nothing is timed: waiting on the event runs this stream's queue
  e->captured = zt_sim::is_capturing(stream);
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (event == nullptr) return fail(cudaErrorInvalidValue);
  const auto* e = reinterpret_cast<zt_sim::Event*>(event);
  if (e->captured && zt_sim::is_capturing(e->stream))  // a node of a graph being built: nothing to wait for
    return zt_sim::refuse_during_capture(e->stream, false);
  zt_sim::drain(reinterpret_cast<zt_sim::Event*>(event)->stream);
  return after_wait();
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  return zt_sim::set_kernel_attribute(func, attr, value);
}

}  // extern "C"
