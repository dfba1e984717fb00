// GPT-2 forward and backward over a Backend, asking a UnitProvider for each unit's parameters and gradients.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "core/model.hpp"

namespace zt {

/// Owns parameters and gradients on behalf of the model (the ZeRO engine). The model calls these in the order
/// given by Gpt2::param_schedule(), so an implementation can prefetch the next unit.
///
/// A provider may cut a unit into parts (flat ranges that tile it, each holding whole tensors, a weight with its
/// bias): the model then reads a block part by part, in flat order in the forward and in reverse in the backward, and
/// the embedding unit with all its parts at once. The part calls default to the whole-unit ones (one part per unit).
class UnitProvider {
 public:
  virtual ~UnitProvider() = default;
  /// Full (gathered) parameters of a unit, present until release_params(unit).
  virtual const float* unit_params(int unit) = 0;
  /// The model is done with the unit's parameters for now.
  virtual void release_params(int unit) = 0;
  /// Full-size gradient buffer of a unit for the current micro-step, zeroed at first use in the micro-step.
  virtual float* unit_grads(int unit) = 0;
  /// The micro-step's backward has finished writing this unit's gradients.
  virtual void grads_ready(int unit) = 0;
  /// Called between ops so outstanding communication can progress.
  virtual void progress() {}
  /// Asked before a micro-step whose ops the backend would record as one graph (Backend::begin_graph): true when
  /// the provider can issue no device work and no communication from its calls until end_quiet (it finishes what is
  /// in flight now and defers what the micro-step would start); false (the default) keeps it as it is, and the
  /// micro-step runs op by op.
  virtual bool begin_quiet() { return false; }
  /// The micro-step's ops are issued: start what begin_quiet deferred, in the order it would have started.
  virtual void end_quiet() {}

  /// Number of parts of a unit.
  virtual size_t n_parts(int unit) const {
    (void)unit;
    return 1;
  }
  /// First flat element of a part (the next part's begin is its end; the last part ends with the unit).
  virtual size_t part_begin(int unit, size_t part) const {
    (void)unit;
    (void)part;
    return 0;
  }
  /// Parameters of a part: the returned pointer is its element part_begin; present until release_part.
  virtual const float* part_params(int unit, size_t part) {
    (void)part;
    return unit_params(unit);
  }
  virtual void release_part(int unit, size_t part) {
    (void)part;
    release_params(unit);
  }
  /// Gradient buffer of a part (pointer to its element part_begin), zeroed at first use as unit_grads is.
  virtual float* part_grads(int unit, size_t part) {
    (void)part;
    return unit_grads(unit);
  }
  virtual void part_grads_ready(int unit, size_t part) {
    (void)part;
    grads_ready(unit);
  }
  /// False for a part whose every tensor is frozen (--freeze): the backward then asks for no gradient buffer of it
  /// (no part_grads / part_grads_ready) and skips its weight gradients; the input gradient still flows.
  virtual bool part_trains(int unit, size_t part) const {
    (void)unit;
    (void)part;
    return true;
  }
  /// False for a frozen tensor (the one at flat element `offset` of the unit) inside a part that trains: the
  /// backward skips its weight gradient where the op allows (matmul); what it writes anyway the provider discards.
  virtual bool tensor_trains(int unit, size_t offset) const {
    (void)unit;
    (void)offset;
    return true;
  }
};

/// How one visit of the schedule walks a unit's parts.
enum class PartOrder { ascending, descending, whole };
/// One visit of a unit's parameters in a micro-step.
struct ScheduleEntry {
  int unit = 0;
  PartOrder order = PartOrder::whole;
  size_t until = SIZE_MAX;  ///< an ascending visit ends with the part holding this flat element
};

/// Activation recomputation (--recompute): what each block keeps for its backward.
///   none: everything; attention: all but the attention's probabilities and output, recomputed from the kept qkv
///   (Megatron's selective recomputation); block: only the block's input, the block's forward run again right
///   before its backward. The recomputation runs the same deterministic ops on the same inputs: same bits.
enum class Recompute { none, attention, block };
/// "none", "attention" or "block"; throws zt::Error naming --recompute otherwise.
Recompute parse_recompute(const std::string& name);
const char* recompute_name(Recompute r);

/// The GPT-2 model: activations for one micro-batch of B sequences of T tokens, and the compute schedule.
class Gpt2 {
 public:
  Gpt2(const ParamTable& table, Backend& backend, int B, int T, Recompute recompute = Recompute::none);
  ~Gpt2();
  Gpt2(const Gpt2&) = delete;
  Gpt2& operator=(const Gpt2&) = delete;

