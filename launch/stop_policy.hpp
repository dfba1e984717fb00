// When a run stops early: a preemption signal on any rank (agreed at a step boundary) or --exit_after_steps.
#pragma once

#include "core/config.hpp"

namespace zt {

class MpiComm;

/// What the ranks agreed after a step.
struct StopDecision {
  bool exiting = false;  ///< save a checkpoint now and leave the loop
  int signal = 0;        ///< the preemption signal behind it (0: --exit_after_steps, or not exiting)
};

/// The stop policy of a run. Every rank calls after_step() at every step boundary; the decision is collective, so
/// all ranks stop at the same step. (A hang watchdog belongs beside it: it acts between boundaries.)
class StopPolicy {
 public:
  /// `announce`: this rank prints the stop lines (rank 0 unless quiet).
  StopPolicy(MpiComm& control, const TrainConfig& train, int start_step, bool announce);

  /// After `steps_done` optimizer steps: agrees over `control` whether any rank received SIGTERM / SIGUSR1 (not
  /// after the last step: nothing would be left to requeue for), or whether --exit_after_steps is reached. On a
  /// signal it announces the exit save before it is written, which can take minutes on a large model.
  StopDecision after_step(int steps_done);
  /// The line after the exit save: requeue status for a signal, else the --exit_after_steps note.
  void report_exit(const StopDecision& decision, int steps_done) const;

 private:
  MpiComm& control_;
  int max_steps_, exit_after_steps_, start_step_;
  bool announce_;
};

}  // namespace zt
