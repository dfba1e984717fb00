// The GPT-2 parameter table: named tensors grouped into units, their flat layout, and counter-based init.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/config.hpp"

namespace zt {

enum class InitKind { normal, zeros, ones };

/// One named parameter tensor. Its storage inside the unit's flat buffer is [unit_offset, +storage_numel);
/// the first numel() of those are the logical tensor (wte stores padded_vocab rows, vocab of them logical).
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;  ///< logical (GPT-2 checkpoint) shape; Conv1D weights are [in, out]
  int unit = 0;
  size_t unit_offset = 0;
  size_t storage_numel = 0;
  bool decay = false;           ///< weight decay applies (2-D tensors only)
  bool joins_previous = false;  ///< an op reads it together with the tensor before it (a bias with its weight)
  InitKind init = InitKind::zeros;
  float init_std = 0.0f;
  size_t numel() const;
};

/// A granule of ZeRO-3 gathering and stage-2 gradient reduction: embeddings, each block, the final norm.
struct UnitSpec {
  std::string name;
  std::vector<int> tensors;  ///< indices into ParamTable::tensors, in flat order
  size_t numel = 0;          ///< flat elements before ZeRO padding
};

/// Offsets of one block's tensors inside its unit buffer (same for every block).
struct BlockOffsets {
  size_t ln_1_w, ln_1_b, attn_w, attn_b, attn_proj_w, attn_proj_b, ln_2_w, ln_2_b, fc_w, fc_b, fc_proj_w, fc_proj_b;
};

/// The ordered table of every parameter, as GPT-2 names them.
class ParamTable {
 public:
  explicit ParamTable(const ModelConfig& cfg);
  const ModelConfig& config() const { return cfg_; }
  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  const std::vector<UnitSpec>& units() const { return units_; }
  /// Index of a tensor by name; throws zt::Error for an unknown name.
  int find(const std::string& name) const;
  /// Logical parameter count (what GPT-2 papers report; padding excluded).
  size_t n_params() const;
  int embedding_unit() const { return 0; }
  int block_unit(int layer) const { return 1 + layer; }
  int final_norm_unit() const { return 1 + cfg_.n_layer; }
  const BlockOffsets& block_offsets() const { return block_; }
  size_t wte_offset() const { return 0; }
  size_t wpe_offset() const { return size_t(cfg_.padded_vocab()) * cfg_.d_model; }

 private:
  ModelConfig cfg_;
  std::vector<TensorSpec> tensors_;
  std::vector<UnitSpec> units_;
  BlockOffsets block_{};
};

/// Initial value of element `index` of tensor `t` (padding rows and elements past numel() are 0): a pure
/// function of (seed, name, index), so any rank initialises exactly its own shard, identical for any world size.
float init_value(const TensorSpec& t, uint64_t seed, size_t index);
/// Fills flat[0, count) with the initial values of unit `unit` at flat offsets [flat_begin, flat_begin+count)
/// (positions past the unit's numel are ZeRO padding and get 0).
void init_unit_range(const ParamTable& table, int unit, uint64_t seed, size_t flat_begin, size_t count, float* flat);

/// The tensors the --freeze globs select (fnmatch(3) over the names above, e.g. "wte", "h.[0-9].*"), one flag per
/// tensor of `table`. Throws zt::Error for a pattern that matches no tensor (naming it and some valid names) and
/// when every tensor would be frozen: a typo must not silently train everything, nor a glob train nothing.
std::vector<bool> match_frozen(const ParamTable& table, const std::vector<std::string>& patterns);

}  // namespace zt
