// Builds the GPT-2 parameter table (names, shapes, units, offsets) and initialises any slice of it.
#include "core/model.hpp"

#include <fnmatch.h>

#include <algorithm>
#include <cmath>

#include "core/errors.hpp"
#include "core/rng.hpp"

namespace zt {

size_t TensorSpec::numel() const {
  size_t n = 1;
  for (auto d : shape) n *= size_t(d);
  return n;
}

ParamTable::ParamTable(const ModelConfig& cfg) : cfg_(cfg) {
  cfg.validate();
  const int64_t C = cfg.d_model, V = cfg.vocab, Vp = cfg.padded_vocab(), T = cfg.seq_len;
  const float std_w = 0.02f;
  // GPT-2 / nanoGPT: residual projections scaled by 1/sqrt(2 * n_layer).
  const float std_proj = 0.02f / std::sqrt(2.0f * float(cfg.n_layer));
  auto add = [&](const std::string& name, std::vector<int64_t> shape, size_t storage, InitKind init, float stdv) {
    UnitSpec& u = units_.back();
    TensorSpec t;
    t.name = name;
    t.shape = std::move(shape);
    t.unit = int(units_.size()) - 1;
    t.unit_offset = u.numel;
    t.storage_numel = storage == 0 ? t.numel() : storage;
    t.decay = t.shape.size() == 2;
    t.joins_previous = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    t.init = init;
    t.init_std = stdv;
    u.tensors.push_back(int(tensors_.size()));
    u.numel += t.storage_numel;
    tensors_.push_back(std::move(t));
    return tensors_.back().unit_offset;
  };
  units_.push_back({"embeddings", {}, 0});
  add("wte", {V, C}, size_t(Vp * C), InitKind::normal, std_w);
  add("wpe", {T, C}, 0, InitKind::normal, std_w);
  for (int l = 0; l < cfg.n_layer; ++l) {
    const std::string p = fmt::format("h.{}.", l);
    units_.push_back({fmt::format("h.{}", l), {}, 0});
    BlockOffsets b{};
    b.ln_1_w = add(p + "ln_1.weight", {C}, 0, InitKind::ones, 0);
    b.ln_1_b = add(p + "ln_1.bias", {C}, 0, InitKind::zeros, 0);
    b.attn_w = add(p + "attn.c_attn.weight", {C, 3 * C}, 0, InitKind::normal, std_w);
    b.attn_b = add(p + "attn.c_attn.bias", {3 * C}, 0, InitKind::zeros, 0);
    b.attn_proj_w = add(p + "attn.c_proj.weight", {C, C}, 0, InitKind::normal, std_proj);
    b.attn_proj_b = add(p + "attn.c_proj.bias", {C}, 0, InitKind::zeros, 0);
    b.ln_2_w = add(p + "ln_2.weight", {C}, 0, InitKind::ones, 0);
    b.ln_2_b = add(p + "ln_2.bias", {C}, 0, InitKind::zeros, 0);
    b.fc_w = add(p + "mlp.c_fc.weight", {C, 4 * C}, 0, InitKind::normal, std_w);
    b.fc_b = add(p + "mlp.c_fc.bias", {4 * C}, 0, InitKind::zeros, 0);
    b.fc_proj_w = add(p + "mlp.c_proj.weight", {4 * C, C}, 0, InitKind::normal, std_proj);
    b.fc_proj_b = add(p + "mlp.c_proj.bias", {C}, 0, InitKind::zeros, 0);
    block_ = b;
  }
  units_.push_back({"ln_f", {}, 0});
  add("ln_f.weight", {C}, 0, InitKind::ones, 0);
  add("ln_f.bias", {C}, 0, InitKind::zeros, 0);
}

int ParamTable::find(const std::string& name) const {
  for (size_t i = 0; i < tensors_.size(); ++i)
    if (tensors_[i].name == name) return int(i);
  ZT_FAIL("no parameter named '{}' in a model with n_layer={}", name, cfg_.n_layer);
}

size_t ParamTable::n_params() const {
  size_t n = 0;
  for (const auto& t : tensors_) n += t.numel();
  return n;
}

float init_value(const TensorSpec& t, uint64_t seed, size_t index) {
  if (index >= t.numel()) return 0.0f;
  switch (t.init) {
    case InitKind::zeros:
      return 0.0f;
    case InitKind::ones:
      return 1.0f;
    case InitKind::normal:
      return float(t.init_std * philox_normal(seed, stable_hash(t.name), index));
  }
  return 0.0f;
}

void init_unit_range(const ParamTable& table, int unit, uint64_t seed, size_t flat_begin, size_t count, float* flat) {
  const UnitSpec& u = table.units().at(size_t(unit));
  for (size_t i = 0; i < count; ++i) flat[i] = 0.0f;
  const size_t flat_end = flat_begin + count;
  for (int ti : u.tensors) {
    const TensorSpec& t = table.tensors()[size_t(ti)];
    const size_t lo = std::max(flat_begin, t.unit_offset), hi = std::min(flat_end, t.unit_offset + t.storage_numel);
    for (size_t f = lo; f < hi; ++f) flat[f - flat_begin] = init_value(t, seed, f - t.unit_offset);
  }
}

std::vector<bool> match_frozen(const ParamTable& table, const std::vector<std::string>& patterns) {
  const auto& tensors = table.tensors();
  std::vector<bool> frozen(tensors.size(), false);
  for (const std::string& raw : patterns) {
    const size_t a = raw.find_first_not_of(' '), b = raw.find_last_not_of(' ');
    const std::string pat = a == std::string::npos ? "" : raw.substr(a, b - a + 1);
    ZT_CHECK(!pat.empty(), "--freeze has an empty pattern (in '{}'); give comma-separated globs such as wte,h.0.*",
             fmt::join(patterns, ","));
    bool hit = false;
    for (size_t i = 0; i < tensors.size(); ++i)
      if (fnmatch(pat.c_str(), tensors[i].name.c_str(), 0) == 0) frozen[i] = hit = true;
    if (!hit) {
      // A few names of each kind, so the user sees the naming scheme (h.<layer>.<module>.<weight|bias>).
      std::vector<std::string> some;
      for (size_t i = 0; i < tensors.size() && some.size() < 6; ++i) some.push_back(tensors[i].name);
      ZT_FAIL(
          "--freeze pattern '{}' matches no tensor; tensor names are like {}, ..., ln_f.weight (globs as in "
          "fnmatch: *, ?, [0-9])",
          pat, fmt::join(some, ", "));
    }
  }
  const bool all = std::all_of(frozen.begin(), frozen.end(), [](bool f) { return f; });
  ZT_CHECK(!all, "--freeze {} freezes every tensor: nothing would train", fmt::join(patterns, ","));
  return frozen;
}

}  // namespace zt