  /// Visits of unit parameters in one micro-step, in order (training includes backward).
  std::vector<ScheduleEntry> param_schedule(bool training) const;
  /// Forward + loss; with `backward`, also the backward pass with dloss per token (1 / tokens in the global
  /// batch). inputs/targets are host arrays of B*T tokens. Returns the sum of per-token losses (natural log).
  double step(UnitProvider& units, const int32_t* inputs, const int32_t* targets, bool backward, float dloss);
  /// The per-token losses of the last step (host, B*T in row order): what step() summed.
  const std::vector<float>& token_losses() const { return losses_host_; }
  /// Bytes of activation memory held for the backward (the arena without the backward's work buffers), laid out in
  /// fp32 (buffers held in bf16 count as fp32 here too: activation_bf16_bytes, held_bf16_saved_bytes).
  size_t activation_bytes() const { return activation_elems_ * sizeof(float); }
  /// The same from the formula of the recompute mode (no alignment padding), and the formula.
  size_t activation_formula_bytes() const;
  std::string activation_formula() const;
  /// Bytes of the backward's work buffers (activation gradients): 15·B·T·C floats, whatever the mode.
  size_t backward_work_bytes() const { return work_elems_ * sizeof(float); }
  /// Start-up line: activations beside their formula, the work buffers, the backend's copies.
  std::string memory_report() const;
  /// Bytes of the backend's low-precision copies of the matmul operands (keep_activation_copy; 0 on the CPU).
  size_t activation_copy_bytes() const { return activation_copy_elems_ * be_.param_copy_bytes(); }
  /// Bytes of activation buffers (and work buffers) the backend holds in bf16 only, counted in fp32 as
  /// activation_bytes counts them: half of it is the bf16 values. 0 on the CPU.
  size_t activation_bf16_bytes() const { return activation_bf16_elems_ * sizeof(float); }
  /// Bytes those buffers do not take because the backend gave them bf16 memory of their own (alloc_held_bf16):
  /// half of what they would take in fp32, alignment included; 0 where it holds them in their fp32 memory or not.
  size_t held_bf16_saved_bytes() const { return held_ != nullptr ? held_used_ * sizeof(float) / 2 : 0; }
  int batch() const { return B_; }
  int seq_len() const { return T_; }
  Recompute recompute() const { return recompute_; }

 private:
  struct LayerActs {
    float *ln1, *ln1_mean, *ln1_rstd, *qkv, *att, *atty, *attproj, *res2, *ln2, *ln2_mean, *ln2_rstd, *fch, *fch_gelu,
        *fcproj, *res3;
  };
  class Pass;
  /// The next n floats of the arena, rounded up to a multiple of kArenaAlign; with `holdable` (a buffer every reader
  /// of which tolerates bf16), of the held region instead where there is one. Null while counting (no memory yet).
  float* take(size_t n, bool holdable = false);
  static constexpr size_t kArenaAlign = 64;
  /// Floats take(n) uses: n rounded up to a multiple of kArenaAlign.
  static constexpr size_t arena_elems(size_t n) { return (n + kArenaAlign - 1) / kArenaAlign * kArenaAlign; }
  /// Allocates the arena (and the held region, where the backend gives one) and points the buffers into them.
  void lay_out_activations(size_t att_elems);
  /// Points every layer's buffers into the arena: its own, or the shared set where the mode recomputes them.
  void place_buffers(size_t att_elems);
  void keep_activation_copies();
  /// Block l's forward from its input x_in up to the MLP's GELU (and its output projection when `project`); the
  /// first LayerNorm also finishes the previous block's residual add when `prev` is given.
  void block_forward(Pass& p, LayerActs& A, const float* x_in, LayerActs* prev, bool project);
  void block_backward(Pass& p, LayerActs& A, const float* x_in);
  /// The LM head's weight gradient and the embedding backward, into the embedding unit's gradients.
  void embedding_backward(UnitProvider& units);

  const ParamTable& table_;
  Backend& be_;
  int B_, T_;
  Recompute recompute_;
  float* arena_ = nullptr;
  float* held_ = nullptr;  // the held region (alloc_held_bf16): the holdable buffers, or null (they are in the arena)
  bool counting_ = false;  // place_buffers' first pass: sizes only
  size_t held_used_ = 0;
  size_t arena_used_ = 0, activation_elems_ = 0, work_elems_ = 0, activation_copy_elems_ = 0, att_elems_ = 0,
         activation_bf16_elems_ = 0;
  int32_t* tokens_ = nullptr;
  float* frozen_ln_grads_ = nullptr;  // [2C]: where a frozen LayerNorm's weight and bias gradients go (dropped)
  int32_t* targets_ = nullptr;
  float* encoded_ = nullptr;
  std::vector<LayerActs> layers_;
  float *lnf_ = nullptr, *lnf_mean_ = nullptr, *lnf_rstd_ = nullptr, *logits_ = nullptr, *losses_ = nullptr;
  // backward scratch
  float *d_res_ = nullptr, *d_lnf_ = nullptr, *d_fch_gelu_ = nullptr, *d_fch_ = nullptr, *d_ln_ = nullptr,
        *d_atty_ = nullptr, *d_qkv_ = nullptr;
  std::vector<float> losses_host_;
};

}  // namespace zt
