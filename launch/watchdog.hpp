// The hang watchdog (--hang_timeout): a thread per rank, on its own clock, that reports where this rank waits and
// ends the whole job when the rank stops making progress (a peer stopped or stuck, a collective that never finishes).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

namespace zt {

/// Where a rank is in a run, as the watchdog reports it.
enum class RunPhase {
  start_up,       ///< lock, leftovers, choice of checkpoint, device, model
  load,           ///< loading the checkpoint
  step,           ///< forward, backward and gradient collectives of a step
  optimizer,      ///< gradient norm and optimizer update of a step
  evaluation,     ///< validation pass after a step
  step_boundary,  ///< metrics row and the agreement whether to stop
  save,           ///< writing a checkpoint (or handing it to the background writer)
  save_wait,      ///< waiting for a background save
  finish,         ///< after the last step: last background save, final collectives
};

/// Bytes per second below which a checkpoint's I/O is not expected to fall (a slow network file system): a save or
/// load of B bytes gets B / kSlowestIoBytesPerS seconds on top of the timeout.
constexpr double kSlowestIoBytesPerS = 25.0 * (1 << 20);
/// Seconds between a rank's report and its abort of the job, so every live rank (whose clocks run out within a step
/// of each other) prints where it waits before the job ends.
constexpr double kHangReportGraceS = 5.0;

/// One rank's watchdog. Every phase entered restarts its clock; when a phase lasts longer than its allowance
/// (--hang_timeout; for save, save_wait, load and finish also the checkpoint's I/O time at kSlowestIoBytesPerS or
/// twice the longest save so far, whichever is more) it prints "rank R on HOST: no progress for ...: waiting in
/// <phase>" and, kHangReportGraceS later if the rank has still not moved on, ends the job with exit status
/// kExitHang (MPI_Abort from the watchdog thread, which needs MPI_THREAD_MULTIPLE; otherwise _exit).
class HangWatchdog {
 public:
  /// timeout_s 0: off (no thread; enter() only records).
  explicit HangWatchdog(double timeout_s);
  ~HangWatchdog();
  HangWatchdog(const HangWatchdog&) = delete;
  HangWatchdog& operator=(const HangWatchdog&) = delete;

  /// The size of one checkpoint (parameters and Adam state), which sets the I/O allowance of saves and loads.
  void set_checkpoint_bytes(uint64_t n_bytes);
  /// This rank now enters `phase` of step `step` (1-based; 0 before the first): the clock restarts.
  void enter(RunPhase phase, int64_t step);

 private:
  using Clock = std::chrono::steady_clock;
  void watch();
  double allowance_s() const;
  void report(double waited_s) const;

  const double timeout_s_;
  const bool can_abort_;  // MPI_Abort from the watcher thread is allowed (MPI_THREAD_MULTIPLE)
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  RunPhase phase_ = RunPhase::start_up;
  int64_t step_ = 0;
  uint64_t entries_ = 0;  // counts enter() calls: the watcher sees progress even when the phase repeats
  Clock::time_point since_ = Clock::now();
  uint64_t checkpoint_bytes_ = 0;
  double longest_save_s_ = 0;
  std::thread thread_;
};

}  // namespace zt
