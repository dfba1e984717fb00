// ZeRO stages 0-3: per-unit flat buffers, gradient reduce-scatter per micro-step, stage-3 gather with prefetch.
#include "sharding/zero_engine.hpp"

#include <algorithm>

#include "core/errors.hpp"

namespace zt {

// Every stage reduce-scatters each micro-step's unit gradients into the owned shard and accumulates there, and
// computes the norm from the shards. The per-element summation order is therefore the same at every stage:
// sum over micro-steps of (sum over ranks in rank order). That is what makes stages bitwise interchangeable.

struct ZeroEngine::Unit {
  float* params_full = nullptr;   // stages 0-2: padded_numel
  float* params_shard = nullptr;  // stage 3: shard_numel
  float* m = nullptr;             // stage 0: padded_numel, else shard_numel
  float* v = nullptr;
  float* grad_shard = nullptr;  // shard_numel: reduced gradients accumulated over micro-steps
  float* grad_work = nullptr;   // stages 0/1 (and the embedding unit at 2/3): padded_numel
  float* grads_now = nullptr;   // work buffer in use this micro-step
  bool grads_started = false;
};

struct ZeroEngine::GatherSlot {
  float* buf = nullptr;
  size_t position = SIZE_MAX;
  bool in_flight = false;
  bool copy_fresh = false;  // the backend's low-precision copy of buf holds the gathered unit
  CommHandle handle;
};

struct ZeroEngine::GradSlot {
  float* recv = nullptr;  // shard_numel of the largest unit
  const float* send = nullptr;
  int unit = -1;
  uint64_t seq = 0;  // issue order, so the oldest reduction is finished first
  bool in_flight = false;
  CommHandle handle;
};

struct ZeroEngine::WorkBuf {
  float* buf = nullptr;  // padded_numel of the largest unit
  int busy_unit = -1;    // handed out until its reduction completes
};

ZeroEngine::ZeroEngine(const ParamTable& table, Backend& backend, Comm& comm, int stage, size_t align)
    : table_(table), be_(backend), comm_(comm), stage_(stage) {
  ZT_CHECK(stage >= 0 && stage <= 3, "--zero_stage must be 0, 1, 2 or 3, got {}", stage);
  const int N = comm.world_size();
  const size_t n_units = table.units().size();
  for (size_t u = 0; u < n_units; ++u) {
    const UnitSpec& us = table.units()[u];
    layouts_.push_back(make_shard_layout(us.numel, N, align));
    std::vector<TensorExtent> ext;
    for (int ti : us.tensors) {
      const TensorSpec& t = table.tensors()[size_t(ti)];
      ext.push_back({ti, t.unit_offset, t.storage_numel});
    }
    extents_.push_back(std::move(ext));
    max_padded_ = std::max(max_padded_, layouts_.back().padded_numel);
    max_shard_ = std::max(max_shard_, layouts_.back().shard_numel);
  }
  const int emb = table.embedding_unit();
  for (size_t u = 0; u < n_units; ++u) {
    const ShardLayout& L = layouts_[u];
    auto unit = std::make_unique<Unit>();
    if (stage_ <= 2)
      unit->params_full = be_.alloc(L.padded_numel);
    else
      unit->params_shard = be_.alloc(L.shard_numel);
    const size_t opt_n = stage_ == 0 ? L.padded_numel : L.shard_numel;
    unit->m = be_.alloc(opt_n);
    unit->v = be_.alloc(opt_n);
    unit->grad_shard = be_.alloc(L.shard_numel);
    if (stage_ <= 1 || int(u) == emb) unit->grad_work = be_.alloc(L.padded_numel);
    units_.push_back(std::move(unit));
  }
  if (stage_ == 3) {
    for (int i = 0; i < 2; ++i) {
      auto s = std::make_unique<GatherSlot>();
      s->buf = be_.alloc(max_padded_);
      gather_slots_.push_back(std::move(s));
    }
  }
  // A backend whose matmuls read a low-precision copy keeps one of every buffer the model reads parameters from:
  // the whole units (stages 0-2), refreshed after each all-gather and load (stage 0's AdamW updates it in place),
  // or the two gather slots (stage 3), refreshed after each gather.
  param_copies_ = be_.param_copy_bytes() > 0;
  if (param_copies_) {
    for (size_t u = 0; u < n_units && stage_ <= 2; ++u)
      be_.keep_param_copy(units_[u]->params_full, layouts_[u].padded_numel);
    for (auto& s : gather_slots_) be_.keep_param_copy(s->buf, max_padded_);
  }
  // Two reductions in flight at most; at stages 2/3 two rotating work buffers serve every unit but the embeddings.
  for (int i = 0; i < 2; ++i) {
    auto s = std::make_unique<GradSlot>();
    s->recv = be_.alloc(max_shard_);
    grad_slots_.push_back(std::move(s));
    if (stage_ >= 2) {
      auto w = std::make_unique<WorkBuf>();
      w->buf = be_.alloc(max_padded_);
      work_bufs_.push_back(std::move(w));
    }
  }
}

ZeroEngine::~ZeroEngine() {
  for (auto& u : units_) {
    for (float* p : {u->params_full, u->params_shard, u->m, u->v, u->grad_shard, u->grad_work})
      if (p) be_.release(p);
  }
  for (auto& s : gather_slots_) be_.release(s->buf);
  for (auto& s : grad_slots_) be_.release(s->recv);
  for (auto& w : work_bufs_) be_.release(w->buf);
}

float* ZeroEngine::owned_params(int unit) {
  Unit& u = *units_[size_t(unit)];
  if (stage_ == 3) return u.params_shard;
  return u.params_full + layouts_[size_t(unit)].begin(comm_.rank());
}

void ZeroEngine::init_params(uint64_t seed) {
  for (size_t u = 0; u < units_.size(); ++u) {
    const ShardLayout& L = layouts_[u];
    std::vector<float> host;
    if (stage_ <= 2) {
      host.resize(L.padded_numel);
      init_unit_range(table_, int(u), seed, 0, L.padded_numel, host.data());
      be_.from_host(units_[u]->params_full, host.data(), L.padded_numel);
      if (param_copies_) be_.refresh_param_copy(units_[u]->params_full, L.padded_numel);
    } else {
      host.resize(L.shard_numel);
      init_unit_range(table_, int(u), seed, L.begin(comm_.rank()), L.shard_numel, host.data());
      be_.from_host(units_[u]->params_shard, host.data(), L.shard_numel);
    }
    const size_t opt_n = stage_ == 0 ? L.padded_numel : L.shard_numel;
    be_.zero(units_[u]->m, opt_n);
    be_.zero(units_[u]->v, opt_n);
  }
  adam_step_ = 0;
}

void ZeroEngine::begin_step() {
  for (size_t u = 0; u < units_.size(); ++u) be_.zero(units_[u]->grad_shard, layouts_[u].shard_numel);
}

void ZeroEngine::begin_micro_step(const Gpt2& model, bool training) {
  schedule_ = model.param_schedule(training);
  cursor_ = 0;
  training_ = training;
  for (auto& u : units_) {
    u->grads_started = false;
    u->grads_now = nullptr;
  }
  if (stage_ == 3 && !schedule_.empty()) start_gather(0);
}

void ZeroEngine::start_gather(size_t position) {
  GatherSlot& s = *gather_slots_[position % 2];
  ZT_ASSERT(!s.in_flight);
  const int unit = schedule_[position];
  s.position = position;
  s.in_flight = true;
  s.copy_fresh = false;
  s.handle = comm_.iall_gather(units_[size_t(unit)]->params_shard, s.buf, layouts_[size_t(unit)].shard_numel);
}

const float* ZeroEngine::unit_params(int unit) {
  ZT_ASSERT(cursor_ < schedule_.size() && schedule_[cursor_] == unit);
  const size_t pos = cursor_++;
  if (stage_ <= 2) return units_[size_t(unit)]->params_full;
  GatherSlot& s = *gather_slots_[pos % 2];
  ZT_ASSERT(s.position == pos);
  if (s.in_flight) {
    comm_.wait(s.handle);
    s.in_flight = false;
  }
  if (param_copies_ && !s.copy_fresh) {
    be_.refresh_param_copy(s.buf, layouts_[size_t(unit)].padded_numel);
    s.copy_fresh = true;
  }
  // Prefetch the next unit of the schedule into the other slot (released before this call).
  if (pos + 1 < schedule_.size()) start_gather(pos + 1);
  return s.buf;
}

void ZeroEngine::release_params(int unit) {
  (void)unit;  // stage 3: the slot is reused by the gather after next; nothing is freed per call
}

void ZeroEngine::finish_grad_slot(GradSlot& slot) {
  if (!slot.in_flight) return;
  comm_.wait(slot.handle);
  slot.in_flight = false;
  const size_t n = layouts_[size_t(slot.unit)].shard_numel;
  be_.accumulate(units_[size_t(slot.unit)]->grad_shard, slot.recv, n);
  for (auto& w : work_bufs_)
    if (w->buf == slot.send) w->busy_unit = -1;
}

ZeroEngine::GradSlot* ZeroEngine::oldest_in_flight() {
  GradSlot* oldest = nullptr;
  for (auto& s : grad_slots_)
    if (s->in_flight && (!oldest || s->seq < oldest->seq)) oldest = s.get();
  return oldest;
}

float* ZeroEngine::unit_grads(int unit) {
  Unit& u = *units_[size_t(unit)];
  if (u.grads_started) return u.grads_now;
  if (u.grad_work) {
    u.grads_now = u.grad_work;
  } else {
    // Stages 2/3: a rotating work buffer; if both are still being reduced, finish the oldest reduction.
    WorkBuf* free_buf = nullptr;
    while (!free_buf) {
      for (auto& w : work_bufs_)
        if (w->busy_unit < 0) {
          free_buf = w.get();
          break;
        }
      if (!free_buf) {
        GradSlot* oldest = oldest_in_flight();
        ZT_ASSERT(oldest != nullptr);
        finish_grad_slot(*oldest);
      }
    }
    free_buf->busy_unit = unit;
    u.grads_now = free_buf->buf;
  }
  be_.zero(u.grads_now, layouts_[size_t(unit)].padded_numel);
  u.grads_started = true;
  return u.grads_now;
}

void ZeroEngine::grads_ready(int unit) {
  Unit& u = *units_[size_t(unit)];
  ZT_ASSERT(u.grads_started);
  GradSlot* slot = nullptr;
  for (auto& s : grad_slots_)
    if (!s->in_flight) {
      slot = s.get();
      break;
    }
  if (!slot) {
    slot = oldest_in_flight();
    finish_grad_slot(*slot);
  }
  slot->unit = unit;
  slot->send = u.grads_now;
  slot->seq = ++reduce_seq_;
  slot->in_flight = true;
  slot->handle = comm_.ireduce_scatter_sum(u.grads_now, slot->recv, layouts_[size_t(unit)].shard_numel);
}

void ZeroEngine::end_micro_step() {
  // Each unit is reduced once per micro-step into its own shard, so completion order does not change any sum.
  while (GradSlot* s = oldest_in_flight()) finish_grad_slot(*s);
  for (auto& s : gather_slots_) {
    if (s->in_flight) comm_.wait(s->handle);
    s->in_flight = false;
    s->position = SIZE_MAX;
  }
  ZT_ASSERT(cursor_ == schedule_.size());
}

double ZeroEngine::grad_norm_squared() {
  double partial = 0.0;
  for (size_t u = 0; u < units_.size(); ++u)
    partial += be_.squared_norm(units_[u]->grad_shard, layouts_[u].shard_numel);
  comm_.all_reduce_sum(&partial, 1);
  return partial;
}

void ZeroEngine::optimizer_step(const AdamwStep& hp) {
  ++adam_step_;
  const int r = comm_.rank();
  for (size_t ui = 0; ui < units_.size(); ++ui) {
    Unit& u = *units_[ui];
    const ShardLayout& L = layouts_[ui];
    if (stage_ == 0) {
      comm_.all_gather(u.grad_shard, u.grad_work, L.shard_numel);
      for (const Piece& pc : pieces_in_range(extents_[ui], 0, L.padded_numel)) {
        const size_t o = pc.flat_offset;
        const bool decay = table_.tensors()[size_t(pc.tensor)].decay;
        be_.adamw_update(u.params_full + o, u.grad_work + o, u.m + o, u.v + o, pc.count, hp.lr, hp.beta1, hp.beta2,
                         hp.eps, decay ? hp.weight_decay : 0.0f, hp.grad_scale, adam_step_);
      }
      continue;
    }
    float* owned = owned_params(int(ui));
    const size_t b = L.begin(r);
    for (const Piece& pc : pieces_in_range(extents_[ui], b, L.end(r))) {
      const size_t o = pc.flat_offset - b;
      const bool decay = table_.tensors()[size_t(pc.tensor)].decay;
      be_.adamw_update(owned + o, u.grad_shard + o, u.m + o, u.v + o, pc.count, hp.lr, hp.beta1, hp.beta2, hp.eps,
                       decay ? hp.weight_decay : 0.0f, hp.grad_scale, adam_step_);
    }
    if (stage_ <= 2) {
      // Re-replicate: the owned slice is copied out first because all_gather's send must not alias recv.
      float* tmp = grad_slots_[0]->recv;
      be_.copy(tmp, owned, L.shard_numel);
      comm_.all_gather(tmp, u.params_full, L.shard_numel);
      if (param_copies_) be_.refresh_param_copy(u.params_full, L.padded_numel);
    }
  }
}

void ZeroEngine::gather_unit(int unit, bool grads, float* out) {
  Unit& u = *units_[size_t(unit)];
  const ShardLayout& L = layouts_[size_t(unit)];
  const size_t numel = table_.units()[size_t(unit)].numel;
  if (!grads && stage_ <= 2) {
    be_.to_host(out, u.params_full, numel);
    return;
  }
  float* full = be_.alloc(L.padded_numel);
  comm_.all_gather(grads ? u.grad_shard : u.params_shard, full, L.shard_numel);
  be_.to_host(out, full, numel);
  be_.release(full);
}

std::vector<Piece> ZeroEngine::owned_pieces(int unit) const {
  // Logical extents, not extents_ (storage: wte's padded rows), which the optimizer walks.
  std::vector<TensorExtent> ext;
  for (int ti : table_.units()[size_t(unit)].tensors) {
    const TensorSpec& t = table_.tensors()[size_t(ti)];
    ext.push_back({ti, t.unit_offset, t.numel()});
  }
  const ShardLayout& L = layouts_[size_t(unit)];
  return pieces_in_range(ext, L.begin(comm_.rank()), L.end(comm_.rank()));
}

ZeroEngine::OwnedSlice ZeroEngine::owned_slice(int unit) {
  Unit& u = *units_[size_t(unit)];
  const ShardLayout& L = layouts_[size_t(unit)];
  OwnedSlice s;
  s.begin = L.begin(comm_.rank());
  s.end = L.end(comm_.rank());
  s.params = owned_params(unit);
  const size_t opt_off = stage_ == 0 ? s.begin : 0;
  s.m = u.m + opt_off;
  s.v = u.v + opt_off;
  return s;
}

void ZeroEngine::finish_load(int64_t adam_step) {
  adam_step_ = adam_step;
  const int r = comm_.rank();
  for (size_t ui = 0; ui < units_.size(); ++ui) {
    Unit& u = *units_[ui];
    const ShardLayout& L = layouts_[ui];
    const size_t b = L.begin(r);
    if (stage_ <= 2) {
      comm_.all_gather(u.params_full + b, u.params_full, L.shard_numel);
      if (param_copies_) be_.refresh_param_copy(u.params_full, L.padded_numel);
    }
    if (stage_ == 0) {
      comm_.all_gather(u.m + b, u.m, L.shard_numel);
      comm_.all_gather(u.v + b, u.v, L.shard_numel);
    }
  }
}

MemoryReport ZeroEngine::memory_report() const {
  MemoryReport r;
  const size_t N = size_t(comm_.world_size()), f = sizeof(float);
  size_t psi = 0, shards = 0, work = 0;
  for (size_t u = 0; u < units_.size(); ++u) {
    psi += layouts_[u].padded_numel;
    shards += layouts_[u].shard_numel;
    if (units_[u]->grad_work) work += layouts_[u].padded_numel;
  }
  work += work_bufs_.size() * max_padded_;
  const size_t recv = grad_slots_.size() * max_shard_;
  r.psi = psi;
  r.grad_working_bytes = work * f;
  r.gathered_bytes = stage_ == 3 ? gather_slots_.size() * max_padded_ * f : 0;
  r.params_bytes = stage_ <= 2 ? psi * f : shards * f + r.gathered_bytes;
  r.grads_bytes = (shards + work + recv) * f;
  r.optim_bytes = 2 * (stage_ == 0 ? psi : shards) * f;
  if (param_copies_)
    r.param_copy_bytes = be_.param_copy_bytes() * (stage_ <= 2 ? psi : gather_slots_.size() * max_padded_);
  // The ZeRO formulas for fp32 parameters, gradients and Adam (m, v): K = 8 bytes of optimizer state per element.
  r.formula_params = stage_ <= 2 ? 4 * psi : 4 * psi / N;
  r.formula_grads = stage_ <= 1 ? 4 * psi + 4 * psi / N : 4 * psi / N;
  r.formula_optim = stage_ == 0 ? 8 * psi : 8 * psi / N;
  r.formula_text = stage_ == 0   ? "params 4Ψ, grads 4Ψ + 4Ψ/N, optimizer 8Ψ"
                   : stage_ == 1 ? "params 4Ψ, grads 4Ψ + 4Ψ/N, optimizer 8Ψ/N"
                   : stage_ == 2 ? "params 4Ψ, grads 4Ψ/N (+ working units), optimizer 8Ψ/N"
                                 : "params 4Ψ/N (+ two gathered units), grads 4Ψ/N (+ working units), optimizer 8Ψ/N";
  return r;
}

}  // namespace zt
