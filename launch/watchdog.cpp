// HangWatchdog: the watcher thread, the allowance of each phase, the report and the end of the job.
#include "launch/watchdog.hpp"

#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "core/errors.hpp"
#include "launch/preempt.hpp"

namespace zt {
namespace {

std::string phase_text(RunPhase phase, int64_t step) {
  switch (phase) {
    case RunPhase::start_up:
      return "start-up (output directory lock, choice of checkpoint, device and model)";
    case RunPhase::load:
      return "loading the checkpoint to resume";
    case RunPhase::step:
      return fmt::format("step {}: forward, backward and gradient collectives", step);
    case RunPhase::optimizer:
      return fmt::format("step {}: gradient norm and optimizer update", step);
    case RunPhase::evaluation:
      return fmt::format("the evaluation after step {}", step);
    case RunPhase::step_boundary:
      return fmt::format("the boundary after step {} (metrics row, agreeing whether to stop)", step);
    case RunPhase::save:
      return fmt::format("saving checkpoint-{}", step);
    case RunPhase::save_wait:
      return fmt::format("waiting for the background save of checkpoint-{}", step);
    case RunPhase::finish:
      return fmt::format("finishing after step {} (last background save, final collectives)", step);
  }
  return "?";
}

bool io_phase(RunPhase phase) {
  return phase == RunPhase::load || phase == RunPhase::save || phase == RunPhase::save_wait ||
         phase == RunPhase::finish;
}

/// MPI_Abort may be called from the watcher thread only when MPI was initialised with MPI_THREAD_MULTIPLE.
bool mpi_abort_from_thread() {
  int initialized = 0, provided = 0;
  return MPI_Initialized(&initialized) == MPI_SUCCESS && initialized && MPI_Query_thread(&provided) == MPI_SUCCESS &&
         provided == MPI_THREAD_MULTIPLE;
}

}  // namespace

HangWatchdog::HangWatchdog(double timeout_s) : timeout_s_(timeout_s), can_abort_(mpi_abort_from_thread()) {
  if (timeout_s_ > 0) thread_ = std::thread([this] { watch(); });
}

HangWatchdog::~HangWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void HangWatchdog::set_checkpoint_bytes(uint64_t n_bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  checkpoint_bytes_ = n_bytes;
}

void HangWatchdog::enter(RunPhase phase, int64_t step) {
  const Clock::time_point now = Clock::now();
  {
    std::lock_guard<std::mutex> lock(mu_);
    // A save's length, to the next phase: the allowance of later saves grows with it.
    if (phase_ == RunPhase::save || phase_ == RunPhase::save_wait)
      longest_save_s_ = std::max(longest_save_s_, std::chrono::duration<double>(now - since_).count());
    phase_ = phase;
    step_ = step;
    since_ = now;
    ++entries_;
  }
  cv_.notify_all();
}

double HangWatchdog::allowance_s() const {
  if (!io_phase(phase_)) return timeout_s_;
  return timeout_s_ + std::max(double(checkpoint_bytes_) / kSlowestIoBytesPerS, 2 * longest_save_s_);
}

void HangWatchdog::watch() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    const auto deadline =
        since_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(allowance_s()));
    if (Clock::now() < deadline) {
      cv_.wait_until(lock, deadline);
      continue;
    }
    const uint64_t seen = entries_;
    report(std::chrono::duration<double>(Clock::now() - since_).count());
    const auto grace = std::chrono::duration<double>(kHangReportGraceS);
    cv_.wait_for(lock, grace, [&] { return stop_ || entries_ != seen; });
    if (stop_) break;
    if (entries_ != seen) {
      fmt::print(stderr, "zerotrain: warning: {}: moved on after all; this rank does not end the job\n", where());
      std::fflush(stderr);
      continue;
    }
    fmt::print(stderr, "zerotrain: error: {}: hang: ending the job with status {}\n", where(), kExitHang);
    std::fflush(stderr);
    // If MPI_Abort itself cannot get through, the process still ends.
    std::thread([] {
      std::this_thread::sleep_for(std::chrono::seconds(30));
      ::_exit(kExitHang);
    }).detach();
    if (can_abort_) MPI_Abort(MPI_COMM_WORLD, kExitHang);
    ::_exit(kExitHang);
  }
}

void HangWatchdog::report(double waited_s) const {
  fmt::print(stderr,
             "zerotrain: error: {}: hang: no progress for {:.0f} s (--hang_timeout {:g}{}): waiting in {}; the job "
             "ends with status {} in {:g} s unless this rank moves on\n",
             where(), waited_s, timeout_s_, io_phase(phase_) ? " plus the expected checkpoint I/O time" : "",
             phase_text(phase_, step_), kExitHang, kHangReportGraceS);
  std::fflush(stderr);
}

}  // namespace zt
