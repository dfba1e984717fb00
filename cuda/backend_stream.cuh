// The CUDA backend's compute stream and device, for the device-memory comms that must order their copies and
// collectives against the ops (internal to cuda/: CUDA types in the interface).
#pragma once

#include <cuda_runtime.h>

#include "core/backend.hpp"

namespace zt::cuda {

/// The stream every op of `backend` runs on; throws zt::Error when `backend` is not the CUDA backend.
cudaStream_t backend_stream(Backend& backend);
/// The CUDA device `backend` runs on; throws zt::Error when `backend` is not the CUDA backend.
int backend_device(Backend& backend);

}  // namespace zt::cuda
