// ProfileReport: which steps are timed, and the per-op table printed after them.
#include "launch/profile_report.hpp"

#include <cstdio>

#include "core/errors.hpp"

namespace zt {

ProfileReport::ProfileReport(Backend& backend, int profile_steps, bool print)
    : inner_(backend), profiler_(backend, false), profile_steps_(profile_steps), print_(print) {}

Backend& ProfileReport::backend() { return profile_steps_ > 0 ? static_cast<Backend&>(profiler_) : inner_; }

void ProfileReport::begin_step(int step) {
  if (first_step_ < 0) first_step_ = step;
  profiler_.set_enabled(step > first_step_ && step <= first_step_ + profile_steps_);
}

void ProfileReport::end_step(double step_s) {
  if (profiler_.enabled()) {
    profiler_.set_enabled(false);
    profiled_steps_ += 1;
    profiled_s_ += step_s;
  }
}

void ProfileReport::report_if_done() {
  if (profiled_steps_ == profile_steps_ && !reported_) report();
}

void ProfileReport::finish() {
  if (profile_steps_ > 0 && !reported_) report();
}

void ProfileReport::report() {
  reported_ = true;
  if (!print_ || profiled_steps_ == 0) return;
  fmt::print(
      "profile of {} step(s) on rank 0 ({:.1f} ms per step, each op timed between synchronizations, so the "
      "steps ran slower; the rest of a step is communication and host work):\n{}",
      profiled_steps_, profiled_s_ * 1e3 / profiled_steps_, profiler_.report(profiled_steps_));
  std::fflush(stdout);
}

}  // namespace zt
