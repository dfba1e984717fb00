// Device, precision and comm for `zerotrain train`: --device, --dtype, --comm, and local rank -> GPU.
#pragma once

#include <memory>
#include <string>

#include "core/backend.hpp"
#include "core/config.hpp"
#include "sharding/comm_mpi.hpp"

namespace zt {

/// What a rank trains on: the backend, the data comm over its memory (ZeRO's collectives), and a line for the log.
struct RunDevice {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Comm> comm;  ///< declared after backend, so destroyed first (it orders work on its stream)
  std::string description;     ///< e.g. "cuda:0 NVIDIA H100 ... | dtype bf16 | comm nccl (NCCL 2.28.9 ...)"
};

/// Resolves t.device / t.dtype / t.comm ("auto" included) the same way on every rank, writes the resolved values
/// back into t, and builds the backend (GPU = local rank mod the node's device count) and the data comm: MpiComm on
/// the CPU, the staged MPI or NCCL comm on GPUs (the run's host control comm is the caller's). Collective over
/// MPI_COMM_WORLD. Throws zt::Error, on every rank alike, for a choice this job cannot run: --device cuda in a build
/// without CUDA or with a rank that sees no GPU, --dtype bf16 on the CPU, --comm nccl where ranks share a GPU or
/// NCCL cannot be loaded. `threads` sets the CPU backend's OpenMP threads.
RunDevice make_run_device(TrainConfig& t, int threads);

/// Lines for `zerotrain devices`: the CUDA devices this process sees, and whether NCCL can be loaded.
std::string describe_devices();

}  // namespace zt
