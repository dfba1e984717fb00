// Models in and out: llm.c model files, Hugging Face GPT-2 safetensors and zerotrain checkpoints read as zerotrain's
// parameter table (any element range of any tensor, dtype and orientation converted on the fly), and written back.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/config.hpp"
#include "core/model.hpp"

namespace zt {

class MpiComm;
class ZeroEngine;
class FullParams;

/// A model to take parameters from: its architecture, and any slice of any tensor in zerotrain's logical layout
/// (docs/checkpoint-format.md section 3: row-major, Conv1D weights [in, out], wte [vocab, d_model] unpadded).
class ModelSource {
 public:
  virtual ~ModelSource() = default;
  const ModelConfig& config() const { return config_; }
  const std::string& path() const { return path_; }
  /// The format, for logs and messages: "llm.c model file (version 5, bf16)".
  virtual std::string format() const = 0;
  /// Where a ModelConfig field's value came from, for messages: "header[4] (L)", "config.json n_layer".
  virtual std::string field_origin(const std::string& field) const = 0;
  /// Elements [a, b) of tensor `t` of ParamTable(config()), as fp32, into host memory `dst`. Throws zt::Error
  /// naming the file and the tensor (truncated file, checksum mismatch, a tied copy that differs).
  virtual void read(const TensorSpec& t, size_t a, size_t b, float* dst) const = 0;

 protected:
  ModelConfig config_;
  std::string path_;
};

/// Opens `path` and tells its format from the file itself: an llm.c model file (int32 magic 20240326 first), a
/// .safetensors file with config.json beside it, a Hugging Face directory (model.safetensors or
/// model.safetensors.index.json, and config.json), or a zerotrain checkpoint directory (model.h5). Reads headers
/// only. Throws zt::Error naming the file and the field that is wrong.
std::unique_ptr<ModelSource> open_model_source(const std::string& path);

/// Fills the engine's parameters from `src` (whose config must be the engine's): each rank reads exactly its own
/// new slice of every tensor (no rank reads or holds the whole model unless ZeRO stage 0 replicates it); Adam
/// state zero, Adam step 0. Errors are agreed: every rank throws the same zt::Error. Collective over `comm`.
void init_params_from(const ModelSource& src, ZeroEngine& engine, MpiComm& comm);
/// Reads every tensor of `src` whole into `params` (one process; its table's config must be the source's).
void read_full_params(const ModelSource& src, FullParams& params);

/// Writes `src` out, one tensor in memory at a time: format "safetensors" makes `out` a Hugging Face directory
/// (model.safetensors + config.json for GPT2LMHeadModel), "llmc" an llm.c model file (version 3 for fp32, 5 for
/// bf16); dtype "fp32" or "bf16" (round to nearest even). Files appear complete or not at all (temporary name,
/// then rename). Throws zt::Error for a bad format, dtype or output path.
void export_model(const ModelSource& src, const std::string& format, const std::string& dtype, const std::string& out);

/// bf16 (the top half of an fp32) to fp32: exact.
float bf16_to_float(uint16_t h);
/// fp32 to bf16, rounding to nearest even (as PyTorch's .to(torch.bfloat16)); NaN stays a quiet NaN.
uint16_t float_to_bf16(float f);
/// IEEE half to fp32: exact (subnormals, infinities and NaN included).
float f16_to_float(uint16_t h);

}  // namespace zt
