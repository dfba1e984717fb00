// Comms over the CUDA backend's device memory: MPI staged through pinned host memory, and NCCL. No CUDA headers, so
// the CLI and the tests include it from plain C++.
#pragma once

#include <memory>
#include <string>

#include "core/backend.hpp"
#include "sharding/comm_mpi.hpp"

namespace zt {

/// The Comm contract over device buffers of `cuda_backend`, through MPI: each collective copies device -> pinned
/// host, runs MpiComm's collective there and copies back, ordered on the backend's stream. Sums are MpiComm's
/// rank-ordered sums, bit for bit, whatever GPU each rank uses, so several ranks may share one GPU. Host pointers
/// go straight to MPI. A data communicator only: it owns its MpiComm rather than being one, so the checkpoint code
/// (which takes the run's host control communicator) cannot be handed it. Collective over `parent`; the backend
/// must outlive the comm. Throws zt::Error when the backend is not the CUDA backend.
std::unique_ptr<Comm> make_staged_mpi_comm(MPI_Comm parent, Backend& cuda_backend);

/// The Comm contract over device buffers of `cuda_backend`, through NCCL (one GPU per rank: NCCL refuses two ranks
/// on one device). The unique id goes out over MPI from rank 0. Float collectives on device memory run on a
/// dedicated stream, ordered after the ops issued before them and before the ops issued after them (events, no
/// host wait). Sums follow NCCL's order (ring / tree), not the contract's rank order: deterministic for a fixed
/// world size, topology and NCCL version, but not bitwise MpiComm's results. Doubles, flags, host buffers and
/// barriers go through the staged MPI path (rank-ordered as the contract says). On any NCCL failure the
/// communicator is aborted and a zt::Error names the call, rank and host. A data communicator only, like the staged
/// comm. Collective over `parent`. Throws zt::Error when NCCL is unavailable (see nccl_unavailable_reason()).
std::unique_ptr<Comm> make_nccl_comm(MPI_Comm parent, Backend& cuda_backend);

/// Empty when this process can use NCCL; otherwise why not (built without nccl.h, or libnccl.so.2 not loadable).
/// NCCL is loaded at run time (dlopen of $ZT_NCCL_LIBRARY, else libnccl.so.2), so binaries run without it.
std::string nccl_unavailable_reason();
/// "NCCL 2.28.9 (/path/libnccl.so.2)" for logs; throws zt::Error when NCCL is unavailable.
std::string nccl_description();

}  // namespace zt
