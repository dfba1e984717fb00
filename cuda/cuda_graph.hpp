// What the CUDA backend's graph recorder (--cuda_graphs on) did: counts for tests, logs and the GPU check. No CUDA
// headers, so plain C++ includes it.
#pragma once

#include <cstdint>

#include "core/backend.hpp"

namespace zt {

/// Counters of a backend made with --cuda_graphs on (cuda/cuda_graph.cuh says what each path is).
struct CudaGraphStats {
  uint64_t regions = 0;           ///< begin_graph / end_graph pairs
  uint64_t eager_regions = 0;     ///< regions run op by op: warm-up, a new op sequence, or a refused capture
  uint64_t captures = 0;          ///< regions captured into new graphs (then launched)
  uint64_t replays = 0;           ///< regions that launched graphs captured before
  uint64_t broken_regions = 0;    ///< regions cut short by a call that needs results (to_host, synchronize, ...)
  uint64_t capture_failures = 0;  ///< captures the runtime refused (the region then ran op by op)
  uint64_t ops = 0;               ///< ops issued inside regions
  uint64_t graph_launches = 0;    ///< cudaGraphLaunch calls
  uint64_t ops_in_graphs = 0;     ///< ops that ran as part of a launched graph
};

/// The counters of `backend` when it is the CUDA backend with graphs on; all zero otherwise.
CudaGraphStats cuda_graph_stats(const Backend& backend);

}  // namespace zt
