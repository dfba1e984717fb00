// The ZeRO engine (stages 0-3): owns parameters, gradients and Adam state per part, sharded over a Comm.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
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
  size_t pool_bytes = 0;        ///< stages 2-3: the working pool (gathered parts, gradient work buffers), not above
  size_t pool_part_bytes = 0;   ///< the largest part (at most the bucket, unless one op's tensors are larger)
  size_t pool_regions = 0;      ///< parts the pool holds at once: 2 gathered + 2 being reduced (stage 3), 2 (stage 2)
  size_t pool_whole_bytes = 0;  ///< the embedding unit, which the model reads whole (the pool holds at least that)
  size_t psi = 0;               ///< padded parameter count Ψ (sum over parts)
  size_t psi_t = 0;             ///< Ψ_t: Ψ of the parts that train (hold gradients; Ψ without --freeze)
  size_t psi_a = 0;             ///< Ψ_a: Ψ_t less the frozen tensors inside those parts (elements with Adam state)
  size_t param_copy_bytes = 0;  ///< the backend's low-precision parameter copies (bf16 on CUDA), not in params_bytes
  size_t formula_params = 0, formula_grads = 0, formula_optim = 0, formula_pool = 0;
  std::string formula_text;
  /// ", working pool X (formula ...)" for the start-up line, or "" when the stage has none.
  std::string pool_summary() const;
};

/// AdamW hyper-parameters for one optimizer step.
struct AdamwStep {
  float lr = 0, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0;
  float grad_scale = 1;  ///< clip coefficient (1 = no clipping)
};

/// Implements UnitProvider for Gpt2 and the sharded optimizer step. Units larger than the bucket are cut into parts
/// (sharding/shard.hpp, cut_into_parts), each sharded over the ranks on its own; the part is the granule of
/// gathering (stage 3) and of gradient reduction. docs/sharding.md describes the stages, memory and bit-equality.
class ZeroEngine final : public UnitProvider {
 public:
  /// The default --zero_bucket_mb, in bytes.
  static constexpr size_t kDefaultBucketBytes = size_t(32) << 20;
  /// The default shard alignment (elements).
  static constexpr size_t kDefaultAlign = 16;
  /// `frozen`: one flag per tensor of `table` (zt::match_frozen; empty: none). Parts whose every tensor is frozen
  /// hold no gradients or Adam state and send no reduction; frozen tensors inside other parts are never updated.
  ZeroEngine(const ParamTable& table, Backend& backend, Comm& comm, int stage,
             size_t bucket_bytes = kDefaultBucketBytes, size_t align = kDefaultAlign, std::vector<bool> frozen = {});
  ~ZeroEngine() override;
  ZeroEngine(const ZeroEngine&) = delete;
  ZeroEngine& operator=(const ZeroEngine&) = delete;

  /// Initialises this rank's parameters from (seed, name, index); Adam state zero, step 0.
  void init_params(uint64_t seed);
  int stage() const { return stage_; }
  const ParamTable& table() const { return table_; }
  Backend& backend() { return be_; }

  using Part = PartLayout;
  size_t n_parts() const { return parts_.size(); }
  const Part& part(size_t p) const { return parts_[p]; }
  /// Whether tensor `t` of the table is frozen (--freeze).
  bool frozen(int t) const { return !frozen_.empty() && frozen_[size_t(t)]; }
  /// Whether part p holds gradients and Adam state (some tensor of it trains, or the test hook computes them all).
  bool part_holds_grads(size_t p) const { return part_trains_[p]; }
  /// Parts of a unit: indices [first, first + count) of part().
  size_t first_part(int unit) const { return unit_first_[size_t(unit)]; }

  /// Starts an optimizer step: zeroes the accumulated gradient shards.
  void begin_step();
  /// Starts a micro-step (forward, plus backward when training) of `model`. With sync_grads false, stages 0 and 1
  /// keep this micro-step's gradients in their local buffers and reduce them with a later micro-step's (the last of
  /// the step must sync; DeepSpeed's and FSDP's no_sync); stages 2 and 3 reduce every micro-step regardless.
  void begin_micro_step(const Gpt2& model, bool training, bool sync_grads = true);
  /// Waits for every outstanding gradient reduction of the micro-step.
  void end_micro_step();
  /// Global squared gradient norm (deterministic, identical on every rank and every stage).
  double grad_norm_squared();
  /// AdamW on the owned part, then re-replicates parameters where the stage keeps them whole. At stages 1-2 that
  /// all-gather is started per part and left in flight: the next forward waits for each part where it first reads
  /// it, so the gather overlaps that forward (every other reader of the parameters waits for it first).
  void optimizer_step(const AdamwStep& hp);
  int64_t adam_step() const { return adam_step_; }

  /// Full parameters (or accumulated, reduced gradients) of one unit into host memory `out` (numel of the unit);
  /// collective: every rank must call it.
  void gather_unit(int unit, bool grads, float* out);

  /// This rank's slice of a part, as checkpoints write and read it: flat range [begin, end) of the unit (inside the
  /// part; empty when the rank's shard is all padding) and a pointer (backend memory) to the parameters of that
  /// range. Ranks' slices partition the part.
  struct OwnedSlice {
    size_t begin = 0, end = 0;
    float* params = nullptr;
  };
  OwnedSlice owned_slice(size_t part);
  /// Adam's m (`k` 0) or v (`k` 1) of unit flat element `flat`, which lies in this rank's slice of part `part`
  /// (backend memory; a tensor's elements there follow each other), or null when its tensor has no Adam state
  /// (frozen, or a part that does not train): only trainable elements hold m and v.
  float* owned_moment(size_t part, int k, size_t flat);
  /// The tensors' logical elements (padding excluded) inside this rank's slice of a part, in flat order: what a
  /// rank reads or writes of each tensor when it loads its slice.
  std::vector<Piece> owned_pieces(size_t part) const;
  /// After a resume overwrote every owned slice: re-replicates what the stage keeps whole and sets Adam's step.
  /// Collective.
  void finish_load(int64_t adam_step);

