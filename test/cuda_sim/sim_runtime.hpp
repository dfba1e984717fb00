// The CUDA simulator's host side, shared by its scheduler, runtime and cuBLASLt stand-ins (not for kernels).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace zt_sim {

/// Sets the sticky error cudaGetLastError returns (and clears), and returns rc.
cudaError_t set_last_error(cudaError_t rc);
/// A kernel fault or refused launch: printed to stderr (with the rank's environment, so mpirun keeps it apart), and
/// kept for last_failure().
void report_failure(const std::string& what);
/// The last fault or refused launch, empty if none.
std::string last_failure();

/// Stream order: work queued on a stream runs, in order, when the host waits for it (cudaStreamSynchronize, an
/// event it recorded, cudaDeviceSynchronize, a copy into pageable memory, cudaFree) and not before, so host code
/// that reads a result, or reuses a buffer, before it has waited sees what a GPU would let it see: stale data.
/// nullptr is the legacy default stream.
void enqueue(cudaStream_t stream, std::function<void()> work);
void drain(cudaStream_t stream);
void drain_all();

/// Stream capture (graphs.cpp). take_captured: when `stream` is capturing, takes `work` into its capture (true);
/// work on the legacy stream during a capture is refused, and the capture invalidated (true). refuse_during_capture:
/// when `stream` (or, with any_stream, any stream) is capturing, invalidates that capture and returns `rc` (the call
/// is refused, as the driver refuses it); else cudaSuccess.
bool take_captured(cudaStream_t stream, std::function<void()>& work);
cudaError_t refuse_during_capture(cudaStream_t stream, bool any_stream,
                                  cudaError_t rc = cudaErrorStreamCaptureUnsupported);
bool is_capturing(cudaStream_t stream);

/// Runs one queued grid now (on the calling thread): the scheduler's part of a launch.
struct LaunchConfig;
void run_grid(const LaunchConfig& config, const std::function<void()>& thread_body);

/// True when [p, p + n_bytes) lies inside one live device allocation.
bool is_device_range(const void* p, size_t n_bytes);

/// How many launches so far were of kernels whose name contains name_part: for tests that must know which of two
/// kernel sets with the same results ran.
int launch_count(const std::string& name_part);

/// Warps and lanes taken in reverse order (as ZT_CUDA_SIM_ORDER=reverse does), for the simulator's own tests.
void set_reverse_order(bool reverse);

float bf16_bits_to_float(uint16_t bits);

/// cuBLASLt products run so far whose output D was bf16: for tests that must know a product wrote bf16 memory itself
/// rather than through the fp32 fallback (the same bits on the simulator).
int bf16_output_products();

/// cudaFuncSetAttribute's per-kernel opt-in to more dynamic shared memory (the only attribute simulated).
cudaError_t set_kernel_attribute(const void* kernel, cudaFuncAttribute attr, int value);

}  // namespace zt_sim
