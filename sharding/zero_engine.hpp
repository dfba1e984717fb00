// The ZeRO engine (stages 0-3): owns parameters, gradients and Adam state per unit, sharded over a Comm.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "core/gpt2.hpp"
#include "core/model.hpp"
#include "sharding/comm.hpp"
#include "sharding/shard.hpp"

namespace zt {

/// Bytes one rank holds, and what the ZeRO formula says it should hold (fp32 everywhere on the CPU).
struct MemoryReport {
  size_t params_bytes = 0, grads_bytes = 0, optim_bytes = 0;  ///< persistent state
  size_t gathered_bytes = 0;      ///< stage 3: gather buffers (two units) included in params_bytes
  size_t grad_working_bytes = 0;  ///< full-size per-unit gradient work buffers included in grads_bytes
  size_t psi = 0;                 ///< padded parameter count Ψ (sum over units)
  size_t param_copy_bytes = 0;    ///< the backend's low-precision parameter copies (bf16 on CUDA), not in params_bytes
  size_t formula_params = 0, formula_grads = 0, formula_optim = 0;
  std::string formula_text;
};

/// AdamW hyper-parameters for one optimizer step.
struct AdamwStep {
  float lr = 0, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0;
  float grad_scale = 1;  ///< clip coefficient (1 = no clipping)
};

/// Implements UnitProvider for Gpt2 and the sharded optimizer step. Summation orders are the same at every
/// stage, so for a fixed world size all four stages produce bitwise-identical results.
class ZeroEngine final : public UnitProvider {
 public:
  ZeroEngine(const ParamTable& table, Backend& backend, Comm& comm, int stage, size_t align = 16);
  ~ZeroEngine() override;
  ZeroEngine(const ZeroEngine&) = delete;
  ZeroEngine& operator=(const ZeroEngine&) = delete;

  /// Initialises this rank's parameters from (seed, name, index); Adam state zero, step 0.
  void init_params(uint64_t seed);
  int stage() const { return stage_; }
  const ParamTable& table() const { return table_; }
  Backend& backend() { return be_; }
  const ShardLayout& layout(int unit) const { return layouts_[size_t(unit)]; }

  /// Starts an optimizer step: zeroes the accumulated gradient shards.
  void begin_step();
  /// Starts a micro-step (forward, plus backward when training) of `model`.
  void begin_micro_step(const Gpt2& model, bool training);
  /// Waits for every outstanding gradient reduction of the micro-step.
  void end_micro_step();
  /// Global squared gradient norm (deterministic, identical on every rank and every stage).
  double grad_norm_squared();
  /// AdamW on the owned part, then re-replicates parameters where the stage keeps them whole.
  void optimizer_step(const AdamwStep& hp);
  int64_t adam_step() const { return adam_step_; }

  /// Full parameters (or accumulated, reduced gradients) of one unit into host memory `out` (numel of the unit);
  /// collective: every rank must call it.
  void gather_unit(int unit, bool grads, float* out);

  /// This rank's slice of a unit, as checkpoints write and read it: flat range [begin, end) of the unit and
  /// pointers (backend memory) to the parameters and Adam m, v of that range. Ranks' slices partition the unit.
  struct OwnedSlice {
    size_t begin = 0, end = 0;
    float *params = nullptr, *m = nullptr, *v = nullptr;
  };
  OwnedSlice owned_slice(int unit);
  /// The tensors' logical elements (padding excluded) inside this rank's slice of a unit, in flat order: what a
  /// rank reads or writes of each tensor when it loads its slice.
  std::vector<Piece> owned_pieces(int unit) const;
  /// After a resume overwrote every owned slice: re-replicates what the stage keeps whole and sets Adam's step.
  /// Collective.
  void finish_load(int64_t adam_step);

  MemoryReport memory_report() const;
  Comm& comm() { return comm_; }

  // UnitProvider
  const float* unit_params(int unit) override;
  void release_params(int unit) override;
  float* unit_grads(int unit) override;
  void grads_ready(int unit) override;
  void progress() override { comm_.progress(); }

 private:
  struct Unit;
  struct GatherSlot;
  struct GradSlot;
  struct WorkBuf;
  void start_gather(size_t position);
  GradSlot* oldest_in_flight();
  float* owned_params(int unit);
  void finish_grad_slot(GradSlot& slot);

  const ParamTable& table_;
  Backend& be_;
  Comm& comm_;
  int stage_;
  std::vector<ShardLayout> layouts_;
  std::vector<std::vector<TensorExtent>> extents_;  // storage extents per unit (for weight-decay pieces)
  std::vector<std::unique_ptr<Unit>> units_;
  std::vector<std::unique_ptr<GatherSlot>> gather_slots_;  // stage 3: two units' worth
  std::vector<std::unique_ptr<GradSlot>> grad_slots_;      // reductions in flight (two at most)
  std::vector<std::unique_ptr<WorkBuf>> work_bufs_;        // stages 2/3: rotating gradient work buffers
  uint64_t reduce_seq_ = 0;
  size_t max_padded_ = 0, max_shard_ = 0;
  std::vector<int> schedule_;
  size_t cursor_ = 0;
  bool training_ = false;
  bool param_copies_ = false;  // the backend keeps low-precision copies of the parameter buffers
  int64_t adam_step_ = 0;
};

}  // namespace zt
