// Model and training configuration: every field is declared once, in the two tables below; the CLI flags, config
// files, the checkpoint manifest and the resume rule are all generated from them.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <vector>

namespace zt {

/// What a resume does with a field the checkpoint recorded (docs/usage.md, "Resume keeps the checkpoint's
/// configuration"). A value given explicitly (a flag or a config-file key) always wins, except for must_match.
enum class OnResume {
  must_match,  ///< taken from the checkpoint; an explicit different value is an error (model shape, global batch)
  listed,      ///< taken from the checkpoint unless given; a different value given is listed ("changed on resume")
  restored,    ///< taken from the checkpoint unless given; a different value given is used silently
  this_run,    ///< never taken from the checkpoint: where this run writes, what it resumes, how it runs
};

/// Whether the checkpoint manifest's `model`/`train` object records the field.
enum class InManifest { saved, unsaved };

/// Limits a field's value must keep, checked wherever a value arrives (flag, config file, manifest) and by
/// validate(). Numbers are checked against [lo, hi] (bounds excluded where open); real numbers must be finite.
struct FieldCheck {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  bool lo_open = false, hi_open = false;
  std::vector<std::string> choices;  ///< the allowed values of an enumerated string (empty: any string)
};
/// No limit beyond the type's.
FieldCheck any();
/// value >= lo
FieldCheck at_least(double lo);
/// value > lo
FieldCheck above(double lo);
/// lo <= value <= hi
FieldCheck closed(double lo, double hi);
/// lo <= value < hi
FieldCheck half_open(double lo, double hi);
/// lo < value <= hi
FieldCheck above_at_most(double lo, double hi);
/// One of `choices` (an enumerated string, shown in --help).
FieldCheck one_of(std::vector<std::string> choices);

using StringList = std::vector<std::string>;

// clang-format off
/// The model's fields, one line each: X(type, name, default, manifest, on_resume, check, help). `name` is the flag
/// (--name), the config-file key and the manifest key. The defaults are the `tiny` preset. The limits keep the
/// padded vocabulary in an int and every byte count the model derives (64-bit) from overflowing.
#define ZT_MODEL_FIELDS(X)                                                                                             \
  X(int, n_layer, 2, saved, must_match, closed(1, 4096), "Transformer blocks (overrides the preset)")                  \
  X(int, n_head, 2, saved, must_match, closed(1, 4096), "Attention heads")                                             \
  X(int, d_model, 64, saved, must_match, closed(1, 65536), "Model width")                                              \
  X(int, vocab, 256, saved, must_match, closed(2, 1 << 24), "Vocabulary size (padded to a multiple of 128)")           \
  X(int, seq_len, 32, saved, must_match, closed(1, 1 << 20), "Sequence length (rows of the position embedding)")

/// The training fields, one line each, in the same form. Supported types: int, int64_t, uint64_t, double, bool,
/// std::string (an enumerated one with one_of), StringList (comma-separated on the command line, an array in files).
#define ZT_TRAIN_FIELDS(X)                                                                                             \
  X(std::string, data, "synthetic", saved, listed, any(),                                                              \
    "'synthetic' (built-in corpus), a text file (bytes), or a glob of llm.c .bin token shards")                        \
  X(std::string, val_data, "", saved, listed, any(),                                                                   \
    "Validation data (same forms as --data); default: hold out --val_fraction of --data")                              \
  X(double, val_fraction, 0.05, saved, listed, half_open(0, 1), "Share of sequences held out for validation")          \
  X(int, micro_batch_size, 4, saved, restored, at_least(1), "Sequences per rank per micro-step")                       \
  X(int, global_batch_size, 0, saved, must_match, at_least(0),                                                         \
    "Sequences per optimizer step across all ranks (gradient accumulation fills the rest); 0: micro_batch_size x "     \
    "ranks (on resume: the checkpoint's)")                                                                             \
  X(int, max_steps, 50, saved, listed, at_least(0), "Optimizer steps to run (the cosine schedule's length)")           \
  X(double, learning_rate, 3e-3, saved, listed, at_least(0), "Peak learning rate")                                     \
  X(int, warmup_steps, 5, saved, listed, at_least(0), "Linear warmup steps")                                           \
  X(double, min_lr_ratio, 0.1, saved, listed, closed(0, 1), "Cosine decay floor as a fraction of the peak LR")         \
  X(double, weight_decay, 0.1, saved, listed, at_least(0), "AdamW decoupled weight decay (2-D tensors only)")          \
  X(double, beta1, 0.9, saved, listed, half_open(0, 1), "AdamW beta1")                                                 \
  X(double, beta2, 0.95, saved, listed, half_open(0, 1), "AdamW beta2")                                                \
  X(double, adam_eps, 1e-8, saved, listed, above(0), "AdamW epsilon")                                                  \
  X(double, grad_clip, 1.0, saved, listed, any(), "Global grad-norm clip (<= 0 disables)")                             \
  X(uint64_t, seed, 1234, saved, listed, any(), "Seed for initialisation and data order")                              \
  X(std::string, output_dir, "output", saved, this_run, any(), "Directory for metrics.jsonl and checkpoints")          \
  X(int, log_interval, 1, saved, restored, at_least(1), "Steps between progress lines")                                \
  X(int, eval_interval, 0, saved, restored, at_least(0), "Steps between validation passes (0: never)")                 \
  X(int, eval_batches, 4, saved, restored, at_least(1), "Global batches per validation pass")                          \
  X(int, zero_stage, 0, saved, restored, closed(0, 3),                                                                 \
    "ZeRO stage: 0 replicated, 1 +optimizer sharded, 2 +gradients, 3 +parameters")                                     \
  X(double, zero_bucket_mb, 32, saved, restored, above_at_most(0, 1 << 20),                                           \
    "ZeRO: units larger than this (MiB) are gathered and reduced in parts (docs/sharding.md)")                         \
  X(std::string, recompute, "none", saved, restored, one_of({"none", "attention", "block"}),                           \
    "Activation recomputation: none, attention (probabilities and output) or block (keep only block inputs); the "     \
    "same bits as none")                                                                                               \
  X(int, threads, 0, saved, this_run, at_least(0), "CPU threads per rank (0: cores / ranks on the node)")              \
  X(std::string, device, "cpu", saved, restored, one_of({"cpu", "cuda", "auto"}),                                      \
    "cpu, cuda, or auto (cuda when every rank sees a GPU); GPU = local rank mod the node's GPUs")                      \
  X(std::string, dtype, "auto", saved, this_run, one_of({"auto", "bf16", "fp32"}),                                     \
    "Matmul precision on cuda: bf16 (fp32 accumulation; fp32 master weights and Adam state) or fp32; auto: bf16 on "   \
    "cuda, fp32 on cpu (the CPU computes in fp32 only)")                                                               \
  X(std::string, comm, "auto", saved, this_run, one_of({"auto", "nccl", "mpi"}),                                       \
    "Collectives on cuda: nccl (one GPU per rank), mpi (staged through pinned host memory; ranks may share a GPU), "   \
    "or auto (nccl when every rank has its own GPU and NCCL loads, else mpi)")                                         \
  X(int, exit_after_steps, 0, saved, this_run, at_least(0),                                                            \
    "Stop after N steps of this run, saving a checkpoint first (time-sliced jobs; 0: off)")                            \
  X(int, profile_steps, 0, saved, this_run, at_least(0),                                                               \
    "Time every op of N steps (after this run's first) and print where a step's time goes (rank 0)")                   \
  X(int, save_total_limit, 0, saved, restored, at_least(0),                                                            \
    "Keep only the newest K committed checkpoints (never the one `latest` names; 0: keep all)")                        \
  X(bool, async_save, false, saved, restored, any(),                                                                   \
    "Write checkpoints in the background; the step blocks only for the copy to host memory")                           \
  X(int, save_interval, 0, saved, restored, at_least(0), "Save a checkpoint every N steps and at the end (0: never)")  \
  X(bool, incremental_checkpoints, false, saved, restored, any(),                                                      \
    "Write only the tensors that changed since the previous checkpoint; the rest become HDF5 external links to the "   \
    "checkpoint that holds them")                                                                                      \
  X(StringList, freeze, {}, saved, restored, any(),                                                                    \
    "Comma-separated globs over tensor names (wte, wpe, h.0.attn.c_attn.weight, ...) to freeze: no gradient, no "      \
    "reduction, no Adam state, no weight decay; turns --incremental_checkpoints on unless given")                      \
  X(int, full_checkpoint_interval, 10, saved, restored, at_least(0),                                                   \
    "With --incremental_checkpoints: every Nth save writes every tensor, bounding what a checkpoint links to (0: "     \
    "only the first)")                                                                                                 \
  X(std::string, resume_from_checkpoint, "", saved, this_run, any(),                                                   \
    "Resume from a checkpoint directory, or 'latest' (newest committed in --output_dir that loads; fresh start if "    \
    "there is none, an error if there are some and none loads)")                                                       \
  X(std::string, init_from, "", saved, this_run, any(),                                                                \
    "Start from pretrained parameters (step 0, fresh optimizer): an llm.c model file, a Hugging Face GPT-2 directory " \
    "or model.safetensors, or a zerotrain checkpoint; with --resume_from_checkpoint latest, only when no checkpoint "  \
    "is committed yet")                                                                                                \
  X(int, sample_interval, 0, saved, restored, at_least(0),                                                             \
    "Rank 0 logs a short generated sample every N steps (0: never)")                                                   \
  X(bool, allow_fresh_start, false, unsaved, this_run, any(),                                                          \
    "Train from scratch even though --output_dir holds committed checkpoints (none loads, or no resume was asked "     \
    "for); they stay until this run's saves replace or prune them")                                                    \
  X(double, hang_timeout, 600, unsaved, this_run, at_least(0),                                                         \
    "Seconds without progress (a step, evaluation, save or load finishing) after which every live rank reports where " \
    "it waits and the job ends with status 124; saves and loads get their expected I/O time on top (0: off)")         \
  X(std::string, ckpt_write, "auto", unsaved, this_run, one_of({"auto", "hdf5"}),                                      \
    "How checkpoint tensors reach the file: hdf5 (always H5Dwrite) or auto (pwrite by each rank where every rank can " \
    "open the file, else H5Dwrite; the deprecated ZT_CKPT_WRITE=hdf5 when set)")                                       \
  X(std::string, cuda_attention, "auto", unsaved, this_run, one_of({"auto", "fp32", "fa2"}),                           \
    "CUDA attention kernels in bf16 mode: fp32 (the fp32 kernels, to compare), fa2 (FlashAttention-2-style tensor-"   \
    "core kernels: 128-query tiles, cp.async double buffering; head size 64) or auto (tensor cores; the deprecated "  \
    "ZT_CUDA_ATTENTION when set)")                                                                                     \
  X(std::string, cuda_attention_dkv_blocks, "auto", unsaved, this_run, one_of({"auto", "3"}),                          \
    "CUDA tensor-core dK/dV kernel: 3 (built for 3 blocks an SM) or auto (the compiler's register choice; the "        \
    "deprecated ZT_CUDA_ATTENTION_DKV_BLOCKS when set)")                                                               \
  X(std::string, cuda_param_copy, "auto", unsaved, this_run, one_of({"auto", "on", "off"}),                            \
    "CUDA bf16 mode: keep bf16 copies of parameters and activations (on) or round per matmul (off; the same bits); "   \
    "auto: on, or the deprecated ZT_CUDA_PARAM_COPY=0 when set")                                                      \
  X(std::string, cuda_epilogues, "auto", unsaved, this_run, one_of({"auto", "on", "off"}),                             \
    "CUDA: fold GELU, its derivative and the bias gradients into the cuBLASLt products (on) or run them as separate "  \
    "kernels (off); auto: off until a GPU run shows the fused form faster")                                            \
  X(std::string, cuda_activations, "auto", unsaved, this_run, one_of({"auto", "fp32", "bf16", "bf16_residual"}),       \
    "CUDA --dtype bf16: hold every activation and activation gradient but the residual stream in bf16 alone, in "      \
    "half the memory (bf16), the residual stream and its gradient too (bf16_residual), or in fp32 beside the "         \
    "matmuls' bf16 copies (fp32); auto: fp32 until a GPU run shows bf16 faster")                                       \
  X(std::string, cuda_graphs, "auto", unsaved, this_run, one_of({"auto", "on", "off"}),                                \
    "CUDA: replay each micro-step's forward and backward as one CUDA graph, captured after a warm-up (on; op by op "  \
    "at ZeRO stages 2-3) or launch op by op (off); auto: off until a GPU run shows the graphs faster")
// clang-format on

#define ZT_CONFIG_DECLARE_FIELD(type, name, def, manifest, on_resume, check, help) type name = def;

/// GPT-2 family dimensions. vocab is the real vocabulary; padded_vocab() rounds it up to a multiple of 128.
struct ModelConfig {
  ZT_MODEL_FIELDS(ZT_CONFIG_DECLARE_FIELD)

