// Presets, validation across fields, and the resume rule (the checkpoint's configuration as the default).
#include "core/config.hpp"

#include <climits>

#include "core/errors.hpp"

namespace zt {

namespace {

// Every field's own limits, on values however they were set (tests and tools build configs in code).
void check_fields(bool model, const ModelConfig& m, const TrainConfig& t) {
  for (const auto& f : config_fields()) {
    if (f.model != model) continue;
    ModelConfig m2 = m;
    TrainConfig t2 = t;
    set_field(f, f.get(m, t), m2, t2, "--" + f.name);
  }
}

}  // namespace

void ModelConfig::validate() const {
  check_fields(true, *this, TrainConfig());
  ZT_CHECK(d_model % n_head == 0, "d_model ({}) must be a positive multiple of n_head ({})", d_model, n_head);
}

bool ModelConfig::operator==(const ModelConfig& o) const { return diff_model_config(*this, o).empty(); }

const std::vector<std::string>& preset_names() {
  static const std::vector<std::string> names = {"tiny", "small", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"};
  return names;
}

ModelConfig model_preset(const std::string& name) {
  auto make = [](int L, int H, int C, int V, int T) {
    ModelConfig m;
    m.n_layer = L;
    m.n_head = H;
    m.d_model = C;
    m.vocab = V;
    m.seq_len = T;
    return m;
  };
  if (name == "tiny") return make(2, 2, 64, 256, 32);
  if (name == "small") return make(4, 4, 256, 256, 128);
  if (name == "gpt2") return make(12, 12, 768, 50257, 1024);
  if (name == "gpt2-medium") return make(24, 16, 1024, 50257, 1024);
  if (name == "gpt2-large") return make(36, 20, 1280, 50257, 1024);
  if (name == "gpt2-xl") return make(48, 25, 1600, 50257, 1024);
  ZT_FAIL("unknown preset '{}'; valid presets: {}", name, fmt::join(preset_names(), ", "));
}

int TrainConfig::global_batch(int world_size) const {
  if (global_batch_size != 0) return global_batch_size;
  const long derived = long(micro_batch_size) * world_size;
  ZT_CHECK(derived <= INT_MAX, "micro_batch_size {} x world size {} overflows a global batch; lower --micro_batch_size",
           micro_batch_size, world_size);
  return int(derived);
}

int TrainConfig::grad_accum_steps(int world_size) const {
  const long per_micro = long(micro_batch_size) * world_size;
  const int G = global_batch(world_size);
  ZT_CHECK(G % per_micro == 0,
           "global_batch_size {} is not a multiple of micro_batch_size {} x world size {} = {}; choose a "
           "global batch divisible by {}, change --micro_batch_size, or leave --global_batch_size unset ({} here)",
           G, micro_batch_size, world_size, per_micro, per_micro, per_micro);
  return int(G / per_micro);
}

void TrainConfig::validate(int world_size) const {
  check_fields(false, ModelConfig(), *this);
  ZT_CHECK(global_batch(world_size) >= world_size,
           "global_batch_size {} is smaller than the world size {}: every rank needs at least one sequence "
           "per step; raise --global_batch_size or use fewer ranks",
           global_batch(world_size), world_size);
  grad_accum_steps(world_size);
  // 'latest' with --init_from is what a requeued fine-tuning job passes (launch/zerotrain.sbatch always says
  // latest): it resumes its own checkpoint once one is committed. A named checkpoint leaves nothing to init.
  ZT_CHECK(init_from.empty() || resume_from_checkpoint.empty() || resume_from_checkpoint == "latest",
           "--init_from {} and --resume_from_checkpoint {} cannot be combined: --init_from starts a new run (step 0, "
           "fresh optimizer) from pretrained parameters, --resume_from_checkpoint continues a saved run with its "
           "optimizer state. Drop --resume_from_checkpoint to start fine-tuning from {}, or drop --init_from to "
           "continue the run (its checkpoint already holds the parameters it started from); "
           "--resume_from_checkpoint latest may be combined with --init_from (resumes once a checkpoint exists)",
           init_from, resume_from_checkpoint, init_from);
}

ResumedConfig resume_config(const nlohmann::json& manifest, const ModelConfig& m, const TrainConfig& t,
                            const std::set<std::string>& explicit_keys, const std::string& checkpoint) {
  ResumedConfig out{m, t, {}};
  std::vector<std::string> model_diffs, other_diffs;
  for (const auto& f : config_fields()) {
    const char* section = f.model ? "model" : "train";
    if (f.on_resume == OnResume::this_run || !manifest.contains(section) || !manifest[section].is_object() ||
        !manifest[section].contains(f.name))
      continue;
    ModelConfig saved_m = m;
    TrainConfig saved_t = t;
    set_field(f, manifest[section][f.name], saved_m, saved_t,
              fmt::format("checkpoint {}: {}.{}", checkpoint, section, f.name));
    const nlohmann::json saved = f.get(saved_m, saved_t), now = f.get(m, t);
    if (explicit_keys.count(f.name) == 0) {
      f.put(out.model, out.train, saved);
      continue;
    }
    if (saved == now) continue;
    const std::string change = fmt::format("{} {} -> {}", f.name, saved.dump(), now.dump());
    if (f.on_resume == OnResume::must_match)
      (f.model ? model_diffs : other_diffs).push_back(fmt::format("{}: {} -> {}", f.name, saved.dump(), now.dump()));
    else if (f.on_resume == OnResume::listed)
      out.changed.push_back(change);
  }
  ZT_CHECK(model_diffs.empty(),
           "checkpoint {} was written for a different model: {}; a resume takes the model from the checkpoint: "
           "drop these flags (or config-file keys, or --preset), or start a new run in another --output_dir",
           checkpoint, fmt::join(model_diffs, "; "));
  ZT_CHECK(other_diffs.empty(),
           "checkpoint {} cannot be resumed with a different {}: a resume keeps these fields (docs/usage.md, "
           "\"Resume\"); drop the flag or config-file key, or start a new run in another --output_dir",
           checkpoint, fmt::join(other_diffs, "; "));
  return out;
}

}  // namespace zt
