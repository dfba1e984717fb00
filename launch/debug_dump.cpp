// DebugDump: the files of --debug_dump_dir, and the gather of logical tensors it shares with the trainer.
#include "launch/debug_dump.hpp"

#include <filesystem>
#include <fstream>
#include <vector>

#include "core/errors.hpp"
#include "sharding/zero_engine.hpp"

namespace zt {

void for_each_logical_tensor(ZeroEngine& engine, const ParamTable& table, bool grads,
                             const std::function<void(const TensorSpec&, const float*)>& fn) {
  std::vector<float> full;
  for (size_t u = 0; u < table.units().size(); ++u) {
    full.assign(table.units()[u].numel, 0.0f);
    engine.gather_unit(int(u), grads, full.data());
    for (int ti : table.units()[u].tensors) {
      const TensorSpec& t = table.tensors()[size_t(ti)];
      fn(t, full.data() + t.unit_offset);
    }
  }
}

DebugDump::DebugDump(const std::string& dir, ZeroEngine& engine, const ParamTable& table, bool lead)
    : dir_(dir), engine_(engine), table_(table), lead_(lead) {}

void DebugDump::write_tensors(bool grads, const std::string& path) {
  std::ofstream out;
  if (lead_) {
    out.open(path, std::ios::binary);
    ZT_CHECK(out.good(), "cannot write debug dump file {}", path);
  }
  for_each_logical_tensor(engine_, table_, grads, [&](const TensorSpec& t, const float* data) {
    if (lead_) out.write(reinterpret_cast<const char*>(data), std::streamsize(t.numel() * 4));
  });
  if (lead_) ZT_CHECK(out.good(), "failed writing debug dump file {}", path);
}

void DebugDump::initial(const ModelConfig& model, const TrainConfig& train, int world_size) {
  if (!enabled()) return;
  if (lead_) std::filesystem::create_directories(dir_);
  write_tensors(false, dir_ + "/params_init.bin");
  if (!lead_) return;
  nlohmann::json tensors = nlohmann::json::array();
  size_t off = 0;
  for (const auto& t : table_.tensors()) {
    tensors.push_back({{"name", t.name}, {"shape", t.shape}, {"offset", off}, {"decay", t.decay}});
    off += t.numel();
  }
  index_ = {{"model", to_json(model)},
            {"train", to_json(train)},
            {"tensors", tensors},
            {"world_size", world_size},
            {"steps", nlohmann::json::array()}};
}

void DebugDump::gradients(int step, const DataLoader& loader, int64_t batch_index, int global_batch_size) {
  if (!enabled()) return;
  write_tensors(true, fmt::format("{}/grads_{}.bin", dir_, step));
  if (!lead_) return;
  // The global batch this step consumed, as the rank slices saw it.
  const size_t n = size_t(global_batch_size) * size_t(loader.seq_len());
  std::vector<int32_t> inputs(n), targets(n);
  loader.train_batch(batch_index, global_batch_size, 0, global_batch_size, inputs.data(), targets.data());
  std::ofstream out(fmt::format("{}/batch_{}.bin", dir_, step), std::ios::binary);
  out.write(reinterpret_cast<const char*>(inputs.data()), std::streamsize(n * 4));
  out.write(reinterpret_cast<const char*>(targets.data()), std::streamsize(n * 4));
}

void DebugDump::parameters(int step, double loss, double lr, double grad_norm) {
  if (!enabled()) return;
  write_tensors(false, fmt::format("{}/params_{}.bin", dir_, step));
  if (lead_) index_["steps"].push_back({{"step", step}, {"loss", loss}, {"lr", lr}, {"grad_norm", grad_norm}});
}

void DebugDump::finish() {
  if (!enabled() || !lead_) return;
  std::ofstream idx(dir_ + "/index.json");
  idx << index_.dump(1) << '\n';
}

}  // namespace zt
