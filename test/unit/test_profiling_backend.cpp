// ProfilingBackend: a profiled GPT-2 step computes exactly what the plain one does, and the profile counts every
// op of the step with the work the model's shapes imply.
#include <catch2/catch.hpp>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "core/flat_units.hpp"
#include "core/gpt2.hpp"
#include "core/model.hpp"
#include "core/profiling_backend.hpp"

using namespace zt;

namespace {

struct StepResult {
  double loss;
  std::vector<std::vector<float>> grads;
};

StepResult one_step(Backend& be, const ParamTable& table, int B, int T) {
  FlatUnits units(be, table, 7);
  Gpt2 model(table, be, B, T);
  std::vector<int32_t> inputs(size_t(B) * T), targets(size_t(B) * T);
  for (size_t i = 0; i < inputs.size(); ++i) {
    inputs[i] = int32_t((i * 37 + 5) % size_t(table.config().vocab));
    targets[i] = int32_t((i * 11 + 3) % size_t(table.config().vocab));
  }
  units.start_micro_step();
  StepResult r;
  r.loss = model.step(units, inputs.data(), targets.data(), true, 1.0f / float(inputs.size()));
  for (size_t u = 0; u < units.n_units(); ++u) r.grads.push_back(units.grads_to_host(int(u)));
  return r;
}

}  // namespace

TEST_CASE("a profiled GPT-2 step equals the plain one and counts every op with its work", "[profiling]") {
  const ModelConfig cfg = model_preset("tiny");
  const ParamTable table(cfg);
  const int B = 2, T = 16, L = cfg.n_layer, C = cfg.d_model, NH = cfg.n_head;
  auto cpu = make_cpu_backend(1);
  const StepResult plain = one_step(*cpu, table, B, T);
  ProfilingBackend profiled(*cpu);
  const StepResult with_profile = one_step(profiled, table, B, T);

  // Same numbers, bit for bit: the wrapper only forwards.
  REQUIRE(with_profile.loss == plain.loss);
  REQUIRE(with_profile.grads == plain.grads);

  const auto& ops = profiled.ops();
  auto calls = [&](const std::string& name) { return ops.count(name) ? ops.at(name).calls : 0L; };
  // Per block: qkv, attention projection, fc projection; then the tied LM head, whose backward runs as two calls
  // (its input gradient at the head, its weight gradient at the end of the backward). The fc product runs with its
  // GELU as one op, and so does the fc projection's backward with GELU's.
  CHECK(calls("matmul_forward") == 3 * L + 1);
  CHECK(calls("matmul_backward") == 3 * L + 2);
  CHECK(calls("matmul_gelu_forward") == L);
  CHECK(calls("matmul_gelu_backward") == L);
  CHECK(calls("attention_forward") == L);
  CHECK(calls("attention_backward") == L);
  // ln_1 of the first block alone; every later LayerNorm is fused with the residual add before it (ln_2 after the
  // attention's, each later ln_1 and the final norm after the MLP's): no separate residual add is left.
  CHECK(calls("layernorm_forward") == 1);
  CHECK(calls("residual_layernorm_forward") == 2 * L);
  CHECK(calls("residual_forward") == 0);
  CHECK(calls("layernorm_backward") == 2 * L + 1);
  CHECK(calls("gelu_forward") == 0);
  CHECK(calls("embedding_forward") == 1);
  CHECK(calls("softmax_cross_entropy") == 1);
  CHECK(calls("adamw_update") == 0);
  // Forward matmul flops: 2 B T (12 L C^2 + C Vp), Vp the padded vocabulary the LM head multiplies; the fc
  // product's 4 L C^2 of them in matmul_gelu_forward.
  const double bt = double(B) * T, c = C, vp = double(table.config().padded_vocab());
  CHECK(ops.at("matmul_forward").flops == 2 * bt * (8 * L * c * c + c * vp));
  CHECK(ops.at("matmul_gelu_forward").flops == 2 * bt * 4 * L * c * c);
  // Backward: both products of each, the LM head's counted once each over its two calls.
  CHECK(ops.at("matmul_backward").flops == 2 * 2 * bt * (8 * L * c * c + c * vp));
  CHECK(ops.at("matmul_gelu_backward").flops == 2 * 2 * bt * 4 * L * c * c);
  // Attention forward: 2 T^2 hs per (batch, head) and layer.
  CHECK(ops.at("attention_forward").flops == 2.0 * B * NH * T * T * (c / NH) * L);
  for (const auto& kv : ops) CHECK(kv.second.seconds >= 0);

  // The report over 2 "steps" halves the per-step calls.
  std::istringstream report(profiled.report(2));
  std::string line;
  bool found_matmul = false, found_total = false;
  size_t line_length = 0;
  while (std::getline(report, line)) {
    // A table: every line as long as the header, however long an op's name (the columns stay aligned).
    if (line_length == 0) line_length = line.size();
    CHECK(line.size() == line_length);
    std::istringstream fields(line);
    std::string name;
    double calls_per_step = 0;
    fields >> name >> calls_per_step;
    if (name == "matmul_forward") {
      found_matmul = true;
      CHECK(calls_per_step == (3 * L + 1) / 2.0);
    }
    found_total = found_total || name == "total";
  }
  CHECK(found_matmul);
  CHECK(found_total);
  profiled.reset();
  CHECK(profiled.ops().empty());
  profiled.set_enabled(false);
  const StepResult unprofiled = one_step(profiled, table, B, T);
  CHECK(unprofiled.loss == plain.loss);
  CHECK(profiled.ops().empty());
}
