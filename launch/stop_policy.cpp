// StopPolicy: the agreed decision to stop at a step boundary, and the lines that report it.
#include "launch/stop_policy.hpp"

#include <csignal>
#include <cstdio>

#include "launch/preempt.hpp"
#include "sharding/comm_mpi.hpp"

namespace zt {
namespace {

const char* signal_name(int signal) { return signal == SIGTERM ? "SIGTERM" : signal == SIGUSR1 ? "SIGUSR1" : "?"; }

}  // namespace

StopPolicy::StopPolicy(MpiComm& control, const TrainConfig& train, int start_step, bool announce)
    : control_(control),
      max_steps_(train.max_steps),
      exit_after_steps_(train.exit_after_steps),
      start_step_(start_step),
      announce_(announce) {}

StopDecision StopPolicy::after_step(int steps_done) {
  StopDecision d;
  d.signal = steps_done < max_steps_ ? control_.all_reduce_max(preemption_signal()) : 0;
  d.exiting = d.signal != 0 ||
              (exit_after_steps_ > 0 && steps_done - start_step_ == exit_after_steps_ && steps_done < max_steps_);
  if (d.signal != 0 && announce_) {
    fmt::print("signal {} ({}) received: saving checkpoint-{} before exiting\n", d.signal, signal_name(d.signal),
               steps_done);
    std::fflush(stdout);
  }
  return d;
}

void StopPolicy::report_exit(const StopDecision& decision, int steps_done) const {
  if (!announce_) return;
  if (decision.signal != 0)
    fmt::print("received signal {} ({}): checkpoint saved at step {}; exiting with status {} (requeue)\n",
               decision.signal, signal_name(decision.signal), steps_done, kExitRequeue);
  else
    fmt::print("stopping after {} steps of this run (--exit_after_steps)\n", steps_done - start_step_);
}

}  // namespace zt
