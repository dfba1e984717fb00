// Activation recomputation: --recompute attention and block give the bits of none (losses, every gradient) through
// whole units and through units cut into parts, with less activation memory, each figure its formula.
#include <catch2/catch.hpp>
#include <cstdint>
#include <vector>

#include "core/errors.hpp"
#include "core/flat_units.hpp"
#include "core/gpt2.hpp"
#include "core/model.hpp"

using namespace zt;

namespace {

// FlatUnits seen through parts: each block cut before c_attn and before mlp.c_fc, the embedding before wpe; the
// model must read every part in the schedule's order (checked here) and get the same bits as from whole units.
class PartedUnits final : public UnitProvider {
 public:
  PartedUnits(FlatUnits& flat, const ParamTable& table) : flat_(flat) {
    const BlockOffsets& o = table.block_offsets();
    for (size_t u = 0; u < table.units().size(); ++u) {
      std::vector<size_t> begins = {0};
      if (int(u) == table.embedding_unit()) begins.push_back(table.wpe_offset());
      if (int(u) >= table.block_unit(0) && int(u) < table.final_norm_unit()) begins = {0, o.attn_w, o.fc_w};
      begins_.push_back(begins);
    }
  }
  const float* unit_params(int unit) override { return flat_.params(unit); }
  void release_params(int) override {}
  float* unit_grads(int unit) override { return flat_.unit_grads(unit); }
  void grads_ready(int) override {}
  size_t n_parts(int unit) const override { return begins_[size_t(unit)].size(); }
  size_t part_begin(int unit, size_t part) const override { return begins_[size_t(unit)][part]; }
  const float* part_params(int unit, size_t part) override {
    visits.push_back({unit, part});
    return flat_.params(unit) + part_begin(unit, part);
  }
  void release_part(int, size_t) override {}
  float* part_grads(int unit, size_t part) override { return flat_.unit_grads(unit) + part_begin(unit, part); }
  void part_grads_ready(int, size_t) override {}
  std::vector<std::pair<int, size_t>> visits;

 private:
  FlatUnits& flat_;
  std::vector<std::vector<size_t>> begins_;
};

struct Result {
  double loss = 0;
  std::vector<std::vector<float>> grads;
  size_t activation_bytes = 0;
};

Result run(Recompute mode, bool parted) {
  ModelConfig cfg = model_preset("tiny");
  cfg.n_layer = 3;
  const ParamTable table(cfg);
  const int B = 2, T = 32;
  auto cpu = make_cpu_backend(1);
  FlatUnits flat(*cpu, table, 5);
  PartedUnits parts(flat, table);
  Gpt2 model(table, *cpu, B, T, mode);
  std::vector<int32_t> inputs(size_t(B) * T), targets(size_t(B) * T);
  for (size_t i = 0; i < inputs.size(); ++i) {
    inputs[i] = int32_t((i * 37 + 5) % size_t(cfg.vocab));
    targets[i] = int32_t((i * 11 + 3) % size_t(cfg.vocab));
  }
  Result r;
  for (int micro = 0; micro < 2; ++micro) {  // gradients accumulate over two micro-steps
    flat.start_micro_step();
    if (micro == 1) std::swap(inputs, targets);
    UnitProvider& up = parted ? static_cast<UnitProvider&>(parts) : flat;
    r.loss += model.step(up, inputs.data(), targets.data(), true, 1.0f / float(inputs.size()));
  }
  if (parted) {
    // The order the parts were read in is the schedule's, expanded part by part.
    std::vector<std::pair<int, size_t>> want;
    for (const ScheduleEntry& e : model.param_schedule(true)) {
      const size_t n = parts.n_parts(e.unit);
      if (e.order == PartOrder::descending) {
        for (size_t k = n; k-- > 0;) want.push_back({e.unit, k});
      } else {
        for (size_t k = 0; k < n; ++k) {
          want.push_back({e.unit, k});
          if (e.order == PartOrder::ascending && k + 1 < n && e.until < parts.part_begin(e.unit, k + 1)) break;
        }
      }
    }
    std::vector<std::pair<int, size_t>> twice = want;
    twice.insert(twice.end(), want.begin(), want.end());
    CHECK(parts.visits == twice);
  }
  for (size_t u = 0; u < flat.n_units(); ++u) r.grads.push_back(flat.grads_to_host(int(u)));
  r.activation_bytes = model.activation_bytes();
  // The formula leaves out the arena's alignment: at most 64 floats for each of the ~20 buffers per layer.
  const size_t slack = size_t(64) * sizeof(float) * (20 * size_t(cfg.n_layer) + 10);
  CHECK(model.activation_bytes() >= model.activation_formula_bytes());
  CHECK(model.activation_bytes() - model.activation_formula_bytes() <= slack);
  return r;
}

}  // namespace

TEST_CASE("recompute attention and block: the bits of none, with less activation memory", "[model][recompute]") {
  const Result none = run(Recompute::none, false);
  for (bool parted : {false, true}) {
    INFO((parted ? "units cut into parts" : "whole units"));
    const Result parted_none = run(Recompute::none, parted);
    REQUIRE(parted_none.loss == none.loss);
    REQUIRE(parted_none.grads == none.grads);
    const Result attention = run(Recompute::attention, parted);
    const Result block = run(Recompute::block, parted);
    REQUIRE(attention.loss == none.loss);
    REQUIRE(block.loss == none.loss);
    REQUIRE(attention.grads == none.grads);
    REQUIRE(block.grads == none.grads);
    CHECK(attention.activation_bytes < none.activation_bytes);
    CHECK(block.activation_bytes < attention.activation_bytes);
  }
  CHECK(parse_recompute("block") == Recompute::block);
  CHECK_THROWS_WITH(parse_recompute("all"), Catch::Contains("--recompute must be none, attention or block"));
}
