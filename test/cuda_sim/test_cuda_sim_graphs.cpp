// The CUDA simulator's stream capture and graphs (graphs.cpp): captured work is recorded, not run, and replays with
// the pointers and by-value arguments it was captured with; what the driver refuses during a capture is refused.
// Part of test_cuda_sim, compiled like a .cu file of cuda/ for the simulator.
#include <catch2/catch.hpp>
#include <vector>

#include "cuda/cuda_common.cuh"
#include "test/cuda_sim/sim_runtime.hpp"

namespace {

__global__ void add_kernel(float* out, float v) { out[threadIdx.x] += v; }

struct Buffers {
  float* d = nullptr;
  cudaStream_t stream = nullptr;
  Buffers() {
    REQUIRE(cudaMalloc(reinterpret_cast<void**>(&d), 2 * 32 * sizeof(float)) == cudaSuccess);
    REQUIRE(cudaMemset(d, 0, 2 * 32 * sizeof(float)) == cudaSuccess);
    REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  }
  ~Buffers() {
    cudaStreamDestroy(stream);
    cudaFree(d);
  }
  std::vector<float> host() const {
    std::vector<float> h(64);
    REQUIRE(cudaMemcpy(h.data(), d, h.size() * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess);
    return h;
  }
};

// Ends the capture on `stream`, expecting it refused as invalidated, with no graph.
void expect_invalidated(cudaStream_t stream) {
  cudaGraph_t graph = reinterpret_cast<cudaGraph_t>(1);
  CHECK(cudaStreamEndCapture(stream, &graph) == cudaErrorStreamCaptureInvalidated);
  CHECK(graph == nullptr);
  cudaGetLastError();
}

}  // namespace

TEST_CASE("a captured stream records kernels, memsets and copies; a launch replays them as captured",
          "[cuda_sim][graphs]") {
  Buffers b;
  cudaStreamCaptureStatus status;
  REQUIRE(cudaStreamIsCapturing(b.stream, &status) == cudaSuccess);
  CHECK(status == cudaStreamCaptureStatusNone);
  REQUIRE(cudaStreamBeginCapture(b.stream, cudaStreamCaptureModeGlobal) == cudaSuccess);
  REQUIRE(cudaStreamIsCapturing(b.stream, &status) == cudaSuccess);
  CHECK(status == cudaStreamCaptureStatusActive);
  float v = 2.0f;
  float* out = b.d;
  ZT_LAUNCH(add_kernel, 1, 32, 0, b.stream)(out, v);
  REQUIRE(cudaMemcpyAsync(b.d + 32, b.d, 32 * sizeof(float), cudaMemcpyDeviceToDevice, b.stream) == cudaSuccess);
  REQUIRE(cudaMemsetAsync(b.d, 0, sizeof(float), b.stream) == cudaSuccess);
  v = 100.0f;     // a by-value argument changed after the capture: the graph keeps 2
  out = nullptr;  // so does the pointer
  cudaGraph_t graph = nullptr;
  REQUIRE(cudaStreamEndCapture(b.stream, &graph) == cudaSuccess);
  REQUIRE(graph != nullptr);
  CHECK(b.host()[5] == 0.0f);  // recorded, not run
  cudaGraphExec_t exec = nullptr;
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  REQUIRE(cudaGraphDestroy(graph) == cudaSuccess);  // the executable keeps what it needs
  for (int launch = 1; launch <= 2; ++launch) {
    REQUIRE(cudaGraphLaunch(exec, b.stream) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(b.stream) == cudaSuccess);
    const std::vector<float> h = b.host();
    CHECK(h[0] == 0.0f);                   // the memset, after the add
    CHECK(h[5] == 2.0f * float(launch));   // the add, with the captured value
    CHECK(h[37] == 2.0f * float(launch));  // the copy, after the add
  }
  CHECK(cudaGraphExecDestroy(exec) == cudaSuccess);
}

TEST_CASE("cudaMalloc and cudaFree during a capture are refused and invalidate it", "[cuda_sim][graphs]") {
  Buffers b;
  REQUIRE(cudaStreamBeginCapture(b.stream, cudaStreamCaptureModeGlobal) == cudaSuccess);
  void* p = nullptr;
  CHECK(cudaMalloc(&p, 64) == cudaErrorStreamCaptureUnsupported);
  cudaStreamCaptureStatus status;
  REQUIRE(cudaStreamIsCapturing(b.stream, &status) == cudaSuccess);
  CHECK(status == cudaStreamCaptureStatusInvalidated);
  ZT_LAUNCH(add_kernel, 1, 32, 0, b.stream)(b.d, 1.0f);  // after the refusal: dropped with the capture
  expect_invalidated(b.stream);
  REQUIRE(cudaStreamSynchronize(b.stream) == cudaSuccess);
  CHECK(b.host()[0] == 0.0f);

  REQUIRE(cudaStreamBeginCapture(b.stream, cudaStreamCaptureModeGlobal) == cudaSuccess);
  CHECK(cudaFree(b.d) == cudaErrorStreamCaptureUnsupported);  // and the block is still there
  expect_invalidated(b.stream);
  CHECK(b.host()[0] == 0.0f);
}

TEST_CASE("waiting for the capturing stream or the device, and synchronous copies, are refused in a capture",
          "[cuda_sim][graphs]") {
  Buffers b;
  REQUIRE(cudaStreamBeginCapture(b.stream, cudaStreamCaptureModeGlobal) == cudaSuccess);
  CHECK(cudaStreamSynchronize(b.stream) == cudaErrorStreamCaptureUnsupported);
  expect_invalidated(b.stream);

  REQUIRE(cudaStreamBeginCapture(b.stream, cudaStreamCaptureModeGlobal) == cudaSuccess);
  CHECK(cudaDeviceSynchronize() == cudaErrorStreamCaptureUnsupported);
  expect_invalidated(b.stream);

  std::vector<float> host(32, 1.0f);
  REQUIRE(cudaStreamBeginCapture(b.stream, cudaStreamCaptureModeGlobal) == cudaSuccess);
  CHECK(cudaMemcpy(b.d, host.data(), 32 * sizeof(float), cudaMemcpyHostToDevice) == cudaErrorStreamCaptureImplicit);
  expect_invalidated(b.stream);

  // From pageable memory: its bytes would be frozen into the graph.
  REQUIRE(cudaStreamBeginCapture(b.stream, cudaStreamCaptureModeGlobal) == cudaSuccess);
  CHECK(cudaMemcpyAsync(b.d, host.data(), 32 * sizeof(float), cudaMemcpyHostToDevice, b.stream) ==
        cudaErrorStreamCaptureUnsupported);
  expect_invalidated(b.stream);
  CHECK(b.host()[0] == 0.0f);
}

TEST_CASE("streams outside the capture: the legacy stream and cross-stream events are refused", "[cuda_sim][graphs]") {
  Buffers b;
  REQUIRE(cudaStreamBeginCapture(b.stream, cudaStreamCaptureModeGlobal) == cudaSuccess);
  ZT_LAUNCH(add_kernel, 1, 32, 0, nullptr)(b.d, 1.0f);  // the legacy stream would join every stream
  CHECK(cudaGetLastError() == cudaErrorStreamCaptureImplicit);
  expect_invalidated(b.stream);

  cudaStream_t other;
  REQUIRE(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking) == cudaSuccess);
  cudaEvent_t event;
  REQUIRE(cudaEventCreateWithFlags(&event, cudaEventDisableTiming) == cudaSuccess);
  REQUIRE(cudaStreamBeginCapture(b.stream, cudaStreamCaptureModeGlobal) == cudaSuccess);
  REQUIRE(cudaEventRecord(event, b.stream) == cudaSuccess);
  CHECK(cudaStreamWaitEvent(other, event, 0) == cudaErrorStreamCaptureIsolation);
  CHECK(cudaEventSynchronize(event) == cudaErrorStreamCaptureUnsupported);
  expect_invalidated(b.stream);
  CHECK(cudaGraphLaunch(nullptr, b.stream) == cudaErrorInvalidValue);
  cudaGetLastError();
  cudaEventDestroy(event);
  cudaStreamDestroy(other);
  CHECK(b.host()[0] == 0.0f);
}
