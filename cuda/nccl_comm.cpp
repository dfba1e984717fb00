// NcclComm: the Comm contract over NCCL for device buffers, on its own stream ordered against the compute stream by
// events; NCCL is loaded at run time. Also the factories of cuda/device_comm.hpp.
#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include "cuda/backend_stream.cuh"
#include "cuda/cuda_common.cuh"
#include "cuda/device_comm.hpp"
#include "cuda/staged_mpi_comm.cuh"

#ifdef ZT_HAVE_NCCL_H
#include <nccl.h>
#endif

namespace zt {

std::unique_ptr<Comm> make_staged_mpi_comm(MPI_Comm parent, Backend& cuda_backend) {
  cudaStream_t stream = cuda::backend_stream(cuda_backend);
  ZT_CUDA_CHECK(cudaSetDevice(cuda::backend_device(cuda_backend)));
  return std::make_unique<cuda::StagedMpiComm>(parent, stream);
}

#ifndef ZT_HAVE_NCCL_H

std::string nccl_unavailable_reason() {
  return "this build has no NCCL support (nccl.h was not found when it was configured; set NCCL_INCLUDE_DIR)";
}
std::string nccl_description() { ZT_FAIL("{}", nccl_unavailable_reason()); }
std::unique_ptr<Comm> make_nccl_comm(MPI_Comm, Backend&) { ZT_FAIL("--comm nccl: {}", nccl_unavailable_reason()); }

#else

namespace cuda {
namespace {

// The NCCL entry points zerotrain uses, resolved from the shared library at run time: the library is over 200 MiB
// and often absent, and every other part of zerotrain (CPU, CUDA with the staged MPI comm) must run without it.
struct NcclApi {
  decltype(&ncclGetVersion) get_version = nullptr;
  decltype(&ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&ncclCommInitRank) comm_init_rank = nullptr;
  decltype(&ncclCommDestroy) comm_destroy = nullptr;
  decltype(&ncclCommAbort) comm_abort = nullptr;
  decltype(&ncclCommGetAsyncError) comm_get_async_error = nullptr;
  decltype(&ncclGetErrorString) get_error_string = nullptr;
  decltype(&ncclGetLastError) get_last_error = nullptr;  // NCCL >= 2.13; optional
  decltype(&ncclAllReduce) all_reduce = nullptr;
  decltype(&ncclReduceScatter) reduce_scatter = nullptr;
  decltype(&ncclAllGather) all_gather = nullptr;
  decltype(&ncclBroadcast) broadcast = nullptr;
  int version = 0;
  std::string path;
  std::string error;  // non-empty: the library could not be used
};

template <typename F>
bool resolve(void* lib, const char* name, F& fn, std::string& error) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  if (fn == nullptr && error.empty()) error = fmt::format("symbol {} is missing from the NCCL library", name);
  return fn != nullptr;
}

NcclApi load_nccl() {
  NcclApi api;
  const char* env = std::getenv("ZT_NCCL_LIBRARY");
  const std::string name = env != nullptr && *env != '\0' ? env : "libnccl.so.2";
  // Never unloaded: NCCL keeps proxy threads running until the process exits.
  void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* why = dlerror();
    api.error = fmt::format(
        "cannot load the NCCL library {}: {}; install NCCL (or the nvidia-nccl pip wheel) and put "
        "its lib directory on LD_LIBRARY_PATH, or set ZT_NCCL_LIBRARY to the library's path",
        name, why != nullptr ? why : "unknown error");
    return api;
  }
  std::string err;
  resolve(lib, "ncclGetVersion", api.get_version, err);
  resolve(lib, "ncclGetUniqueId", api.get_unique_id, err);
  resolve(lib, "ncclCommInitRank", api.comm_init_rank, err);
  resolve(lib, "ncclCommDestroy", api.comm_destroy, err);
  resolve(lib, "ncclCommAbort", api.comm_abort, err);
  resolve(lib, "ncclCommGetAsyncError", api.comm_get_async_error, err);
  resolve(lib, "ncclGetErrorString", api.get_error_string, err);
  resolve(lib, "ncclAllReduce", api.all_reduce, err);
  resolve(lib, "ncclReduceScatter", api.reduce_scatter, err);
  resolve(lib, "ncclAllGather", api.all_gather, err);
  resolve(lib, "ncclBroadcast", api.broadcast, err);
  std::string optional;
  resolve(lib, "ncclGetLastError", api.get_last_error, optional);
  if (!err.empty()) {
    api.error = fmt::format("{} ({}): it is too old or not NCCL 2", err, name);
    return api;
  }
  if (api.get_version(&api.version) != ncclSuccess) api.version = 0;
  Dl_info info{};
  api.path = dladdr(reinterpret_cast<void*>(api.get_unique_id), &info) != 0 && info.dli_fname != nullptr
                 ? info.dli_fname
                 : name;
  return api;
}

const NcclApi& nccl_api() {
  static const NcclApi api = load_nccl();
  return api;
}

std::string version_text(int code) {
  // NCCL_VERSION(X,Y,Z): X*1000 + Y*100 + Z up to 2.8, X*10000 + Y*100 + Z from 2.9 on.
  if (code >= 10000) return fmt::format("{}.{}.{}", code / 10000, code / 100 % 100, code % 100);
  return fmt::format("{}.{}.{}", code / 1000, code / 100 % 10, code % 100);
}

// Checks an NCCL call inside NcclComm: on failure failed() aborts the communicator first (so no rank keeps waiting on
// it), then ZT_LIB_CHECK_GEN throws with the call, the NCCL error text, rank and host.
#define ZT_NCCL_CHECK(stmt) ZT_LIB_CHECK_GEN("NCCL", stmt, this->failed, this->describe)

/// NCCL for float collectives on device memory; everything else through the staged MPI comm it extends (both are
/// device comms: extending it reuses its staged path for doubles and host buffers, and neither is an MpiComm).
class NcclComm final : public StagedMpiComm {
 public:
  NcclComm(MPI_Comm parent, cudaStream_t compute_stream, int device)
      : StagedMpiComm(parent, compute_stream), api_(nccl_api()) {
    ZT_CHECK(api_.error.empty(), "--comm nccl: {}", api_.error);
    try {
      // What can fail on one rank alone is agreed over MPI before the next collective step (the id's broadcast,
      // NCCL's bootstrap), so every rank throws, naming its own cause or the stage, instead of waiting there for
      // the rank that failed.
      std::exception_ptr local;
      auto attempt = [&](auto&& step) {
        if (local) return;
        try {
          step();
        } catch (...) {
          local = std::current_exception();
        }
      };
      auto agree = [&](const char* stage) {
        const int failed_anywhere = host().all_reduce_max(local ? 1 : 0);
        if (local) std::rethrow_exception(local);
        ZT_CHECK(failed_anywhere == 0, "--comm nccl: {} failed on another rank (its own error names the cause)", stage);
      };
      ncclUniqueId id{};
      attempt([&] {
        ZT_CUDA_CHECK(cudaSetDevice(device));  // NCCL binds the communicator to the current device
        ZT_CUDA_CHECK(cudaStreamCreateWithFlags(&comm_stream_, cudaStreamNonBlocking));
        ZT_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
        ZT_CUDA_CHECK(cudaEventCreateWithFlags(&blocking_done_, cudaEventDisableTiming));
        if (rank() == 0) ZT_NCCL_CHECK(api_.get_unique_id(&id));
      });
      agree("setting up the device, streams and unique id");
      host().broadcast(&id, sizeof(id), 0);
      attempt([&] { ZT_NCCL_CHECK(api_.comm_init_rank(&nccl_, world_size(), id, rank())); });
      agree("ncclCommInitRank");
    } catch (...) {
      release(/*abort=*/true);
      throw;
    }
  }

