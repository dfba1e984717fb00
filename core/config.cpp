// Presets, validation and JSON (de)serialisation of ModelConfig and TrainConfig.
#include "core/config.hpp"

#include <set>

#include "core/errors.hpp"

namespace zt {

void ModelConfig::validate() const {
  ZT_CHECK(n_layer >= 1, "n_layer must be >= 1, got {}", n_layer);
  ZT_CHECK(n_head >= 1, "n_head must be >= 1, got {}", n_head);
  ZT_CHECK(d_model >= 1 && d_model % n_head == 0, "d_model ({}) must be a positive multiple of n_head ({})", d_model,
           n_head);
  ZT_CHECK(vocab >= 2, "vocab must be >= 2, got {}", vocab);
  ZT_CHECK(seq_len >= 1, "seq_len must be >= 1, got {}", seq_len);
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

int TrainConfig::grad_accum_steps(int world_size) const {
  const long per_micro = long(micro_batch_size) * world_size;
  ZT_CHECK(global_batch_size % per_micro == 0,
           "global_batch_size {} is not a multiple of micro_batch_size {} x world size {} = {}; choose a "
           "global batch divisible by {} or change --micro_batch_size",
           global_batch_size, micro_batch_size, world_size, per_micro, per_micro);
  return int(global_batch_size / per_micro);
}

void TrainConfig::validate(int world_size) const {
  ZT_CHECK(micro_batch_size >= 1, "--micro_batch_size must be >= 1, got {}", micro_batch_size);
  ZT_CHECK(global_batch_size >= 1, "--global_batch_size must be >= 1, got {}", global_batch_size);
  ZT_CHECK(global_batch_size >= world_size,
           "global_batch_size {} is smaller than the world size {}: every rank needs at least one sequence "
           "per step; raise --global_batch_size or use fewer ranks",
           global_batch_size, world_size);
  grad_accum_steps(world_size);
  ZT_CHECK(max_steps >= 0, "--max_steps must be >= 0, got {}", max_steps);
  ZT_CHECK(learning_rate >= 0, "--learning_rate must be >= 0, got {}", learning_rate);
  ZT_CHECK(warmup_steps >= 0, "--warmup_steps must be >= 0, got {}", warmup_steps);
  ZT_CHECK(min_lr_ratio >= 0 && min_lr_ratio <= 1, "--min_lr_ratio must be in [0, 1], got {}", min_lr_ratio);
  ZT_CHECK(weight_decay >= 0, "--weight_decay must be >= 0, got {}", weight_decay);
  ZT_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, "Adam betas must be in [0, 1), got {}, {}", beta1,
           beta2);
  ZT_CHECK(adam_eps > 0, "--adam_eps must be > 0, got {}", adam_eps);
  ZT_CHECK(val_fraction >= 0 && val_fraction < 1, "--val_fraction must be in [0, 1), got {}", val_fraction);
  ZT_CHECK(log_interval >= 1, "--log_interval must be >= 1, got {}", log_interval);
  ZT_CHECK(eval_interval >= 0, "--eval_interval must be >= 0, got {}", eval_interval);
  ZT_CHECK(eval_batches >= 1, "--eval_batches must be >= 1, got {}", eval_batches);
  ZT_CHECK(zero_stage >= 0 && zero_stage <= 3, "--zero_stage must be 0, 1, 2 or 3, got {}", zero_stage);
  ZT_CHECK(exit_after_steps >= 0, "--exit_after_steps must be >= 0, got {}", exit_after_steps);
  ZT_CHECK(profile_steps >= 0, "--profile_steps must be >= 0, got {}", profile_steps);
  ZT_CHECK(save_total_limit >= 0, "--save_total_limit must be >= 0, got {}", save_total_limit);
  ZT_CHECK(save_interval >= 0, "--save_interval must be >= 0, got {}", save_interval);
  ZT_CHECK(threads >= 0, "--threads must be >= 0, got {}", threads);
  ZT_CHECK(device == "cpu" || device == "cuda" || device == "auto", "--device must be cpu, cuda or auto, got '{}'",
           device);
  ZT_CHECK(dtype == "fp32" || dtype == "bf16" || dtype == "auto", "--dtype must be fp32, bf16 or auto, got '{}'",
           dtype);
  ZT_CHECK(comm == "mpi" || comm == "nccl" || comm == "auto", "--comm must be mpi, nccl or auto, got '{}'", comm);
  ZT_CHECK(sample_interval >= 0, "--sample_interval must be >= 0, got {}", sample_interval);
  ZT_CHECK(init_from.empty() || resume_from_checkpoint.empty(),
           "--init_from {} and --resume_from_checkpoint {} cannot be combined: --init_from starts a new run (step 0, "
           "fresh optimizer) from pretrained parameters, --resume_from_checkpoint continues a saved run with its "
           "optimizer state. Drop --resume_from_checkpoint to start fine-tuning from {}, or drop --init_from to "
           "continue the run (its checkpoint already holds the parameters it started from)",
           init_from, resume_from_checkpoint, init_from);
}

nlohmann::json to_json(const ModelConfig& m) {
  return {
      {"n_layer", m.n_layer}, {"n_head", m.n_head}, {"d_model", m.d_model}, {"vocab", m.vocab}, {"seq_len", m.seq_len}};
}

nlohmann::json to_json(const TrainConfig& t) {
  return {{"data", t.data},
          {"val_data", t.val_data},
          {"val_fraction", t.val_fraction},
          {"micro_batch_size", t.micro_batch_size},
          {"global_batch_size", t.global_batch_size},
          {"max_steps", t.max_steps},
          {"learning_rate", t.learning_rate},
          {"warmup_steps", t.warmup_steps},
          {"min_lr_ratio", t.min_lr_ratio},
          {"weight_decay", t.weight_decay},
          {"beta1", t.beta1},
          {"beta2", t.beta2},
          {"adam_eps", t.adam_eps},
          {"grad_clip", t.grad_clip},
          {"seed", t.seed},
          {"output_dir", t.output_dir},
          {"log_interval", t.log_interval},
          {"eval_interval", t.eval_interval},
          {"eval_batches", t.eval_batches},
          {"zero_stage", t.zero_stage},
          {"threads", t.threads},
          {"device", t.device},
          {"dtype", t.dtype},
          {"comm", t.comm},
          {"save_interval", t.save_interval},
          {"exit_after_steps", t.exit_after_steps},
          {"profile_steps", t.profile_steps},
          {"save_total_limit", t.save_total_limit},
          {"async_save", t.async_save},
          {"resume_from_checkpoint", t.resume_from_checkpoint},
          {"init_from", t.init_from},
          {"sample_interval", t.sample_interval}};
}

namespace {
template <typename V>
void read_key(const nlohmann::json& j, const std::string& key, V& out) {
  try {
    out = j.get<V>();
  } catch (const nlohmann::json::exception& e) {
    ZT_FAIL("config key '{}' has a value of the wrong type ({}): {}", key, j.type_name(), e.what());
  }
}
}  // namespace

void update_from_json(const nlohmann::json& j, ModelConfig& m, TrainConfig& t) {
  ZT_CHECK(j.is_object(), "a config must be a JSON/TOML table of keys, got {}", j.type_name());
  if (j.contains("preset")) {
    std::string p;
    read_key(j["preset"], "preset", p);
    m = model_preset(p);
  }
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const auto& v = it.value();
    if (k == "preset") continue;
    if (k == "n_layer")
      read_key(v, k, m.n_layer);
    else if (k == "n_head")
      read_key(v, k, m.n_head);
    else if (k == "d_model")
      read_key(v, k, m.d_model);
    else if (k == "vocab")
      read_key(v, k, m.vocab);
    else if (k == "seq_len")
      read_key(v, k, m.seq_len);
    else if (k == "data")
      read_key(v, k, t.data);
    else if (k == "val_data")
      read_key(v, k, t.val_data);
    else if (k == "val_fraction")
      read_key(v, k, t.val_fraction);
    else if (k == "micro_batch_size")
      read_key(v, k, t.micro_batch_size);
    else if (k == "global_batch_size")
      read_key(v, k, t.global_batch_size);
    else if (k == "max_steps")
      read_key(v, k, t.max_steps);
    else if (k == "learning_rate")
      read_key(v, k, t.learning_rate);
    else if (k == "warmup_steps")
      read_key(v, k, t.warmup_steps);
    else if (k == "min_lr_ratio")
      read_key(v, k, t.min_lr_ratio);
    else if (k == "weight_decay")
      read_key(v, k, t.weight_decay);
    else if (k == "beta1")
      read_key(v, k, t.beta1);
    else if (k == "beta2")
      read_key(v, k, t.beta2);
    else if (k == "adam_eps")
      read_key(v, k, t.adam_eps);
    else if (k == "grad_clip")
      read_key(v, k, t.grad_clip);
    else if (k == "seed")
      read_key(v, k, t.seed);
    else if (k == "output_dir")
      read_key(v, k, t.output_dir);
    else if (k == "log_interval")
      read_key(v, k, t.log_interval);
    else if (k == "eval_interval")
      read_key(v, k, t.eval_interval);
    else if (k == "eval_batches")
      read_key(v, k, t.eval_batches);
    else if (k == "zero_stage")
      read_key(v, k, t.zero_stage);
    else if (k == "threads")
      read_key(v, k, t.threads);
    else if (k == "device")
      read_key(v, k, t.device);
    else if (k == "dtype")
      read_key(v, k, t.dtype);
    else if (k == "comm")
      read_key(v, k, t.comm);
    else if (k == "save_interval")
      read_key(v, k, t.save_interval);
    else if (k == "exit_after_steps")
      read_key(v, k, t.exit_after_steps);
    else if (k == "profile_steps")
      read_key(v, k, t.profile_steps);
    else if (k == "save_total_limit")
      read_key(v, k, t.save_total_limit);
    else if (k == "async_save")
      read_key(v, k, t.async_save);
    else if (k == "resume_from_checkpoint")
      read_key(v, k, t.resume_from_checkpoint);
    else if (k == "init_from")
      read_key(v, k, t.init_from);
    else if (k == "sample_interval")
      read_key(v, k, t.sample_interval);
    else
      ZT_FAIL("unknown config key '{}'", k);
  }
}

std::vector<std::string> diff_model_config(const ModelConfig& a, const ModelConfig& b) {
  std::vector<std::string> out;
  auto cmp = [&](const char* name, int x, int y) {
    if (x != y) out.push_back(fmt::format("{}: {} -> {}", name, x, y));
  };
  cmp("n_layer", a.n_layer, b.n_layer);
  cmp("n_head", a.n_head, b.n_head);
  cmp("d_model", a.d_model, b.d_model);
  cmp("vocab", a.vocab, b.vocab);
  cmp("seq_len", a.seq_len, b.seq_len);
  return out;
}

}  // namespace zt
