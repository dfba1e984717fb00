// Preemption: SIGTERM / SIGUSR1 set a flag the stop policy checks at step boundaries; documented exit statuses.
#pragma once

namespace zt {

/// Exit status after a signal-triggered checkpoint: "requeue me" (EX_TEMPFAIL). launch/ scripts requeue on it.
constexpr int kExitRequeue = 75;
/// Exit status when a checkpoint could not be saved (EX_IOERR), e.g. the disk is full.
constexpr int kExitSaveFailed = 74;

/// Installs handlers for SIGTERM and SIGUSR1 that only record the signal (async-signal-safe).
void install_preemption_handlers();
/// The first preemption signal received (0 if none).
int preemption_signal();

}  // namespace zt
