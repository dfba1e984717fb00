// Model and training configuration, presets, and their JSON form (used by --config and the checkpoint manifest).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace zt {

/// GPT-2 family dimensions. vocab is the real vocabulary; padded_vocab() rounds it up to a multiple of 128.
struct ModelConfig {
  int n_layer = 2;
  int n_head = 2;
  int d_model = 64;
  int vocab = 256;
  int seq_len = 32;  ///< maximum sequence length (rows of wpe)

  int padded_vocab() const { return (vocab + 127) / 128 * 128; }
  int head_dim() const { return d_model / n_head; }
  /// Throws zt::Error naming the first invalid dimension.
  void validate() const;
  bool operator==(const ModelConfig& o) const;
};

/// Names of the presets, in order: tiny, small, gpt2, gpt2-medium, gpt2-large, gpt2-xl.
const std::vector<std::string>& preset_names();
/// The preset's dimensions; throws zt::Error listing the valid names for an unknown one.
ModelConfig model_preset(const std::string& name);

/// Everything about a run except the model shape.
struct TrainConfig {
  std::string data = "synthetic";  ///< "synthetic", a text file path, or a glob of llm.c *.bin shards
  std::string val_data;            ///< optional separate validation source (same forms as data)
  double val_fraction = 0.05;      ///< share of sequences held out for validation when val_data is empty
  int micro_batch_size = 4;        ///< sequences per rank per micro-step
  int global_batch_size = 8;       ///< sequences per optimizer step, across all ranks and micro-steps
  int max_steps = 50;
  double learning_rate = 3e-3;
  int warmup_steps = 5;
  double min_lr_ratio = 0.1;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double adam_eps = 1e-8;
  double grad_clip = 1.0;  ///< global grad-norm clip; <= 0 disables
  uint64_t seed = 1234;
  std::string output_dir = "output";
  int log_interval = 1;
  int eval_interval = 0;  ///< 0 disables validation
  int eval_batches = 4;   ///< global batches per validation pass
  int zero_stage = 0;
  int threads = 0;                     ///< 0: hardware threads / local ranks
  std::string device = "cpu";          ///< cpu, cuda, or auto (cuda when every rank sees a GPU)
  std::string dtype = "auto";          ///< matmul precision: fp32, bf16, or auto (bf16 on cuda, fp32 on cpu)
  std::string comm = "auto";           ///< mpi, nccl, or auto (nccl on cuda with a GPU per rank, else mpi)
  int exit_after_steps = 0;            ///< stop (saving a checkpoint first) after this many steps of this run; 0: off
  int profile_steps = 0;               ///< time every op of this many steps (after the first) and print where it goes
  int save_total_limit = 0;            ///< keep only the newest K committed checkpoints; 0: keep all
  bool async_save = false;             ///< write checkpoints in the background (the step blocks for the host copy)
  int save_interval = 0;               ///< checkpoint every N steps and at the end; 0: no checkpoints
  std::string resume_from_checkpoint;  ///< "", "latest" (newest committed in output_dir) or a checkpoint directory
  std::string init_from;    ///< pretrained parameters: an llm.c model file, a Hugging Face directory, a checkpoint
  int sample_interval = 0;  ///< rank 0 logs a short generated sample every N steps; 0: off

  /// micro-steps per optimizer step for a world size; throws zt::Error when the global batch does not split.
  int grad_accum_steps(int world_size) const;
  void validate(int world_size) const;
};

nlohmann::json to_json(const ModelConfig& m);
nlohmann::json to_json(const TrainConfig& t);
/// Reads the keys present in j into m/t; throws zt::Error naming an unknown key or a bad value.
void update_from_json(const nlohmann::json& j, ModelConfig& m, TrainConfig& t);
/// Lists "field: a -> b" for every model field that differs (empty when equal).
std::vector<std::string> diff_model_config(const ModelConfig& saved, const ModelConfig& now);

}  // namespace zt