  ~NcclComm() override {
    const bool pending = std::any_of(ops_.begin(), ops_.end(), [](const NcclOp& op) { return op.id != 0; });
    // After a failure (an exception unwinding, or operations never waited for) a peer may be gone: abort rather
    // than let the destroy wait for operations that cannot finish.
    release(pending || std::uncaught_exceptions() > 0);
  }

  using StagedMpiComm::all_reduce_sum;

  void all_reduce_sum(float* data, size_t n) override {
    if (n == 0 || !is_device(data)) return StagedMpiComm::all_reduce_sum(data, n);
    const size_t N = size_t(world_size()), chunk = (n + N - 1) / N;
    begin_on_comm_stream();
    ZT_NCCL_CHECK(api_.all_reduce(data, data, n, ncclFloat, ncclSum, nccl_, comm_stream_));
    end_blocking();
    bytes_sent_ += 2 * uint64_t(N - 1) * chunk * sizeof(float);
  }

  void reduce_scatter_sum(const float* send, float* recv, size_t recv_n) override {
    if (recv_n == 0 || !on_device(send, recv, "reduce_scatter_sum"))
      return StagedMpiComm::reduce_scatter_sum(send, recv, recv_n);
    begin_on_comm_stream();
    ZT_NCCL_CHECK(api_.reduce_scatter(send, recv, recv_n, ncclFloat, ncclSum, nccl_, comm_stream_));
    end_blocking();
    bytes_sent_ += uint64_t(world_size() - 1) * recv_n * sizeof(float);
  }

