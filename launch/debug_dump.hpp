// --debug_dump_dir: initial parameters, each step's batch, reduced gradients and updated parameters, for
// cross-checks against other implementations (test/e2e/torch_crosscheck.py reads them).
#pragma once

#include <nlohmann/json.hpp>

#include <functional>
#include <string>

#include "core/config.hpp"
#include "core/data.hpp"
#include "core/model.hpp"

namespace zt {

class ZeroEngine;

/// Calls `fn` with every tensor of the table in table order and its logical values (padding removed): the engine's
/// parameters, or its reduced gradients when `grads`. Collective over the engine's comm (units are gathered).
void for_each_logical_tensor(ZeroEngine& engine, const ParamTable& table, bool grads,
                             const std::function<void(const TensorSpec&, const float*)>& fn);

/// The debug dump of a run; every method is a no-op when the directory is empty. The tensor dumps are collective
/// (every rank gathers), the lead rank writes the files: params_init.bin, batch_<step>.bin, grads_<step>.bin,
/// params_<step>.bin (float32 / int32 little-endian, tensors in table order) and index.json describing them.
class DebugDump {
 public:
  DebugDump(const std::string& dir, ZeroEngine& engine, const ParamTable& table, bool lead);

  bool enabled() const { return !dir_.empty(); }
  /// params_init.bin and the index's header (configs, tensor offsets, world size).
  void initial(const ModelConfig& model, const TrainConfig& train, int world_size);
  /// After the backward of `step`: the reduced gradients, and the global batch the step consumed.
  void gradients(int step, const DataLoader& loader, int64_t batch_index, int global_batch_size);
  /// After the optimizer update of `step`: the parameters, and the step's row of the index.
  void parameters(int step, double loss, double lr, double grad_norm);
  /// Writes index.json.
  void finish();

 private:
  void write_tensors(bool grads, const std::string& path);

  std::string dir_;
  ZeroEngine& engine_;
  const ParamTable& table_;
  bool lead_;
  nlohmann::json index_;
};

}  // namespace zt
