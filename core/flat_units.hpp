// A UnitProvider over whole (unsharded) parameter and gradient buffers in one backend's memory: single-process
// GPT-2 steps with no ZeRO engine or comm in between (the op tests' whole-model cases, the GPU throughput bench).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/backend.hpp"
#include "core/gpt2.hpp"
#include "core/model.hpp"

namespace zt {

/// Every unit of a ParamTable as one parameter and one gradient buffer of `be` (which must outlive it).
class FlatUnits final : public UnitProvider {
 public:
  /// Every unit's parameters initialised from `seed` (as the trainer does), gradients zeroed at first use.
  FlatUnits(Backend& be, const ParamTable& table, uint64_t seed) : be_(be) {
    for (size_t u = 0; u < table.units().size(); ++u) {
      const size_t n = table.units()[u].numel;
      std::vector<float> host(n);
      init_unit_range(table, int(u), seed, 0, n, host.data());
      numel_.push_back(n);
      params_.push_back(be.alloc(n));
      be.from_host(params_.back(), host.data(), n);
      be.keep_param_copy(params_.back(), n);  // bf16 mode: the matmuls read it, AdamW keeps it current
      grads_.push_back(be.alloc(n));
    }
    zeroed_.assign(numel_.size(), false);
  }
  ~FlatUnits() override {
    for (float* p : params_) be_.release(p);
    for (float* p : grads_) be_.release(p);
  }
  FlatUnits(const FlatUnits&) = delete;
  FlatUnits& operator=(const FlatUnits&) = delete;

  const float* unit_params(int unit) override { return params_[size_t(unit)]; }
  void release_params(int) override {}
  float* unit_grads(int unit) override {
    if (!zeroed_[size_t(unit)]) be_.zero(grads_[size_t(unit)], numel_[size_t(unit)]);
    zeroed_[size_t(unit)] = true;
    return grads_[size_t(unit)];
  }
  void grads_ready(int) override {}
  /// Nothing but the model's own ops (zero at first use) happens between them: a graph may hold the micro-step.
  bool begin_quiet() override { return true; }

  /// The next step() zeroes each unit's gradients again at first use.
  void start_micro_step() { zeroed_.assign(numel_.size(), false); }
  size_t n_units() const { return numel_.size(); }
  size_t numel(int unit) const { return numel_[size_t(unit)]; }
  float* params(int unit) { return params_[size_t(unit)]; }
  float* grads(int unit) { return grads_[size_t(unit)]; }
  std::vector<float> grads_to_host(int unit) {
    std::vector<float> host(numel_[size_t(unit)]);
    be_.to_host(host.data(), grads_[size_t(unit)], host.size());
    return host;
  }

 private:
  Backend& be_;
  std::vector<size_t> numel_;
  std::vector<float*> params_, grads_;
  std::vector<bool> zeroed_;
};

}  // namespace zt