  void all_gather(const float* send, float* recv, size_t send_n) override {
    if (send_n == 0 || !on_device(send, recv, "all_gather")) return StagedMpiComm::all_gather(send, recv, send_n);
    check_gather_overlap(send, recv, send_n);
    begin_on_comm_stream();
    ZT_NCCL_CHECK(api_.all_gather(send, recv, send_n, ncclFloat, nccl_, comm_stream_));
    end_blocking();
    bytes_sent_ += uint64_t(world_size() - 1) * send_n * sizeof(float);
  }

  void broadcast(void* data, size_t n_bytes, int root) override {
    if (n_bytes == 0 || !is_device(data)) return StagedMpiComm::broadcast(data, n_bytes, root);
    ZT_CHECK(root >= 0 && root < world_size(), "broadcast root {} is not a rank of a {}-rank communicator", root,
             world_size());
    begin_on_comm_stream();
    ZT_NCCL_CHECK(api_.broadcast(data, data, n_bytes, ncclUint8, root, nccl_, comm_stream_));
    end_blocking();
    if (rank() == root) bytes_sent_ += uint64_t(n_bytes) * uint64_t(world_size() - 1);
  }

  CommHandle ireduce_scatter_sum(const float* send, float* recv, size_t recv_n) override {
    if (recv_n == 0 || !on_device(send, recv, "ireduce_scatter_sum"))
      return StagedMpiComm::ireduce_scatter_sum(send, recv, recv_n);
    NcclOp& op = free_op();
    begin_on_comm_stream();
    ZT_NCCL_CHECK(api_.reduce_scatter(send, recv, recv_n, ncclFloat, ncclSum, nccl_, comm_stream_));
    ZT_CUDA_CHECK(cudaEventRecord(op.done, comm_stream_));
    bytes_sent_ += uint64_t(world_size() - 1) * recv_n * sizeof(float);
    op.id = kNcclIdBit | next_id_++;
    return make_handle(op.id);
  }

  CommHandle iall_gather(const float* send, float* recv, size_t send_n) override {
    if (send_n == 0 || !on_device(send, recv, "iall_gather")) return StagedMpiComm::iall_gather(send, recv, send_n);
    check_gather_overlap(send, recv, send_n);
    NcclOp& op = free_op();
    begin_on_comm_stream();
    ZT_NCCL_CHECK(api_.all_gather(send, recv, send_n, ncclFloat, nccl_, comm_stream_));
    ZT_CUDA_CHECK(cudaEventRecord(op.done, comm_stream_));
    bytes_sent_ += uint64_t(world_size() - 1) * send_n * sizeof(float);
    op.id = kNcclIdBit | next_id_++;
    return make_handle(op.id);
  }

  void wait(CommHandle& h) override {
    const uint64_t id = take_handle_id(h);
    if (id == 0) return;
    if ((id >> 62) != 1) {  // not an NCCL operation: MPI (staged or host)
      CommHandle other = make_handle(id);
      return StagedMpiComm::wait(other);
    }
    auto it = std::find_if(ops_.begin(), ops_.end(), [id](const NcclOp& op) { return op.id == id; });
    ZT_CHECK(it != ops_.end(), "wait() on a handle (NCCL operation {}) that this communicator did not start",
             id & ~kNcclIdBit);
    // The compute stream waits, not the host: ops issued after wait() run once the collective is done, and the
    // host blocks only where it reads device memory (to_host, synchronize), as for any op.
    ZT_CUDA_CHECK(cudaStreamWaitEvent(compute_stream(), it->done, 0));
    it->id = 0;
    check_async();
  }

  void progress() override {
    StagedMpiComm::progress();
    check_async();
  }

 private:
  struct NcclOp {
    uint64_t id = 0;  // 0: free slot
    cudaEvent_t done = nullptr;
  };
  // NCCL operation ids carry bit 62 (StagedMpiComm's carry bit 63, MpiComm's neither).
  static constexpr uint64_t kNcclIdBit = uint64_t(1) << 62;

