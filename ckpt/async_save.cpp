// AsyncSaver: a background thread copies the shard (host backends) and runs the same collective save over its own
// communicator.
#include "ckpt/async_save.hpp"

#include <mpi.h>

#include <chrono>
#include <cstdlib>

#include "core/test_hooks.hpp"
#include "sharding/zero_engine.hpp"

namespace zt {

AsyncSaver::AsyncSaver(MpiComm& parent) : comm_(parent.mpi_comm()) {
  int provided = 0;
  ZT_MPI_CHECK(MPI_Query_thread(&provided));
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
                       const TrainProgress& progress, ZeroEngine& engine, const Retention& retention,
                       const IncrementalPolicy& incremental) {
  wait();
  using Clock = std::chrono::steady_clock;
  // A device backend copies here, on the thread that owns the device; a host backend's copy runs on the writer.
  const bool deferred = engine.backend().host_memory();
  ShardSnapshot ready;
  if (!deferred) ready = snapshot_copy(engine, std::move(spare_));
  {
    std::lock_guard<std::mutex> lock(mu_);
    copied_ = !deferred;
    copy_s_ = 0;
  }
  thread_ = std::thread([this, output_dir, model, train, progress, &engine, deferred, snap = std::move(ready),
                         retention, incremental]() mutable {
    try {
      if (deferred) {
        const auto t0 = Clock::now();
        try {
          // Test hook: a slow copy, so the next optimizer step must wait for it (async_save_test.sh).
          if (const int ms = test_hooks::async_copy_delay_ms())
            std::this_thread::sleep_for(std::chrono::milliseconds(ms));
          snap = snapshot_copy(engine, std::move(spare_));
        } catch (...) {
          std::lock_guard<std::mutex> lock(mu_);
          copied_ = true;
          cv_.notify_all();
          throw;
        }
        std::lock_guard<std::mutex> lock(mu_);
        copied_ = true;
        copy_s_ = std::chrono::duration<double>(Clock::now() - t0).count();
        cv_.notify_all();
      }
      committed_ = save_checkpoint(output_dir, model, train, progress, snap, comm_, retention, incremental);
    } catch (...) {
      error_ = std::current_exception();
    }
    spare_ = std::move(snap.storage);  // handed back after join(), reused by the next snapshot
  });
}

bool AsyncSaver::copy_pending() {
  std::lock_guard<std::mutex> lock(mu_);
  return !copied_;
}

double AsyncSaver::wait_copied(double* copy_s) {
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return copied_; });
  if (copy_s) *copy_s = copy_s_;
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string AsyncSaver::wait() {
  if (thread_.joinable()) thread_.join();
  {
    std::lock_guard<std::mutex> lock(mu_);
    copied_ = true;
  }
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
