// ZeRO stages 0-3: units cut into parts, each a padded flat buffer sharded over the ranks; init, norm, AdamW.
#include "sharding/zero_engine.hpp"

#include <algorithm>
#include <tuple>

#include "core/errors.hpp"
#include "core/test_hooks.hpp"
#include "sharding/zero_engine_impl.hpp"

namespace zt {

// Gradients reach the owned shard by one reduce-scatter per part: every micro-step at stages 2-3 (sum over ranks,
// then over micro-steps), once per step at stages 0-1, which accumulate locally first (sum over micro-steps, then
// over ranks). The squared norm is the sum of per-rank shard partials in rank order. So stages 0 and 1 agree bit for
// bit, as do 2 and 3, and all four when a step has one micro-step (docs/sharding.md).

ZeroEngine::ZeroEngine(const ParamTable& table, Backend& backend, Comm& comm, int stage, size_t bucket_bytes,
                       size_t align, std::vector<bool> frozen)
    : table_(table), be_(backend), comm_(comm), stage_(stage), frozen_(std::move(frozen)) {
  ZT_ASSERT(frozen_.empty() || frozen_.size() == table.tensors().size());
  ZT_CHECK(stage >= 0 && stage <= 3, "--zero_stage must be 0, 1, 2 or 3, got {}", stage);
  ZT_CHECK(bucket_bytes >= sizeof(float), "--zero_bucket_mb must hold at least one float (4 bytes), got {} bytes",
           bucket_bytes);
  cut_parts(bucket_bytes / sizeof(float), align);
  mark_trainable_parts();
  allocate();
}

void ZeroEngine::mark_trainable_parts() {
  compute_frozen_ = test_hooks::freeze_compute_grads();
  blocking_gather_ = test_hooks::blocking_params_gather();
  part_trains_.assign(parts_.size(), true);
  for (size_t p = 0; p < parts_.size() && !compute_frozen_; ++p) {
    // The embedding unit trains whole or not at all: its backward writes wte and wpe from one buffer.
    const bool whole_unit = parts_[p].unit == table_.embedding_unit();
    bool any = false;
    for (int ti : table_.units()[size_t(parts_[p].unit)].tensors) {
      const size_t off = table_.tensors()[size_t(ti)].unit_offset;
      if ((whole_unit || (off >= parts_[p].begin && off < parts_[p].end)) && !frozen(ti)) any = true;
    }
    part_trains_[p] = any;
  }
}

bool ZeroEngine::tensor_trains(int unit, size_t offset) const {
  if (compute_frozen_ || frozen_.empty()) return true;
  for (int ti : table_.units()[size_t(unit)].tensors) {
    const TensorSpec& t = table_.tensors()[size_t(ti)];
    if (offset >= t.unit_offset && offset < t.unit_offset + t.storage_numel) return !frozen(ti);
  }
  ZT_FAIL("no tensor of unit {} holds flat element {}", unit, offset);
}

void ZeroEngine::discard_frozen_grads(size_t p, float* grads) {
  for (const TensorExtent& e : extents_[p])
    if (frozen(e.tensor)) be_.zero(grads + e.unit_offset, e.numel);
}

std::pair<size_t, size_t> ZeroEngine::optim_range(size_t p) const {
  const ShardLayout& L = parts_[p].layout;
  if (stage_ == 0) return {0, L.padded_numel};
  return {L.begin(comm_.rank()), L.end(comm_.rank())};
}

size_t ZeroEngine::frozen_before(size_t p, size_t rel) const {
  const size_t ob = optim_range(p).first;
  size_t n = 0;
  if (rel <= ob) return 0;
  for (const Piece& pc : pieces_in_range(extents_[p], ob, rel))
    if (frozen(pc.tensor)) n += pc.count;
  return n;
}

void ZeroEngine::cut_parts(size_t bucket_elems, size_t align) {
  const int N = comm_.world_size();
  for (size_t u = 0; u < table_.units().size(); ++u) {
    const UnitSpec& us = table_.units()[u];
    std::vector<CutTensor> cut;
    for (int ti : us.tensors) {
      const TensorSpec& t = table_.tensors()[size_t(ti)];
      cut.push_back({t.unit_offset, t.storage_numel, t.joins_previous});
    }
    std::vector<size_t> begins = cut_into_parts(cut, us.numel, bucket_elems);
    unit_first_.push_back(parts_.size());
    unit_count_.push_back(begins.size());
    for (size_t k = 0; k < begins.size(); ++k) {
      Part p;
      p.unit = int(u);
      p.begin = begins[k];
      p.end = k + 1 < begins.size() ? begins[k + 1] : us.numel;
      p.layout = make_shard_layout(p.end - p.begin, N, align);
      std::vector<TensorExtent> ext;
      for (int ti : us.tensors) {
        const TensorSpec& t = table_.tensors()[size_t(ti)];
        if (t.unit_offset >= p.begin && t.unit_offset < p.end)
          ext.push_back({ti, t.unit_offset - p.begin, t.storage_numel});
      }
      extents_.push_back(std::move(ext));
      parts_.push_back(p);
    }
  }
}

void ZeroEngine::allocate() {
  const int emb = table_.embedding_unit();
  for (size_t p = 0; p < parts_.size(); ++p) {
    const ShardLayout& L = parts_[p].layout;
    auto s = std::make_unique<PartState>();
    if (stage_ <= 2)
      s->params_full = be_.alloc(L.padded_numel);
    else
      s->params_shard = be_.alloc(L.shard_numel);
    if (part_trains_[p]) {
      // Adam state only for elements that train: a frozen tensor inside a training part has none.
      const auto [ob, oe] = optim_range(p);
      s->moment_elems = (oe - ob) - frozen_before(p, oe);
      if (s->moment_elems > 0) {
        s->m = be_.alloc(s->moment_elems);
        s->v = be_.alloc(s->moment_elems);
      }
      s->grad_shard = be_.alloc(L.shard_numel);
      if (stage_ <= 1) s->grad_local = be_.alloc(L.padded_numel);
    }
    state_.push_back(std::move(s));
    if (parts_[p].unit == emb)
      whole_elems_ += L.padded_numel;
    else
      slot_elems_ = std::max(slot_elems_, L.padded_numel);
  }
  // The working pool: two gather slots and two gradient work buffers of the largest part (stage 3; the work buffers
  // alone at stage 2), or the embedding unit's parts side by side, which the model reads whole (the tied LM head) at
  // moments when no other part is live: the lookup, the LM head, and the gradient at the end of the backward.
  if (stage_ >= 2) {
    const size_t n_regions = stage_ == 3 ? 4 : 2;
    pool_elems_ = std::max(n_regions * slot_elems_, whole_elems_);
    pool_ = be_.alloc(pool_elems_);
    for (size_t i = 0; i < n_regions; ++i) {
      auto r = std::make_unique<Region>();
      r->begin = i * slot_elems_;
      r->end = r->begin + slot_elems_;
      (stage_ == 3 && i < 2 ? slots_ : works_).push_back(std::move(r));
    }
    whole_ = std::make_unique<Region>();
    whole_->end = whole_elems_;
  }
  for (int i = 0; i < 2; ++i) reductions_.push_back(std::make_unique<Reduction>());
  // A backend whose matmuls read a low-precision copy keeps one of every buffer the model reads parameters from:
  // the whole parts (stages 0-2), refreshed after each all-gather and load (stage 0's AdamW updates it in place),
  // or the pool (stage 3), refreshed where a gather lands.
  param_copies_ = be_.param_copy_bytes() > 0;
  if (param_copies_) {
    for (size_t p = 0; p < parts_.size() && stage_ <= 2; ++p)
      be_.keep_param_copy(state_[p]->params_full, parts_[p].layout.padded_numel);
    if (stage_ == 3) be_.keep_param_copy(pool_, pool_elems_);
  }
}

ZeroEngine::~ZeroEngine() {
  // Every rank destroys its engine at the same point of the program, so the gathers still in flight complete;
  // while an exception unwinds, the comm abandons them instead (sharding/comm.hpp).
  if (std::uncaught_exceptions() == 0) finish_params_gathers();
  for (auto& s : state_) {
    for (float* p : {s->params_full, s->params_shard, s->m, s->v, s->grad_shard, s->grad_local})
      if (p) be_.release(p);
  }
  if (pool_) be_.release(pool_);
}

float* ZeroEngine::owned_params(size_t p) {
  PartState& s = *state_[p];
  if (stage_ == 3) return s.params_shard;
  return s.params_full + parts_[p].layout.begin(comm_.rank());
}

void ZeroEngine::finish_params_gather(size_t p) {
  PartState& s = *state_[p];
  if (!s.params_gather.pending()) return;
  comm_.wait(s.params_gather);
  if (param_copies_) be_.refresh_param_copy(s.params_full, parts_[p].layout.padded_numel);
}

void ZeroEngine::finish_params_gathers() {
  for (size_t p = 0; p < parts_.size(); ++p) finish_params_gather(p);
}

void ZeroEngine::init_params(uint64_t seed) {
  finish_params_gathers();
  std::vector<float> host;
  for (size_t p = 0; p < parts_.size(); ++p) {
    const Part& P = parts_[p];
    const ShardLayout& L = P.layout;
    // Part-relative [a, b): everything at stages 0-2, the owned shard at stage 3; past the part's end is padding.
    const size_t a = stage_ <= 2 ? 0 : L.begin(comm_.rank());
    const size_t b = stage_ <= 2 ? L.padded_numel : L.end(comm_.rank());
    host.assign(b - a, 0.0f);
    const size_t real_end = std::min(b, P.end - P.begin);
    if (a < real_end) init_unit_range(table_, P.unit, seed, P.begin + a, real_end - a, host.data());
    PartState& s = *state_[p];
    if (stage_ <= 2) {
      be_.from_host(s.params_full, host.data(), host.size());
      if (param_copies_) be_.refresh_param_copy(s.params_full, L.padded_numel);
    } else {
      be_.from_host(s.params_shard, host.data(), host.size());
    }
    if (s.m != nullptr) {
      be_.zero(s.m, s.moment_elems);
      be_.zero(s.v, s.moment_elems);
    }
  }
  forget_gathered();
  adam_step_ = 0;
}

void ZeroEngine::begin_step() {
  for (size_t p = 0; p < parts_.size(); ++p)
    if (part_trains_[p]) be_.zero(state_[p]->grad_shard, parts_[p].layout.shard_numel);
}

double ZeroEngine::grad_norm_squared() {
  double partial = 0.0;
  for (size_t p = 0; p < parts_.size(); ++p) {
    ZT_CHECK(!state_[p]->unreduced,
             "gradients of {} were accumulated but never reduced: the last micro-step of an optimizer step must "
             "synchronise gradients (begin_micro_step with sync_grads true)",
             table_.units()[size_t(parts_[p].unit)].name);
    if (part_trains_[p]) partial += be_.squared_norm(state_[p]->grad_shard, parts_[p].layout.shard_numel);
  }
  comm_.all_reduce_sum(&partial, 1);
  return partial;
}

void ZeroEngine::optimizer_step(const AdamwStep& hp) {
  ++adam_step_;
  forget_gathered();
  const int r = comm_.rank();
  for (size_t p = 0; p < parts_.size(); ++p) {
    if (!part_trains_[p]) continue;  // frozen throughout: the parameters every rank holds stay as they are
    PartState& s = *state_[p];
    const ShardLayout& L = parts_[p].layout;
    ZT_CHECK(!s.unreduced, "optimizer_step before the gradients of {} were reduced (see grad_norm_squared)",
             table_.units()[size_t(parts_[p].unit)].name);
    finish_params_gather(p);  // the last step's, when no forward ran since (its send buffer is what AdamW updates)
    auto adamw = [&](float* param, const float* grad, float* m, float* v, size_t begin, size_t end) {
      size_t skipped = 0;  // frozen elements so far: m and v hold none of them
      for (const Piece& pc : pieces_in_range(extents_[p], begin, end)) {
        const size_t o = pc.flat_offset - begin;
        if (frozen(pc.tensor)) {  // no update, no weight decay, no Adam state
          skipped += pc.count;
          continue;
        }
        const bool decay = table_.tensors()[size_t(pc.tensor)].decay;
        be_.adamw_update(param + o, grad + o, m + (o - skipped), v + (o - skipped), pc.count, hp.lr, hp.beta1, hp.beta2,
                         hp.eps, decay ? hp.weight_decay : 0.0f, hp.grad_scale, adam_step_);
      }
    };
    if (stage_ == 0) {
      // A reduce-scatter followed by this all-gather is an all-reduce; every rank updates the whole part.
      comm_.all_gather(s.grad_shard, s.grad_local, L.shard_numel);
      adamw(s.params_full, s.grad_local, s.m, s.v, 0, L.padded_numel);
      continue;
    }
    float* owned = owned_params(p);
    adamw(owned, s.grad_shard, s.m, s.v, L.begin(r), L.end(r));
    // In place (owned is this rank's slot); the copy for low-precision matmuls is refreshed when it is waited.
    if (stage_ <= 2) s.params_gather = comm_.iall_gather(owned, s.params_full, L.shard_numel);
    if (blocking_gather_) finish_params_gather(p);
  }
}

void ZeroEngine::gather_unit(int unit, bool grads, float* out) {
  for (size_t p = first_part(unit); p < first_part(unit) + unit_count_[size_t(unit)]; ++p) {
    finish_params_gather(p);
    PartState& s = *state_[p];
    const Part& P = parts_[p];
    const size_t n = P.end - P.begin;
    if (!grads && stage_ <= 2) {
      be_.to_host(out + P.begin, s.params_full, n);
      continue;
    }
    if (grads && !part_trains_[p]) {
      std::fill(out + P.begin, out + P.begin + n, 0.0f);
      continue;
    }
    float* full = be_.alloc(P.layout.padded_numel);
    comm_.all_gather(grads ? s.grad_shard : s.params_shard, full, P.layout.shard_numel);
    be_.to_host(out + P.begin, full, n);
    be_.release(full);
  }
}

ZeroEngine::OwnedSlice ZeroEngine::owned_slice(size_t p) {
  finish_params_gather(p);  // a checkpoint reads (or a resume writes) the slot the gather sends from
  OwnedSlice o;
  std::tie(o.begin, o.end) = owned_range(p);
  o.params = owned_params(p);
  return o;
}

float* ZeroEngine::owned_moment(size_t p, int k, size_t flat) {
  PartState& s = *state_[p];
  const size_t rel = flat - parts_[p].begin;
  if (s.m == nullptr) return nullptr;
  for (const TensorExtent& e : extents_[p])
    if (rel >= e.unit_offset && rel < e.unit_offset + e.numel && frozen(e.tensor)) return nullptr;
  const size_t at = rel - optim_range(p).first - frozen_before(p, rel);
  ZT_ASSERT(at < s.moment_elems);
  return (k == 0 ? s.m : s.v) + at;
}

std::vector<Piece> ZeroEngine::owned_pieces(size_t p) const {
  // Logical extents, not extents_ (storage: wte's padded rows), which the optimizer walks.
  const Part& P = parts_[p];
  std::vector<TensorExtent> ext;
  for (int ti : table_.units()[size_t(P.unit)].tensors) {
    const TensorSpec& t = table_.tensors()[size_t(ti)];
    ext.push_back({ti, t.unit_offset, t.numel()});
  }
  const auto [b, e] = owned_range(p);
  return pieces_in_range(ext, b, e);
}

std::pair<size_t, size_t> ZeroEngine::owned_range(size_t p) const {
  // The shard clipped to the part: its padding past `end` is no tensor's (and may lie on the next part's tensors).
  const Part& P = parts_[p];
  const int r = comm_.rank();
  return {P.begin + std::min(P.layout.begin(r), P.end - P.begin), P.begin + std::min(P.layout.end(r), P.end - P.begin)};
}

void ZeroEngine::finish_load(int64_t adam_step) {
  finish_params_gathers();
  adam_step_ = adam_step;
  forget_gathered();
  const int r = comm_.rank();
  for (size_t p = 0; p < parts_.size(); ++p) {
    PartState& s = *state_[p];
    const ShardLayout& L = parts_[p].layout;
    const size_t b = L.begin(r);
    if (stage_ <= 2) {
      comm_.all_gather(s.params_full + b, s.params_full, L.shard_numel);
      if (param_copies_) be_.refresh_param_copy(s.params_full, L.padded_numel);
    }
    // A tensor frozen now has no Adam state to load: what the checkpoint held for it is dropped (the trainer warns).
    if (s.m != nullptr && stage_ == 0) share_loaded_moments(p);
  }
}

void ZeroEngine::share_loaded_moments(size_t p) {
  // m and v skip the frozen elements, so the ranks' slices of them differ in size: they travel through a padded
  // buffer of the part, which one all_gather fills as it does the parameters.
  PartState& s = *state_[p];
  const ShardLayout& L = parts_[p].layout;
  const size_t b = L.begin(comm_.rank());
  float* full = be_.alloc(L.padded_numel);
  const std::vector<Piece> pieces = pieces_in_range(extents_[p], 0, L.padded_numel);
  for (float* moment : {s.m, s.v}) {
    size_t skipped = 0;
    for (const Piece& pc : pieces) {
      if (frozen(pc.tensor)) {
        skipped += pc.count;
        continue;
      }
      // This rank's slice of the piece, the elements it loaded.
      const size_t x0 = std::max(pc.flat_offset, b), x1 = std::min(pc.flat_offset + pc.count, b + L.shard_numel);
      if (x0 < x1) be_.copy(full + x0, moment + (x0 - skipped), x1 - x0);
    }
    comm_.all_gather(full + b, full, L.shard_numel);
    skipped = 0;
    for (const Piece& pc : pieces) {
      if (frozen(pc.tensor))
        skipped += pc.count;
      else
        be_.copy(moment + (pc.flat_offset - skipped), full + pc.flat_offset, pc.count);
    }
  }
  be_.release(full);
}

std::string MemoryReport::pool_summary() const {
  if (pool_bytes == 0) return "";
  auto mib = [](size_t b) { return fmt::format("{:.2f} MiB", double(b) / double(1 << 20)); };
  return fmt::format(", working pool {} (formula max({} x part {}, embedding {}) = {})", mib(pool_bytes), pool_regions,
                     mib(pool_part_bytes), mib(pool_whole_bytes), mib(formula_pool));
}

MemoryReport ZeroEngine::memory_report() const {
  MemoryReport r;
  const size_t N = size_t(comm_.world_size()), f = sizeof(float);
  // Ψ counts every parameter; Ψ_t (psi_t) only the parts that train, which alone hold gradients; Ψ_a (psi_a) those
  // parts less their frozen tensors, which hold no Adam state.
  size_t psi = 0, shards = 0, psi_t = 0, shards_t = 0, psi_a = 0, moments = 0;
  for (size_t p = 0; p < parts_.size(); ++p) {
    const ShardLayout& L = parts_[p].layout;
    psi += L.padded_numel;
    shards += L.shard_numel;
    psi_t += part_trains_[p] ? L.padded_numel : 0;
    shards_t += part_trains_[p] ? L.shard_numel : 0;
    moments += state_[p]->moment_elems;
    if (!part_trains_[p]) continue;
    psi_a += L.padded_numel;
    for (const TensorExtent& e : extents_[p]) psi_a -= frozen(e.tensor) ? e.numel : 0;
  }
  r.psi = psi;
  r.psi_t = psi_t;
  r.psi_a = psi_a;
  r.params_bytes = (stage_ <= 2 ? psi : shards) * f;
  r.grads_bytes = (shards_t + (stage_ <= 1 ? psi_t : 0)) * f;
  r.optim_bytes = 2 * moments * f;
  r.pool_bytes = pool_elems_ * f;
  r.pool_part_bytes = stage_ >= 2 ? slot_elems_ * f : 0;
  r.pool_whole_bytes = stage_ >= 2 ? whole_elems_ * f : 0;
  r.pool_regions = stage_ == 3 ? 4 : stage_ == 2 ? 2 : 0;
  if (param_copies_) r.param_copy_bytes = be_.param_copy_bytes() * (stage_ <= 2 ? psi : pool_elems_);
  // The ZeRO formulas for fp32 parameters, gradients and Adam (m, v): K = 8 bytes of optimizer state per element;
  // the pool: P = max(k·b, E), k = 4 regions (2 at stage 2) of the largest part b, E the embedding unit.
  r.formula_params = stage_ <= 2 ? 4 * psi : 4 * psi / N;
  r.formula_grads = stage_ <= 1 ? 4 * psi_t + 4 * psi_t / N : 4 * psi_t / N;
  // Stages 1-3: the ranks' shares of Ψ_a differ by where the frozen tensors fall; they sum to Ψ_a exactly.
  r.formula_optim = stage_ == 0 ? 8 * psi_a : 8 * psi_a / N;
  r.formula_pool = std::max(r.pool_regions * r.pool_part_bytes, r.pool_whole_bytes);
  r.formula_text = stage_ == 0   ? "params 4Ψ, grads 4Ψ + 4Ψ/N, optimizer 8Ψ"
                   : stage_ == 1 ? "params 4Ψ, grads 4Ψ + 4Ψ/N, optimizer 8Ψ/N"
                   : stage_ == 2 ? "params 4Ψ, grads 4Ψ/N, optimizer 8Ψ/N, pool max(2b, E)"
                                 : "params 4Ψ/N, grads 4Ψ/N, optimizer 8Ψ/N, pool max(4b, E)";
  if (psi_t != psi || psi_a != psi) {
    // Frozen parts hold no gradients or Adam state: those terms count the trainable Ψ_t; frozen tensors inside
    // parts that train hold no Adam state either: the optimizer term counts Ψ_a.
    std::string t = r.formula_text;
    for (const char* term : {"grads 4Ψ", "+ 4Ψ", "optimizer 8Ψ"}) {
      const size_t at = t.find(term);
      const char* sub = term[0] == 'o' && psi_a != psi_t ? "_a" : psi_t != psi ? "_t" : "";
      if (at != std::string::npos) t.insert(at + std::char_traits<char>::length(term), sub);
    }
    // Where frozen tensors fall decides each rank's share of Ψ_a: 8Ψ_a/N is the ranks' mean, exact in their sum.
    const std::string term = "optimizer 8Ψ_a/N";
    const size_t at = t.find(term);
    if (at != std::string::npos) t.insert(at + term.size(), " (mean over ranks)");
    r.formula_text = t;
  }
  return r;
}

}  // namespace zt
