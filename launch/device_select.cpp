// Device, precision and comm selection: every rank resolves "auto" from job-wide facts (MPI reductions), so all
// ranks choose alike or all fail alike.
#include "launch/device_select.hpp"

#include <mpi.h>

#include "core/errors.hpp"

#ifdef ZT_HAVE_CUDA
#include "cuda/cuda_backend.hpp"
#include "cuda/device_comm.hpp"
#endif

namespace zt {
namespace {

int all_min(int v) {
  int out = v;
  ZT_MPI_CHECK(MPI_Allreduce(&v, &out, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
  return out;
}

int visible_devices() {
#ifdef ZT_HAVE_CUDA
  return cuda_device_count();
#else
  return 0;
#endif
}

#ifdef ZT_HAVE_CUDA
int all_max(int v) {
  int out = v;
  ZT_MPI_CHECK(MPI_Allreduce(&v, &out, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
  return out;
}

// This rank's index among the ranks of its node, and how many ranks the node runs.
void local_rank(int* rank, int* size) {
  MPI_Comm local = MPI_COMM_NULL;
  ZT_MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local));
  const int rc_rank = MPI_Comm_rank(local, rank), rc_size = MPI_Comm_size(local, size);
  ZT_MPI_CHECK(MPI_Comm_free(&local));
  ZT_MPI_CHECK(rc_rank);
  ZT_MPI_CHECK(rc_size);
}
#endif

RunDevice make_cpu(TrainConfig& t, int threads) {
  ZT_CHECK(t.dtype != "bf16",
           "--dtype bf16 needs --device cuda: the CPU backend computes in fp32 (use --dtype fp32 "
           "or auto)");
  ZT_CHECK(t.comm != "nccl", "--comm nccl needs --device cuda: NCCL moves GPU memory (use --comm mpi or auto)");
  t.device = "cpu";
  t.dtype = "fp32";
  t.comm = "mpi";
  RunDevice run;
  run.backend = make_cpu_backend(threads);
  run.comm = std::make_unique<MpiComm>(MPI_COMM_WORLD);
  run.description = "cpu | dtype fp32 | comm mpi";
  return run;
}

}  // namespace

RunDevice make_run_device(TrainConfig& t, int threads) {
  ZT_CHECK(t.dtype == "fp32" || t.dtype == "bf16" || t.dtype == "auto", "--dtype must be fp32, bf16 or auto, got '{}'",
           t.dtype);
  ZT_CHECK(t.comm == "mpi" || t.comm == "nccl" || t.comm == "auto", "--comm must be mpi, nccl or auto, got '{}'",
           t.comm);
  if (t.device == "cpu") return make_cpu(t, threads);  // no CUDA call at all: CPU clusters need no driver
  const int n_devices = visible_devices();
  const int min_devices = all_min(n_devices);
  if (t.device == "auto") t.device = min_devices > 0 ? "cuda" : "cpu";
  if (t.device == "cpu") return make_cpu(t, threads);
  ZT_CHECK(t.device == "cuda", "--device must be cpu, cuda or auto, got '{}'", t.device);
#ifndef ZT_HAVE_CUDA
  ZT_FAIL(
      "--device cuda: this zerotrain was built without the CUDA backend (configured with ZT_ENABLE_CUDA=OFF or "
      "where nvcc was not found); rebuild with -DZT_ENABLE_CUDA=ON, or use --device cpu");
#else
  ZT_CHECK(min_devices > 0,
           "--device cuda: a rank of this job sees no CUDA device (this rank, on {}, sees {}): no driver, no GPU, or "
           "CUDA_VISIBLE_DEVICES hides them; use --device cpu or auto",
           hostname(), n_devices);
  int lrank = 0, lsize = 1;
  local_rank(&lrank, &lsize);
  const int device = lrank % n_devices;
  if (t.dtype == "auto") t.dtype = "bf16";
  if (t.comm != "mpi") {
    // NCCL refuses two ranks on one GPU: a node with more ranks than GPUs rules it out for the whole job.
    const bool shared = all_max(lsize > n_devices ? 1 : 0) != 0;
    const std::string nccl_missing = nccl_unavailable_reason();
    const bool nccl_everywhere = all_min(nccl_missing.empty() ? 1 : 0) != 0;
    if (t.comm == "auto") t.comm = !shared && nccl_everywhere ? "nccl" : "mpi";
    if (t.comm == "nccl") {
      ZT_CHECK(!shared,
               "--comm nccl needs one GPU per rank, but ranks share GPUs ({} rank(s) on this node, {}, with {} "
               "GPU(s)); use --comm mpi (staged through host memory) or at most one rank per GPU",
               lsize, hostname(), n_devices);
      ZT_CHECK(nccl_everywhere, "--comm nccl: {}",
               nccl_missing.empty() ? "another rank of the job cannot load NCCL" : nccl_missing);
    }
  }
  RunDevice run;
  CudaVariants variants{t.cuda_attention, t.cuda_attention_dkv_blocks, t.cuda_param_copy, t.cuda_epilogues,
                        t.cuda_activations};
  variants.graphs = t.cuda_graphs;
  run.backend = make_cuda_backend(device, t.dtype == "bf16", variants);
  run.comm = t.comm == "nccl" ? make_nccl_comm(MPI_COMM_WORLD, *run.backend)
                              : make_staged_mpi_comm(MPI_COMM_WORLD, *run.backend);
  run.description = fmt::format(
      "cuda:{} {} (local rank {} of {} on {} GPU(s)) | dtype {} | comm {}", device, cuda_device_description(device),
      lrank, lsize, n_devices, t.dtype,
      t.comm == "nccl" ? "nccl, " + nccl_description() : std::string("mpi, staged through pinned host memory"));
  return run;
#endif
}

std::string describe_devices() {
#ifndef ZT_HAVE_CUDA
  return "cuda: this build has no CUDA backend (ZT_ENABLE_CUDA=OFF)\nnccl: not built\n";
#else
  const int n = cuda_device_count();
  std::string out = fmt::format("cuda: {} device(s)\n", n);
  for (int d = 0; d < n; ++d) out += fmt::format("  cuda:{} {}\n", d, cuda_device_description(d));
  const std::string missing = nccl_unavailable_reason();
  out +=
      missing.empty() ? fmt::format("nccl: {}\n", nccl_description()) : fmt::format("nccl: unavailable: {}\n", missing);
  return out;
#endif
}

}  // namespace zt
