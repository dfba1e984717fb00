// The CUDA simulator's stream capture and graphs: work issued to a capturing stream is recorded, not run, with the
// pointers and by-value arguments it was issued with, and a launched graph queues that same work again on its
// stream. What the driver refuses during a global-mode capture is refused here the same way (runtime.cpp asks
// refuse_during_capture): allocation and freeing, waiting for the device or the capturing stream, synchronous or
// pageable-memory copies, and work on the legacy stream; the capture is then invalidated, and cudaStreamEndCapture
// says so with cudaErrorStreamCaptureInvalidated.
#include <cuda_runtime.h>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "test/cuda_sim/sim_runtime.hpp"

struct CUgraph_st {
  std::vector<std::function<void()>> work;
};
struct CUgraphExec_st {
  std::vector<std::function<void()>> work;
};

namespace zt_sim {
namespace {

struct Capture {
  std::vector<std::function<void()>> work;
  bool invalidated = false;
};
struct Captures {
  std::mutex mutex;
  std::map<cudaStream_t, Capture> active;
};
Captures& captures() {
  static Captures c;
  return c;
}

}  // namespace

bool take_captured(cudaStream_t stream, std::function<void()>& work) {
  Captures& c = captures();
  std::lock_guard<std::mutex> lock(c.mutex);
  if (c.active.empty()) return false;
  if (stream == nullptr) {
    // The legacy stream synchronizes with every stream, so a global capture cannot go on: the work is refused.
    for (auto& kv : c.active) kv.second.invalidated = true;
    set_last_error(cudaErrorStreamCaptureImplicit);
    return true;
  }
  auto it = c.active.find(stream);
  if (it == c.active.end()) return false;
  if (!it->second.invalidated) it->second.work.push_back(std::move(work));
  return true;
}

cudaError_t refuse_during_capture(cudaStream_t stream, bool any_stream, cudaError_t rc) {
  Captures& c = captures();
  std::lock_guard<std::mutex> lock(c.mutex);
  bool refused = false;
  for (auto& kv : c.active)
    if (any_stream || kv.first == stream) {
      kv.second.invalidated = true;
      refused = true;
    }
  return refused ? set_last_error(rc) : cudaSuccess;
}

bool is_capturing(cudaStream_t stream) {
  Captures& c = captures();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.active.count(stream) > 0;
}

}  // namespace zt_sim

extern "C" {

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode mode) {
  // Only global mode is modelled: the strictest, and the one cuda/cuda_graph.cu uses.
  if (mode != cudaStreamCaptureModeGlobal) return zt_sim::set_last_error(cudaErrorNotSupported);
  if (stream == nullptr) return zt_sim::set_last_error(cudaErrorStreamCaptureUnsupported);
  zt_sim::Captures& c = zt_sim::captures();
  std::lock_guard<std::mutex> lock(c.mutex);
  if (c.active.count(stream) > 0) return zt_sim::set_last_error(cudaErrorIllegalState);
  c.active[stream] = zt_sim::Capture{};
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  *graph = nullptr;
  zt_sim::Captures& c = zt_sim::captures();
  std::lock_guard<std::mutex> lock(c.mutex);
  auto it = c.active.find(stream);
  if (it == c.active.end()) return zt_sim::set_last_error(cudaErrorIllegalState);
  zt_sim::Capture capture = std::move(it->second);
  c.active.erase(it);
  if (capture.invalidated) return zt_sim::set_last_error(cudaErrorStreamCaptureInvalidated);
  *graph = new CUgraph_st{std::move(capture.work)};
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, enum cudaStreamCaptureStatus* status) {
  zt_sim::Captures& c = zt_sim::captures();
  std::lock_guard<std::mutex> lock(c.mutex);
  auto it = c.active.find(stream);
  *status = it == c.active.end()     ? cudaStreamCaptureStatusNone
            : it->second.invalidated ? cudaStreamCaptureStatusInvalidated
                                     : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long /*flags*/) {
  if (graph == nullptr) return zt_sim::set_last_error(cudaErrorInvalidValue);
  *exec = new CUgraphExec_st{graph->work};  // the executable keeps its own copy: the graph may be destroyed
  return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  if (exec == nullptr) return zt_sim::set_last_error(cudaErrorInvalidValue);
  // A graph launched into a capture (a child graph) is not modelled.
  if (zt_sim::is_capturing(stream)) return zt_sim::refuse_during_capture(stream, false);
  for (const auto& w : exec->work) zt_sim::enqueue(stream, w);
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete exec;
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete graph;
  return cudaSuccess;
}

}  // extern "C"
