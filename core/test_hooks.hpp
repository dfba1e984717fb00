// Test-only hooks: fault injection read from ZT_TEST_* environment variables. Not for users (docs/usage.md says so);
// every one the project has is here, so `grep test_hooks` finds each place a test can reach into a run.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace zt::test_hooks {

/// ZT_TEST_KILL_AT="phase:index:rank[:stop]": the point at which that rank SIGKILLs itself (crash-safety tests), or
/// SIGSTOPs itself with ":stop" (a stuck rank, for the hang watchdog's tests); "" when unset.
const std::string& kill_at();
/// A point named by ZT_TEST_KILL_AT: a save's ("dataset", "digests", "close", "commit", "rename", "latest",
/// "latest-rename", "prune") or the start of a training step ("step", index = steps done before it). Does nothing
/// unless the variable names exactly this phase, index and rank.
void kill_point(const char* phase, long index, int rank);
/// ZT_TEST_FREE_BYTES_OVERRIDE=N: the free space the pre-save check sees, so a real write runs into ENOSPC.
std::optional<uint64_t> free_bytes_override();
/// ZT_TEST_ASYNC_COPY_DELAY_MS=N: a background save's host copy sleeps N ms first, so the next step must wait (0: off).
int async_copy_delay_ms();
/// ZT_TEST_SAVE_DELAY_MS=N: every save sleeps N ms before its commit, as a large model's write would (0: off).
int save_delay_ms();
/// ZT_TEST_FAIL_RANK=r: the rank that throws an "injected failure" (-1: none), at step ZT_TEST_FAIL_STEP (default 0).
int fail_rank();
int fail_step();
/// ZT_TEST_FREEZE_COMPUTE_GRADS=1: --freeze computes every gradient (and reduces it) and discards the frozen ones
/// before the reduction, instead of skipping them: the reference the frozen tests compare with.
bool freeze_compute_grads();
/// ZT_TEST_BLOCKING_PARAMS_GATHER=1: stages 1-2 wait for the optimizer step's parameter all-gather at once instead of
/// in the next forward (the engine before the overlap): the reference the overlap bench and the bitwise tests use.
bool blocking_params_gather();

}  // namespace zt::test_hooks
