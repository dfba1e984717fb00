// The ZeRO engine's UnitProvider side: the micro-step's visits of parts, stage-3 gathers with prefetch into the
// working pool, gradient buffers and their in-place reduce-scatters (at most two in flight).
#include <algorithm>

#include "core/errors.hpp"
#include "sharding/zero_engine.hpp"
#include "sharding/zero_engine_impl.hpp"

namespace zt {

// The model reads parts (part_params and friends); the whole-unit calls exist for simpler providers only.
const float* ZeroEngine::unit_params(int unit) { ZT_FAIL("ZeroEngine hands out parts: unit_params({})", unit); }
void ZeroEngine::release_params(int unit) { ZT_FAIL("ZeroEngine hands out parts: release_params({})", unit); }
float* ZeroEngine::unit_grads(int unit) { ZT_FAIL("ZeroEngine hands out parts: unit_grads({})", unit); }
void ZeroEngine::grads_ready(int unit) { ZT_FAIL("ZeroEngine hands out parts: grads_ready({})", unit); }

void ZeroEngine::plan_visits(const std::vector<ScheduleEntry>& schedule) {
  visits_.clear();
  for (const ScheduleEntry& e : schedule) {
    const size_t first = first_part(e.unit), n = unit_count_[size_t(e.unit)];
    if (e.order == PartOrder::whole) {
      // Only the embedding is read whole: the pool is sized for it (zero_engine.cpp, allocate).
      ZT_ASSERT(e.unit == table_.embedding_unit());
      visits_.push_back({e.unit, first, true});
    } else if (e.order == PartOrder::ascending) {
      for (size_t p = first; p < first + n; ++p) {
        visits_.push_back({e.unit, p, false});
        if (e.until < parts_[p].end) break;  // the visit ends with the part holding `until`
      }
    } else {
      for (size_t k = n; k-- > 0;) visits_.push_back({e.unit, first + k, false});
    }
  }
}

void ZeroEngine::begin_micro_step(const Gpt2& model, bool training, bool sync_grads) {
  plan_visits(model.param_schedule(training));
  cursor_ = 0;
  whole_seen_ = 0;
  sync_ = sync_grads || stage_ >= 2;
  for (auto& s : state_) {
    s->grads_started = false;
    s->grads_now = nullptr;
  }
  if (stage_ == 3) prefetch(0);
}

void ZeroEngine::end_micro_step() {
  // Each part is reduced at most once per micro-step into its own shard, so completion order changes no sum.
  while (std::any_of(reductions_.begin(), reductions_.end(), [](const auto& r) { return r->active; }))
    finish_oldest_reduction();
  for (auto* list : {&slots_, &works_})
    for (auto& r : *list) {
      for (CommHandle& h : r->gathers) comm_.wait(h);
      r->gathers.clear();
      ZT_ASSERT(r->users == 0);
    }
  if (whole_) {
    for (CommHandle& h : whole_->gathers) comm_.wait(h);
    whole_->gathers.clear();
    ZT_ASSERT(whole_->users == 0);
  }
  ZT_ASSERT(cursor_ == visits_.size());
}

// ---- the pool's regions ----

bool ZeroEngine::region_free(const Region& r) const {
  if (r.busy()) return false;
  for (const auto* list : {&slots_, &works_})
    for (const auto& o : *list)
      if (o.get() != &r && o->overlaps(r) && o->busy()) return false;
  return !(whole_ && whole_.get() != &r && whole_->overlaps(r) && whole_->busy());
}

void ZeroEngine::take_region(Region& r) {
  // Make every overlapping region idle (a prefetch or reduction still in flight is finished; the model holding one
  // would be a schedule bug), then forget what they held: r is about to be overwritten.
  auto settle = [&](Region& o) {
    for (CommHandle& h : o.gathers) comm_.wait(h);
    o.gathers.clear();
    while (o.reducing > 0) finish_oldest_reduction();
    ZT_ASSERT(o.users == 0);
    o.part = SIZE_MAX;
    o.valid = false;
    o.copy_fresh = false;
  };
  for (auto* list : {&slots_, &works_})
    for (auto& o : *list)
      if (o.get() == &r || o->overlaps(r)) settle(*o);
  if (whole_ && (whole_.get() == &r || whole_->overlaps(r))) settle(*whole_);
}

void ZeroEngine::forget_gathered() {
  for (auto* list : {&slots_, &works_})
    for (auto& r : *list) {
      ZT_ASSERT(!r->busy());
      r->part = SIZE_MAX;
    }
  if (whole_) {
    ZT_ASSERT(!whole_->busy());
    whole_->valid = false;
  }
}

void ZeroEngine::note_live() {
  size_t live = 0;
  for (const auto* list : {&slots_, &works_})
    for (const auto& r : *list)
      if (r->busy()) live += r->used;
  if (whole_ && whole_->busy()) live += whole_->used;
  peak_live_elems_ = std::max(peak_live_elems_, live);
}

// ---- parameters (stage 3 gathers; stages 0-2 hold them whole) ----

void ZeroEngine::start_gather(Region& r, size_t visit) {
  const Visit& v = visits_[visit];
  take_region(r);
  if (v.whole) {
    size_t at = 0;
    for (size_t p = v.part; p < v.part + unit_count_[size_t(v.unit)]; ++p) {
      const ShardLayout& L = parts_[p].layout;
      r.gathers.push_back(comm_.iall_gather(state_[p]->params_shard, pool_ + r.begin + at, L.shard_numel));
      at += L.padded_numel;
    }
    r.valid = true;
    r.used = whole_elems_;
  } else {
    const ShardLayout& L = parts_[v.part].layout;
    r.gathers.push_back(comm_.iall_gather(state_[v.part]->params_shard, pool_ + r.begin, L.shard_numel));
    r.part = v.part;
    r.used = L.padded_numel;
  }
  note_live();
}

void ZeroEngine::prefetch(size_t visit) {
  if (visit >= visits_.size()) return;
  const Visit& v = visits_[visit];
  if (v.whole) {
    if (!whole_->valid && region_free(*whole_)) start_gather(*whole_, visit);
    return;
  }
  for (auto& s : slots_)
    if (s->part == v.part) return;  // held already (a recomputation's pass just before its backward)
  for (auto& s : slots_)
    if (region_free(*s)) {
      start_gather(*s, visit);
      return;
    }
}

void ZeroEngine::ensure_gathered(size_t visit) {
  const Visit& v = visits_[visit];
  Region* r = nullptr;
  if (v.whole) {
    r = whole_.get();
    if (!r->valid) start_gather(*r, visit);
  } else {
    for (auto& s : slots_)
      if (s->part == v.part) r = s.get();
    if (r == nullptr) {
      // Not prefetched: a slot the model does not hold (take_region waits for whatever overlaps it).
      for (auto& s : slots_)
        if (r == nullptr && s->users == 0) r = s.get();
      ZT_ASSERT(r != nullptr);
      start_gather(*r, visit);
    }
  }
  for (CommHandle& h : r->gathers) comm_.wait(h);
  r->gathers.clear();
  if (param_copies_ && !r->copy_fresh) {
    be_.refresh_param_copy(pool_ + r->begin, r->used);
    r->copy_fresh = true;
  }
}

const float* ZeroEngine::part_params(int unit, size_t part) {
  const size_t p = first_part(unit) + part;
  if (whole_seen_ > 0) {
    // Inside a whole visit: the model asks for its parts in order, all gathered already.
    ZT_ASSERT(visits_[cursor_ - 1].unit == unit && part == whole_seen_);
    if (++whole_seen_ == unit_count_[size_t(unit)]) whole_seen_ = 0;
  } else {
    ZT_ASSERT(cursor_ < visits_.size());
    const Visit& v = visits_[cursor_++];
    ZT_ASSERT(v.unit == unit && (v.whole ? part == 0 : v.part == p));
    if (v.whole && unit_count_[size_t(unit)] > 1) whole_seen_ = 1;
    if (stage_ == 3) {
      ensure_gathered(cursor_ - 1);
      Region* r = whole_.get();
      if (!v.whole)
        for (auto& s : slots_)
          if (s->part == p) r = s.get();
      r->users += v.whole ? int(unit_count_[size_t(unit)]) : 1;
      prefetch(cursor_);  // the next visit's part goes into the other slot while this one computes
    }
  }
  if (stage_ <= 2) {
    finish_params_gather(p);  // the last optimizer step's gather of this part, overlapped with the forward so far
    return state_[p]->params_full;
  }
  if (visits_[cursor_ - 1].whole) {
    size_t at = 0;
    for (size_t q = first_part(unit); q < p; ++q) at += parts_[q].layout.padded_numel;
    return pool_ + whole_->begin + at;
  }
  for (auto& s : slots_)
    if (s->part == p) return pool_ + s->begin;
  ZT_FAIL("part {} of unit {} is not gathered", part, unit);
}

void ZeroEngine::release_part(int unit, size_t part) {
  if (stage_ != 3) return;
  const size_t p = first_part(unit) + part;
  if (unit == table_.embedding_unit()) {
    ZT_ASSERT(whole_->users > 0);
    --whole_->users;
    return;
  }
  for (auto& s : slots_)
    if (s->part == p && s->users > 0) {
      --s->users;
      return;
    }
  ZT_FAIL("release of part {} of unit {}, which the model does not hold", part, unit);
}

// ---- gradients ----

ZeroEngine::Region* ZeroEngine::grad_region(size_t p) {
  if (parts_[p].unit == table_.embedding_unit()) {
    // The embedding's gradients: the whole region, at the end of the backward (nothing else is live by then).
    if (whole_->users == 0) {
      take_region(*whole_);
      whole_->used = whole_elems_;
    }
    return whole_.get();
  }
  // A work buffer: a free one, else the one whose reduction is oldest, once it is finished.
  for (;;) {
    for (auto& w : works_)
      if (w->users == 0 && w->reducing == 0 && region_free(*w)) {
        take_region(*w);
        w->part = p;
        w->used = parts_[p].layout.padded_numel;
        return w.get();
      }
    finish_oldest_reduction();
  }
}

float* ZeroEngine::part_grads(int unit, size_t part) {
  const size_t p = first_part(unit) + part;
  PartState& s = *state_[p];
  if (s.grads_started) return s.grads_now;
  const size_t n = parts_[p].layout.padded_numel;
  if (stage_ <= 1) {
    s.grads_now = s.grad_local;
    if (s.local_fresh) be_.zero(s.grad_local, n);
    s.local_fresh = false;
  } else {
    Region* r = grad_region(p);
    size_t at = 0;
    if (r == whole_.get())
      for (size_t q = first_part(unit); q < p; ++q) at += parts_[q].layout.padded_numel;
    s.grads_now = pool_ + r->begin + at;
    s.grads_region = r;
    ++r->users;
    be_.zero(s.grads_now, n);
    note_live();
  }
  s.grads_started = true;
  return s.grads_now;
}

void ZeroEngine::part_grads_ready(int unit, size_t part) {
  const size_t p = first_part(unit) + part;
  PartState& s = *state_[p];
  ZT_ASSERT(s.grads_started);
  if (!sync_) {
    s.unreduced = true;  // stages 0-1 under no-sync: the local buffer keeps accumulating
    return;
  }
  if (quiet_) {
    deferred_reductions_.push_back(p);
    return;
  }
  start_reduction(p);
}

bool ZeroEngine::begin_quiet() {
  if (stage_ >= 2) return false;
  finish_params_gathers();  // the forward would wait for them between its layers
  quiet_ = true;
  return true;
}

void ZeroEngine::end_quiet() {
  quiet_ = false;
  // The same reductions in the same order as without the graph, only later: the same sums, bit for bit.
  for (size_t p : deferred_reductions_) start_reduction(p);
  deferred_reductions_.clear();
}

void ZeroEngine::start_reduction(size_t p) {
  PartState& s = *state_[p];
  Reduction* red = nullptr;
  while (red == nullptr) {
    for (auto& r : reductions_)
      if (!r->active) red = r.get();
    if (red == nullptr) finish_oldest_reduction();  // two in flight at most (their staging, their buffers)
  }
  red->part = p;
  red->buf = s.grads_now;
  red->region = stage_ >= 2 ? s.grads_region : nullptr;
  if (red->region != nullptr) {
    --red->region->users;
    ++red->region->reducing;
  }
  discard_frozen_grads(p, s.grads_now);
  red->seq = ++reduce_seq_;
  red->active = true;
  const size_t S = parts_[p].layout.shard_numel;
  // In place: this rank's slot of the buffer receives the sum (no receive buffer to keep).
  red->handle = comm_.ireduce_scatter_sum(s.grads_now, s.grads_now + size_t(comm_.rank()) * S, S);
  s.unreduced = false;
  s.local_fresh = true;
}

void ZeroEngine::finish_oldest_reduction() {
  Reduction* oldest = nullptr;
  for (auto& r : reductions_)
    if (r->active && (oldest == nullptr || r->seq < oldest->seq)) oldest = r.get();
  ZT_ASSERT(oldest != nullptr);
  finish_reduction(*oldest);
}

void ZeroEngine::finish_reduction(Reduction& red) {
  comm_.wait(red.handle);
  const size_t S = parts_[red.part].layout.shard_numel;
  be_.accumulate(state_[red.part]->grad_shard, red.buf + size_t(comm_.rank()) * S, S);
  if (red.region != nullptr) --red.region->reducing;
  red.active = false;
}

}  // namespace zt
