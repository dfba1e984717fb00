// `zerotrain train` around the Trainer: the hang watchdog, the output directory's lock and the clean-up of what
// crashes left there, and the checkpoint a run starts from (settings and state from the same one; never a fresh
// start over committed checkpoints unless asked for).
#pragma once

#include <functional>

#include "launch/config_cli.hpp"
#include "launch/device_select.hpp"
#include "launch/trainer.hpp"

namespace zt {

class MpiComm;

/// Builds the device of a run (backend, data communicator) for its training config, resolving device, dtype and
/// comm in it (zt::make_run_device). Collective.
using DeviceFactory = std::function<RunDevice(TrainConfig&)>;

/// Runs `zerotrain train` with the configuration that flags and files ask for. Collective over `control`:
/// 1. starts the hang watchdog (--hang_timeout), which watches every later phase;
/// 2. takes the output directory's lock (zt::RunDirLock; every rank throws RunDirLockedError naming the holder when
///    another job has it) and finishes what crashed saves and prunes left there, one line each on rank 0;
/// 3. chooses the checkpoint. A path is loaded, or its error thrown. `latest` tries the committed checkpoints most
///    recently committed first, each with its own configuration (apply_resume_config), and skips one that does not
///    load, with a warning. Starting from scratch where committed checkpoints exist (none loads, or no resume was
///    asked for) throws zt::Error listing them, and why each failed, unless --allow_fresh_start;
/// 4. trains (Trainer::run).
TrainSummary run_train(const TrainSettings& requested, MpiComm& control, const DeviceFactory& make_device,
                       RunOptions opts);

}  // namespace zt
