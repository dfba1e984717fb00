// Preemption: SIGTERM / SIGUSR1 set a flag the stop policy checks at step boundaries; documented exit statuses.
#pragma once

namespace zt {

/// Exit status after a signal-triggered checkpoint: "requeue me" (EX_TEMPFAIL). launch/ scripts requeue on it.
constexpr int kExitRequeue = 75;
/// Exit status when a checkpoint or metrics.jsonl could not be written (EX_IOERR), e.g. the disk is full.
constexpr int kExitSaveFailed = 74;
/// Exit status when the hang watchdog ended the job (--hang_timeout): a rank made no progress; as timeout(1) says.
constexpr int kExitHang = 124;

/// Installs handlers for SIGTERM and SIGUSR1 that only record the signal (async-signal-safe).
void install_preemption_handlers();
/// The first preemption signal received (0 if none).
int preemption_signal();

}  // namespace zt