  bool failed(ncclResult_t rc) {
    if (rc == ncclSuccess) return false;
    last_error_ = api_.get_error_string(rc);
    if (api_.get_last_error != nullptr) {
      const char* detail = api_.get_last_error(nccl_);
      if (detail != nullptr && *detail != '\0') last_error_ += fmt::format(" ({})", detail);
    }
    if (nccl_ != nullptr) last_error_ += "; the NCCL communicator was aborted";
    abort_communicator();
    return true;
  }
  std::string describe(ncclResult_t) const { return last_error_; }

  void abort_communicator() {
    if (nccl_ != nullptr) api_.comm_abort(nccl_);
    nccl_ = nullptr;
  }

  // A communicator aborted after an error cannot run anything; and NCCL's asynchronous errors (a peer lost, a
  // network failure) surface here rather than as a hang.
  void check_async() {
    ZT_CHECK(nccl_ != nullptr, "the NCCL communicator was aborted after an earlier error");
    ncclResult_t async = ncclSuccess;
    ZT_NCCL_CHECK(api_.comm_get_async_error(nccl_, &async));
    ZT_NCCL_CHECK(async);
  }

  // The comm stream waits for everything issued on the compute stream so far (the collective's inputs).
  void begin_on_comm_stream() {
    ZT_CHECK(nccl_ != nullptr, "the NCCL communicator was aborted after an earlier error");
    ZT_CUDA_CHECK(cudaEventRecord(ready_, compute_stream()));
    ZT_CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, ready_, 0));
  }
  // A blocking collective: every op issued after it on the compute stream waits for it.
  void end_blocking() {
    ZT_CUDA_CHECK(cudaEventRecord(blocking_done_, comm_stream_));
    ZT_CUDA_CHECK(cudaStreamWaitEvent(compute_stream(), blocking_done_, 0));
  }

  NcclOp& free_op() {
    auto slot = std::find_if(ops_.begin(), ops_.end(), [](const NcclOp& op) { return op.id == 0; });
    NcclOp& op = slot != ops_.end() ? *slot : ops_.emplace_back();
    if (op.done == nullptr) ZT_CUDA_CHECK(cudaEventCreateWithFlags(&op.done, cudaEventDisableTiming));
    return op;
  }

  void check_gather_overlap(const float* send, const float* recv, size_t send_n) const {
    if (send == recv + size_t(rank()) * send_n) return;  // in place
    const auto s = reinterpret_cast<uintptr_t>(send), r = reinterpret_cast<uintptr_t>(recv);
    const bool disjoint = s + send_n * sizeof(float) <= r || r + size_t(world_size()) * send_n * sizeof(float) <= s;
    ZT_CHECK(disjoint, "all_gather: send overlaps recv but is not this rank's slot recv + {}*{}", rank(), send_n);
  }

  // No throwing: runs in the destructor and on a failed construction.
  void release(bool abort) {
    if (nccl_ != nullptr) {
      if (abort) {
        abort_communicator();
      } else {
        if (comm_stream_ != nullptr) cudaStreamSynchronize(comm_stream_);
        api_.comm_destroy(nccl_);
        nccl_ = nullptr;
      }
    }
    for (NcclOp& op : ops_)
      if (op.done != nullptr) cudaEventDestroy(op.done);
    ops_.clear();
    if (ready_ != nullptr) cudaEventDestroy(ready_);
    if (blocking_done_ != nullptr) cudaEventDestroy(blocking_done_);
    if (comm_stream_ != nullptr) cudaStreamDestroy(comm_stream_);
    ready_ = blocking_done_ = nullptr;
    comm_stream_ = nullptr;
  }

  const NcclApi& api_;
  ncclComm_t nccl_ = nullptr;
  cudaStream_t comm_stream_ = nullptr;
  cudaEvent_t ready_ = nullptr, blocking_done_ = nullptr;
  std::vector<NcclOp> ops_;
  uint64_t next_id_ = 1;
  std::string last_error_;
};

}  // namespace
}  // namespace cuda

std::string nccl_unavailable_reason() { return cuda::nccl_api().error; }

std::string nccl_description() {
  const cuda::NcclApi& api = cuda::nccl_api();
  ZT_CHECK(api.error.empty(), "{}", api.error);
  return fmt::format("NCCL {} ({})", cuda::version_text(api.version), api.path);
}

std::unique_ptr<Comm> make_nccl_comm(MPI_Comm parent, Backend& cuda_backend) {
  return std::make_unique<cuda::NcclComm>(parent, cuda::backend_stream(cuda_backend),
                                          cuda::backend_device(cuda_backend));
}

#endif  // ZT_HAVE_NCCL_H

}  // namespace zt
