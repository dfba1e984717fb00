// --profile_steps: times every backend op of a few steps and prints where a step's time goes (rank 0).
#pragma once

#include "core/backend.hpp"
#include "core/profiling_backend.hpp"

namespace zt {

/// Owns the profiling decorator that the model and the engine call the backend through when profiling is on.
/// Rank 0's table only: every rank runs the same ops, and the others' times differ only by load and skew.
class ProfileReport {
 public:
  /// `print`: this rank prints the report (rank 0 unless quiet).
  ProfileReport(Backend& backend, int profile_steps, bool print);
  ProfileReport(const ProfileReport&) = delete;
  ProfileReport& operator=(const ProfileReport&) = delete;

  /// The backend to build the model and the engine on: the profiler when --profile_steps is set, else `backend`.
  Backend& backend();
  /// Timing is on for the profile_steps steps after the first step this run trains (which warms up: first-use
  /// allocations, cuBLASLt plans).
  void begin_step(int step);
  /// Ends the timing of a step that took `step_s` (before evaluation, whose ops are not timed).
  void end_step(double step_s);
  /// Prints the report once the last profiled step is done (after that step's progress line).
  void report_if_done();
  /// Prints the report if the run ended before profile_steps steps were profiled.
  void finish();

 private:
  void report();

  Backend& inner_;
  ProfilingBackend profiler_;
  int profile_steps_;
  int first_step_ = -1;  // the first step begin_step() saw
  bool print_;
  int profiled_steps_ = 0;
  double profiled_s_ = 0;
  bool reported_ = false;
};

}  // namespace zt