  MemoryReport memory_report() const;
  /// Most bytes of the working pool in use at once so far (parts gathered or being gathered, gradient buffers being
  /// written or reduced): the engine's own accounting of its live buffers.
  size_t peak_live_bytes() const { return peak_live_elems_ * sizeof(float); }
  Comm& comm() { return comm_; }

  // UnitProvider: the model reads parts (the whole-unit calls are never used and abort).
  const float* unit_params(int unit) override;
  void release_params(int unit) override;
  float* unit_grads(int unit) override;
  void grads_ready(int unit) override;
  void progress() override {
    if (!quiet_) comm_.progress();
  }
  /// Stages 0-1: finishes the parameter gathers in flight and holds the micro-step's gradient reductions back until
  /// end_quiet, so that the micro-step can be one CUDA graph with the reductions beside it; false at stages 2-3,
  /// whose gathers and reduce-scatters run between the layers.
  bool begin_quiet() override;
  void end_quiet() override;
  size_t n_parts(int unit) const override { return unit_count_[size_t(unit)]; }
  size_t part_begin(int unit, size_t part) const override { return parts_[first_part(unit) + part].begin; }
  const float* part_params(int unit, size_t part) override;
  void release_part(int unit, size_t part) override;
  float* part_grads(int unit, size_t part) override;
  void part_grads_ready(int unit, size_t part) override;
  bool part_trains(int unit, size_t part) const override { return part_trains_[first_part(unit) + part]; }
  bool tensor_trains(int unit, size_t offset) const override;

 private:
  struct PartState;
  struct Region;
  struct Reduction;
  struct Visit;
  void cut_parts(size_t bucket_elems, size_t align);
  void mark_trainable_parts();
  /// Zeroes the frozen tensors' gradients in part p's buffer `grads` (padded, part-relative): they are discarded.
  void discard_frozen_grads(size_t p, float* grads);
  /// Part-relative [begin, end) whose Adam state this rank keeps: the padded part at stage 0, its shard otherwise.
  std::pair<size_t, size_t> optim_range(size_t p) const;
  /// Frozen elements of part p inside optim_range(p) before part-relative element `rel`: m and v leave them out.
  size_t frozen_before(size_t p, size_t rel) const;
  /// Stage 0 after a load: every rank's slice of m and v (compact: frozen elements left out) to every rank.
  void share_loaded_moments(size_t p);
  void allocate();
  float* owned_params(size_t p);
  /// Stages 1-2: completes part p's parameter all-gather started by optimizer_step (no-op when none is pending).
  void finish_params_gather(size_t p);
  void finish_params_gathers();
  /// [begin, end) of this rank's slice of part p in its unit's flat order (the shard clipped to the part).
  std::pair<size_t, size_t> owned_range(size_t p) const;
  // The working pool (pool.cpp): stage-3 gather slots, stage 2-3 gradient work buffers, the embedding whole.
  void plan_visits(const std::vector<ScheduleEntry>& schedule);
  void prefetch(size_t visit);
  void start_gather(Region& r, size_t visit);
  void ensure_gathered(size_t visit);
  bool region_free(const Region& r) const;
  void take_region(Region& r);
  Region* grad_region(size_t p);
  void start_reduction(size_t p);
  void finish_oldest_reduction();
  void finish_reduction(Reduction& red);
  void note_live();
  /// Stage 3: what the pool holds is stale (the shards changed).
  void forget_gathered();

  const ParamTable& table_;
  Backend& be_;
  Comm& comm_;
  int stage_;
  std::vector<Part> parts_;
  std::vector<size_t> unit_first_, unit_count_;
  std::vector<std::vector<TensorExtent>> extents_;  // per part: storage extents, part-relative
  std::vector<std::unique_ptr<PartState>> state_;
  std::vector<bool> frozen_;       // per tensor (empty: nothing frozen)
  std::vector<bool> part_trains_;  // per part: holds gradients and Adam state
  bool compute_frozen_ = false;    // test hook: the backward computes frozen gradients too, discarded before reducing
  bool blocking_gather_ = false;   // test hook: optimizer_step waits for its parameter all-gathers (no overlap)
  // Working pool (stages 2-3): one allocation; regions of it hold gathered parts and gradient work buffers.
  float* pool_ = nullptr;
  size_t pool_elems_ = 0, slot_elems_ = 0, whole_elems_ = 0;
  std::vector<std::unique_ptr<Region>> slots_, works_;
  std::unique_ptr<Region> whole_;
  std::vector<std::unique_ptr<Reduction>> reductions_;
  std::vector<Visit> visits_;  // the micro-step's parameter visits, one per part (a whole visit: all its parts)
  size_t cursor_ = 0, whole_seen_ = 0;  // next visit; parts of the current whole visit handed out (0: none)
  uint64_t reduce_seq_ = 0;
  size_t live_elems_ = 0, peak_live_elems_ = 0;
  bool sync_ = true;           // this micro-step reduces its gradients (always at stages 2-3)
  bool param_copies_ = false;  // the backend keeps low-precision copies of the parameter buffers
  int64_t adam_step_ = 0;

  bool quiet_ = false;                       // between begin_quiet and end_quiet
  std::vector<size_t> deferred_reductions_;  // parts whose reductions end_quiet starts, in order
};

}  // namespace zt
