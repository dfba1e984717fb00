// Where a run starts: a checkpoint directory, the most recently committed checkpoint that loads (`latest`), or the
// seed; never a fresh start over committed checkpoints unless --allow_fresh_start asks for it.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "launch/trainer.hpp"

namespace zt {

class HangWatchdog;
class MpiComm;
struct ResumeSource;

/// A run built to start from `src` (no path: the seed), told the names (`checkpoint-<step>`) of the output
/// directory's checkpoints that did not load; returns what trains it. Collective. A failed load throws the
/// CheckpointError that every rank agreed on, and the next candidate is tried.
using RunBuilder =
    std::function<std::function<TrainSummary()>(const ResumeSource& src, const std::vector<std::string>& unloadable)>;

/// Chooses the start of a run asked for by `requested` (resume_from_checkpoint, output_dir, allow_fresh_start),
/// builds it with `build` and trains. A path is loaded, or its error thrown. `latest` tries the committed checkpoints
/// most recently committed first, each built with its own manifest (so settings and state come from the same one),
/// and skips one that does not load with a warning. Training from scratch where committed checkpoints exist (none
/// loads, or no resume was asked for) throws zt::Error listing them and why each failed, unless
/// --allow_fresh_start. `watchdog` (may be null) is put back to start-up after each failed candidate. Collective.
TrainSummary train_from_start_point(const TrainConfig& requested, MpiComm& control, const RunBuilder& build,
                                    HangWatchdog* watchdog);

}  // namespace zt
