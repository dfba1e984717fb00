// The CUDA backend's graph recorder (--cuda_graphs on): a decorator that records a region's ops and replays them as
// CUDA graphs (cuda_graph.cu says how).
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <string>

#include "core/backend.hpp"

namespace zt::cuda {

/// --cuda_graphs: true for on; false for off and auto (off until a GPU run shows the graphs faster); zt::Error else.
bool graphs_on(const std::string& value);
/// The CUDA backend `inner`, whose ops all run on `stream`, with graph regions recorded and replayed.
std::unique_ptr<Backend> make_graph_backend(std::unique_ptr<Backend> inner, cudaStream_t stream);
/// The backend a graph recorder wraps, or `backend` itself when it is none.
Backend& unwrap_graph_backend(Backend& backend);

}  // namespace zt::cuda