  int padded_vocab() const { return (vocab + 127) / 128 * 128; }
  int head_dim() const { return d_model / n_head; }
  /// Throws zt::Error naming the first invalid dimension.
  void validate() const;
  bool operator==(const ModelConfig& o) const;
};

/// Everything about a run except the model shape.
struct TrainConfig {
  ZT_TRAIN_FIELDS(ZT_CONFIG_DECLARE_FIELD)

  /// The global batch for a world size: global_batch_size, or when that is 0, micro_batch_size x world_size (one
  /// micro-step per rank, as DeepSpeed derives train_batch_size), so the default splits over any number of ranks.
  int global_batch(int world_size) const;
  /// micro-steps per optimizer step for a world size; throws zt::Error when the global batch does not split.
  int grad_accum_steps(int world_size) const;
  void validate(int world_size) const;
};

#undef ZT_CONFIG_DECLARE_FIELD

/// The C++ type of a field, as the table declares it.
enum class FieldKind { int32, int64, uint64, real, boolean, text, text_list };

/// One row of the tables: what the CLI, the config-file reader, the manifest and the resume rule know of a field.
struct FieldSpec {
  std::string name;  ///< flag --name, config-file key, manifest key
  FieldKind kind;
  bool model;  ///< a ModelConfig field (manifest `model`), else a TrainConfig one (manifest `train`)
  InManifest manifest;
  OnResume on_resume;
  FieldCheck check;
  std::string help;
  std::string default_text;  ///< the default as --help shows it
  nlohmann::json (*get)(const ModelConfig&, const TrainConfig&);
  void (*put)(ModelConfig&, TrainConfig&, const nlohmann::json&);  ///< stores a value already checked
};

/// Every field, the model's first, in table order.
const std::vector<FieldSpec>& config_fields();
/// The field called `name`, or nullptr.
const FieldSpec* find_field(const std::string& name);
/// Checks `value` against the field's type and limits (strictly: no float, bool or string where an integer goes,
/// integers in range, real numbers finite) and stores it. Throws zt::Error "<where> must be ..., got <value>".
void set_field(const FieldSpec& f, const nlohmann::json& value, ModelConfig& m, TrainConfig& t,
               const std::string& where);

/// Names of the presets, in order: tiny, small, gpt2, gpt2-medium, gpt2-large, gpt2-xl.
const std::vector<std::string>& preset_names();
/// The preset's dimensions; throws zt::Error listing the valid names for an unknown one.
ModelConfig model_preset(const std::string& name);

/// The manifest's `model` object: every saved model field.
nlohmann::json to_json(const ModelConfig& m);
/// The manifest's `train` object: every saved training field.
nlohmann::json to_json(const TrainConfig& t);
/// Reads the keys present in j into m/t with set_field; `source` prefixes every message (e.g. "config file
/// run.json: "). Throws zt::Error naming an unknown key or a bad value.
void update_from_json(const nlohmann::json& j, ModelConfig& m, TrainConfig& t, const std::string& source = "");
/// Lists "field: a -> b" for every model field that differs (empty when equal).
std::vector<std::string> diff_model_config(const ModelConfig& saved, const ModelConfig& now);

/// The configuration a resume runs with, and what it changed.
struct ResumedConfig {
  ModelConfig model;
  TrainConfig train;
  std::vector<std::string> changed;  ///< "warmup_steps 20 -> 30": each `listed` field given a different value
};
/// The resume rule: the checkpoint's `model`/`train` objects (`manifest`) give every field's value except this_run
/// fields and the `explicit_keys` (given on the command line or in a config file), which keep this run's value.
/// Keys the manifest lacks or this build does not know keep this run's value. Throws zt::Error naming every
/// must_match field given a different value, or a manifest value of the wrong type; `checkpoint` names the source.
ResumedConfig resume_config(const nlohmann::json& manifest, const ModelConfig& m, const TrainConfig& t,
                            const std::set<std::string>& explicit_keys, const std::string& checkpoint);

}  // namespace zt
