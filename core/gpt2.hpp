// GPT-2 forward and backward over a Backend, asking a UnitProvider for each unit's parameters and gradients.
#pragma once

#include <cstdint>
#include <vector>

#include "core/backend.hpp"
#include "core/model.hpp"

namespace zt {

/// Owns parameters and gradients on behalf of the model (the ZeRO engine). The model calls these in the order
/// given by Gpt2::param_schedule(), so an implementation can prefetch the next unit.
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
};

/// The GPT-2 model: activations for one micro-batch of B sequences of T tokens, and the compute schedule.
class Gpt2 {
 public:
  Gpt2(const ParamTable& table, Backend& backend, int B, int T);
  ~Gpt2();
  Gpt2(const Gpt2&) = delete;
  Gpt2& operator=(const Gpt2&) = delete;

  /// Order of unit_params() calls in one micro-step (training includes backward).
  std::vector<int> param_schedule(bool training) const;
  /// Forward + loss; with `backward`, also the backward pass with dloss per token (1 / tokens in the global
  /// batch). inputs/targets are host arrays of B*T tokens. Returns the sum of per-token losses (natural log).
  double step(UnitProvider& units, const int32_t* inputs, const int32_t* targets, bool backward, float dloss);
  /// The per-token losses of the last step (host, B*T in row order): what step() summed.
  const std::vector<float>& token_losses() const { return losses_host_; }
  /// Bytes of activation memory held.
  size_t activation_bytes() const { return activation_elems_ * sizeof(float); }
  /// Bytes of the backend's low-precision copies of the matmul operands (keep_activation_copy; 0 on the CPU).
  size_t activation_copy_bytes() const { return activation_copy_elems_ * be_.param_copy_bytes(); }
  int batch() const { return B_; }
  int seq_len() const { return T_; }

 private:
  struct LayerActs {
    float *ln1, *ln1_mean, *ln1_rstd, *qkv, *att, *atty, *attproj, *res2, *ln2, *ln2_mean, *ln2_rstd, *fch, *fch_gelu,
        *fcproj, *res3;
  };
  /// The next n floats of the arena, rounded up to a multiple of kArenaAlign.
  float* take(size_t n);
  static constexpr size_t kArenaAlign = 64;
  /// Floats take(n) uses: n rounded up to a multiple of kArenaAlign.
  static constexpr size_t arena_elems(size_t n) { return (n + kArenaAlign - 1) / kArenaAlign * kArenaAlign; }

  const ParamTable& table_;
  Backend& be_;
  int B_, T_;
  float* arena_ = nullptr;
  size_t arena_used_ = 0, activation_elems_ = 0, activation_copy_elems_ = 0;
  int32_t* tokens_ = nullptr;
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
