// AsyncSaver: a background thread runs the same collective save over its own communicator.
#include "ckpt/async_save.hpp"

#include <mpi.h>

namespace zt {

AsyncSaver::AsyncSaver(MpiComm& parent) : comm_(parent.mpi_comm()) {
  int provided = 0;
  MPI_Query_thread(&provided);
  ZT_CHECK(provided == MPI_THREAD_MULTIPLE,
           "--async_save needs an MPI library with MPI_THREAD_MULTIPLE (this one provides level {}); run without "
           "--async_save",
           provided);
}

AsyncSaver::~AsyncSaver() {
  try {
    wait();
  } catch (const std::exception& e) {
    fmt::print(stderr, "zerotrain: error: background checkpoint save failed: {}\n", e.what());
  }
}

void AsyncSaver::start(const std::string& output_dir, const ModelConfig& model, const TrainConfig& train,
                       const TrainProgress& progress, ShardSnapshot snap, int save_total_limit) {
  wait();
  thread_ = std::thread([this, output_dir, model, train, progress, snap = std::move(snap), save_total_limit]() mutable {
    try {
      committed_ = save_checkpoint(output_dir, model, train, progress, snap, comm_, save_total_limit);
    } catch (...) {
      error_ = std::current_exception();
    }
    spare_ = std::move(snap.storage);  // handed back after join(), reused by the next snapshot
  });
}

std::string AsyncSaver::wait() {
  if (thread_.joinable()) thread_.join();
  if (error_) {
    std::exception_ptr e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }
  std::string out = committed_;
  committed_.clear();
  return out;
}

}  // namespace zt
