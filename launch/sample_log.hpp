// --sample_interval: rank 0 logs a short generated continuation during training, a part of the Trainer.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "core/data.hpp"
#include "core/model.hpp"

namespace zt {

class FullParams;
class Generator;
class ZeroEngine;

/// Continues the opening tokens of the first validation (else training) sequence with the current parameters. At
/// ZeRO-3 every rank takes part in gathering them to rank 0, which then holds the whole model (the generator's
/// parameters and K/V cache stay allocated between samples); below stage 3 rank 0 already has every parameter.
class SampleLog {
 public:
  /// `interval` 0: off (nothing is allocated). `announce`: this rank prints (rank 0 unless quiet).
  SampleLog(const ParamTable& table, Backend& backend, const DataLoader& loader, uint64_t seed, int interval, bool lead,
            bool announce);
  ~SampleLog();
  SampleLog(const SampleLog&) = delete;
  SampleLog& operator=(const SampleLog&) = delete;

  /// After `steps_done` steps: samples and prints when the interval says so. Collective over the engine's comm at
  /// ZeRO-3 (all ranks call it at every step).
  void after_step(int steps_done, ZeroEngine& engine);

 private:
  std::string sample(ZeroEngine& engine, uint64_t step);

  const ParamTable& table_;
  Backend& be_;
  const uint64_t seed_;
  const int interval_;
  const bool lead_, announce_;
  std::vector<int32_t> prompt_;
  std::unique_ptr<FullParams> params_;
  std::unique_ptr<Generator> gen_;
};

}  // namespace zt
