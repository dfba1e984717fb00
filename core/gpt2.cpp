// GPT-2 forward/backward: the op sequence of the model (pre-LN blocks, tied LM head) over the Backend contract.
#include "core/gpt2.hpp"

#include <functional>
#include <set>

#include "core/errors.hpp"

namespace zt {

Recompute parse_recompute(const std::string& name) {
  if (name == "none") return Recompute::none;
  if (name == "attention") return Recompute::attention;
  if (name == "block") return Recompute::block;
  ZT_FAIL("--recompute must be none, attention or block, got '{}'", name);
}

const char* recompute_name(Recompute r) {
  switch (r) {
    case Recompute::none:
      return "none";
    case Recompute::attention:
      return "attention";
    case Recompute::block:
      return "block";
  }
  return "?";
}

// One visit of a unit's parameters (and, in the backward, its gradients) as the provider cuts it into parts: all
// parts at once (whole), or one part at a time in flat order or its reverse, moving on when an offset outside the
// current part is asked for. An op's tensors (a weight and its bias) always share a part.
class Gpt2::Pass {
 public:
  Pass(UnitProvider& up, int unit, PartOrder order, bool params, bool grads)
      : up_(up), unit_(unit), order_(order), params_(params), grads_(grads), n_(up.n_parts(unit)) {
    p_.assign(n_, nullptr);
    g_.assign(n_, nullptr);
    trains_.assign(n_, false);
    for (size_t k = 0; k < n_ && grads_; ++k) trains_[k] = up_.part_trains(unit_, k);
    if (order_ == PartOrder::whole)
      for (size_t k = 0; k < n_; ++k) enter(k);
  }
  ~Pass() { ZT_ASSERT(finished_ || std::uncaught_exceptions() > 0); }
  Pass(const Pass&) = delete;
  Pass& operator=(const Pass&) = delete;

  const float* p(size_t off) {
    const size_t k = part_of(off);
    ZT_ASSERT(p_[k] != nullptr);
    return p_[k] + (off - up_.part_begin(unit_, k));
  }
  /// The gradient buffer at flat element `off`, or nullptr when the part trains not at all (frozen).
  float* buf(size_t off) {
    const size_t k = part_of(off);
    if (!trains_[k]) return nullptr;
    ZT_ASSERT(g_[k] != nullptr);
    return g_[k] + (off - up_.part_begin(unit_, k));
  }
  /// The gradient of the tensor at `off`, or nullptr when it is frozen: the op skips it. (buf first: it moves the
  /// visit on to the part holding `off`.)
  float* g(size_t off) {
    float* b = buf(off);
    return b != nullptr && up_.tensor_trains(unit_, off) ? b : nullptr;
  }
  /// As g(), but a frozen tensor's gradient goes to `scratch` (ops that always write a weight gradient).
  float* g_or(size_t off, float* scratch) {
    float* p = g(off);
    return p != nullptr ? p : scratch;
  }
  void progress() { up_.progress(); }
  /// Releases what is held; gradients written are ready.
  void done() {
    if (order_ == PartOrder::whole) {
      for (size_t k = 0; k < n_; ++k) leave(k);
    } else if (cur_ != kNone) {
      leave(cur_);
    }
    finished_ = true;
  }

 private:
  static constexpr size_t kNone = SIZE_MAX;
  bool holds(size_t k, size_t off) const {
    return off >= up_.part_begin(unit_, k) && (k + 1 == n_ || off < up_.part_begin(unit_, k + 1));
  }
  size_t part_of(size_t off) {
    if (order_ == PartOrder::whole) {
      size_t k = n_ - 1;
      while (k > 0 && off < up_.part_begin(unit_, k)) --k;
      return k;
    }
    if (cur_ != kNone && holds(cur_, off)) return cur_;
    const size_t next = cur_ == kNone ? (order_ == PartOrder::ascending ? 0 : n_ - 1)
                                      : (order_ == PartOrder::ascending ? cur_ + 1 : cur_ - 1);
    if (cur_ != kNone) leave(cur_);
    ZT_ASSERT(next < n_ && holds(next, off));  // the model reads parts in the schedule's order
    enter(next);
    cur_ = next;
    return next;
  }
  void enter(size_t k) {
    if (params_) p_[k] = up_.part_params(unit_, k);
    if (trains_[k]) g_[k] = up_.part_grads(unit_, k);
  }
  void leave(size_t k) {
    if (params_) up_.release_part(unit_, k);
    if (trains_[k]) up_.part_grads_ready(unit_, k);
    p_[k] = nullptr;
    g_[k] = nullptr;
  }

  UnitProvider& up_;
  int unit_;
  PartOrder order_;
  bool params_, grads_;
  size_t n_, cur_ = kNone;
  std::vector<const float*> p_;
  std::vector<float*> g_;
  std::vector<bool> trains_;  // per part: the backward writes its gradients
  bool finished_ = false;
};

Gpt2::Gpt2(const ParamTable& table, Backend& backend, int B, int T, Recompute recompute)
    : table_(table), be_(backend), B_(B), T_(T), recompute_(recompute) {
  const ModelConfig& c = table.config();
  ZT_CHECK(T >= 1 && T <= c.seq_len, "sequence length {} exceeds the model's seq_len {}", T, c.seq_len);
  ZT_CHECK(B >= 1, "micro-batch size must be >= 1, got {}", B);
  const size_t BT = size_t(B) * T, C = size_t(c.d_model);
  att_elems_ = backend.attention_state_elems(B, T, int(C), c.n_head);
  lay_out_activations(att_elems_);
  keep_activation_copies();
  losses_host_.resize(BT);
}

void Gpt2::lay_out_activations(size_t att_elems) {
  const ModelConfig& c = table_.config();
  const size_t BT = size_t(B_) * T_, C = size_t(c.d_model), Vp = size_t(c.padded_vocab()), L = size_t(c.n_layer);
  auto r = [](size_t n) { return arena_elems(n); };
  // Every buffer starts kArenaAlign floats (256 bytes) into the arena: aligned for vectorised and tensor-core
  // kernels and cuBLASLt, whatever B, T and the head count.
  const size_t full_layer = 7 * r(BT * C) + 4 * r(BT) + r(BT * 3 * C) + r(att_elems) + 2 * r(BT * 4 * C);
  size_t per_layer = full_layer, shared = 0;
  if (recompute_ == Recompute::attention) {
    per_layer = full_layer - r(att_elems) - r(BT * C);
    shared = r(att_elems) + r(BT * C);
  } else if (recompute_ == Recompute::block) {
    per_layer = r(BT * C);
    shared = full_layer - r(BT * C);
  }
  activation_elems_ = r(BT * C) + per_layer * L + shared + r(BT * C) + 2 * r(BT) + r(BT * Vp) + r(BT);
  work_elems_ = 4 * r(BT * C) + 2 * r(BT * 4 * C) + r(BT * 3 * C);
  // The buffers every reader of which tolerates bf16 go to a region the backend holds in bf16 in memory of its own
  // (half their fp32 size), where it gives one: counted first, then asked for, then the buffers placed for real.
  counting_ = true;
  place_buffers(att_elems);
  counting_ = false;
  held_ = held_used_ > 0 ? be_.alloc_held_bf16(held_used_) : nullptr;
  const size_t arena_total = activation_elems_ + work_elems_ - (held_ != nullptr ? held_used_ : 0);
  arena_used_ = held_used_ = 0;
  arena_ = be_.alloc(arena_total);
  place_buffers(att_elems);
  ZT_ASSERT(arena_used_ == arena_total);
  tokens_ = be_.alloc_int(BT);
  // A frozen LayerNorm's weight gradients land here and are dropped (a backend may hold any of the backward's work
  // buffers in bf16, so none of them can serve).
  frozen_ln_grads_ = be_.alloc(2 * size_t(C));
  targets_ = be_.alloc_int(BT);
}

void Gpt2::place_buffers(size_t att_elems) {
  const ModelConfig& c = table_.config();
  const size_t BT = size_t(B_) * T_, C = size_t(c.d_model), Vp = size_t(c.padded_vocab()), L = size_t(c.n_layer);
  constexpr bool kHold = true;                      // take(n, kHold): a holdable buffer
  const bool hold_res = be_.holds_residual_bf16();  // the residual stream and its gradient, where the backend asks
  encoded_ = take(BT * C, hold_res);
  // The shared set: the buffers a recomputing mode writes again before each block's backward.
  LayerActs s{};
  if (recompute_ == Recompute::attention) {
    s.att = take(att_elems);
    s.atty = take(BT * C, kHold);
  } else if (recompute_ == Recompute::block) {
    // (A braced list is evaluated left to right: the fields in their order.)
    s = LayerActs{take(BT * C, kHold),
                  take(BT),
                  take(BT),
                  take(BT * 3 * C, kHold),
                  take(att_elems),
                  take(BT * C, kHold),
                  take(BT * C, kHold),
                  take(BT * C, hold_res),
                  take(BT * C, kHold),
                  take(BT),
                  take(BT),
                  take(BT * 4 * C, kHold),
                  take(BT * 4 * C, kHold),
                  take(BT * C, kHold),
                  nullptr};
  }
  layers_.assign(L, LayerActs{});
  for (auto& A : layers_) {
    if (recompute_ == Recompute::block) {
      A = s;
      A.res3 = take(BT * C, hold_res);  // the next block's input: all a block keeps
      continue;
    }
    A.ln1 = take(BT * C, kHold);
    A.ln1_mean = take(BT);
    A.ln1_rstd = take(BT);
    A.qkv = take(BT * 3 * C, kHold);
    A.att = recompute_ == Recompute::attention ? s.att : take(att_elems);
    A.atty = recompute_ == Recompute::attention ? s.atty : take(BT * C, kHold);
    A.attproj = take(BT * C, kHold);
    A.res2 = take(BT * C, hold_res);
    A.ln2 = take(BT * C, kHold);
    A.ln2_mean = take(BT);
    A.ln2_rstd = take(BT);
    A.fch = take(BT * 4 * C, kHold);
    A.fch_gelu = take(BT * 4 * C, kHold);
    A.fcproj = take(BT * C, kHold);
    A.res3 = take(BT * C, hold_res);
  }
  lnf_ = take(BT * C, kHold);
  lnf_mean_ = take(BT);
  lnf_rstd_ = take(BT);
  logits_ = take(BT * Vp, kHold);
  losses_ = take(BT);
  ZT_ASSERT(arena_used_ + held_used_ == activation_elems_);
  d_res_ = take(BT * C, hold_res);
  d_lnf_ = take(BT * C, kHold);
  d_ln_ = take(BT * C, kHold);
  d_atty_ = take(BT * C, kHold);
  d_fch_gelu_ = take(BT * 4 * C, kHold);
  d_fch_ = take(BT * 4 * C, kHold);
  d_qkv_ = take(BT * 3 * C, kHold);
  ZT_ASSERT(arena_used_ + held_used_ == activation_elems_ + work_elems_);
}

void Gpt2::keep_activation_copies() {
  // What the matmuls read, each written last by an op that can also write a rounded copy (keep_activation_copy):
  // a backend that multiplies in bf16 keeps those copies, so no matmul rounds an operand again. The inputs (the
  // LayerNorm, attention and GELU outputs) are read by the forward and weight-gradient products and by nothing
  // else, so their fp32 values need not be written at all; nor need the dlogits'. The other output gradients (the
  // residual stream's, GELU's, attention's) are also read in fp32: by LayerNorm's backward and the bias gradients.
  // A buffer that several layers share (recomputation) is kept once. Where every reader tolerates rounding
  // (`bf16_ok`), the backend is first asked to hold the buffer in bf16 alone (keep_activation_bf16): the matmul
  // operands above, the logits (the softmax reads them, their gradient replaces them), and the gradients d_fch and
  // d_qkv, whose other reader is a bias gradient (a column sum). Then the buffers the products write and kernels
  // read (`hold`: asked to be held in bf16, never given a copy): qkv, the projections' outputs, the MLP's
  // pre-activation, and the input gradients of the LayerNorms, the attention and GELU. Not the residual stream
  // (res2, res3) nor its gradient d_res, sums over every block (docs/performance.md, "The fp32 residual"), unless
  // the backend asks for them too (holds_residual_bf16).
  // A buffer in the held region (lay_out_activations) is held already: exactly these bf16_ok and `hold` buffers.
  const size_t BT = size_t(B_) * T_, C = size_t(table_.config().d_model), Vp = size_t(table_.config().padded_vocab());
  std::set<const float*> kept;
  auto held = [&](float* a, size_t n) {
    const std::less_equal<const float*> le;
    return held_ != nullptr ? le(held_, a) && le(a + n, held_ + held_used_) : be_.keep_activation_bf16(a, n);
  };
  auto keep = [&](float* a, size_t n, bool fp32_read, bool bf16_ok) {
    if (!kept.insert(a).second) return;
    if (bf16_ok && held(a, n)) {
      activation_bf16_elems_ += n;
      return;
    }
    be_.keep_activation_copy(a, n, fp32_read);
    activation_copy_elems_ += n;
  };
  auto hold = [&](float* a, size_t n) {
    if (kept.insert(a).second && held(a, n)) activation_bf16_elems_ += n;
  };
  for (LayerActs& L : layers_) {
    for (float* a : {L.ln1, L.atty, L.ln2}) keep(a, BT * C, false, true);
    keep(L.fch_gelu, BT * 4 * C, false, true);
  }
  keep(lnf_, BT * C, false, true);
  // The forward's logits are the LM head's output, read by the softmax; in fp32 only their gradient is skipped.
  keep(logits_, BT * Vp, false, true);
  keep(d_res_, BT * C, true, be_.holds_residual_bf16());
  keep(d_fch_, BT * 4 * C, true, true);
  keep(d_qkv_, BT * 3 * C, true, true);
  for (LayerActs& L : layers_) {
    hold(L.qkv, BT * 3 * C);
    for (float* a : {L.attproj, L.fcproj}) hold(a, BT * C);
    hold(L.fch, BT * 4 * C);
  }
  for (float* a : {d_lnf_, d_ln_, d_atty_}) hold(a, BT * C);
  hold(d_fch_gelu_, BT * 4 * C);
  if (be_.holds_residual_bf16()) {  // --cuda_activations bf16_residual: the stream too (its gradient is kept above)
    hold(encoded_, BT * C);
    for (LayerActs& L : layers_)
      for (float* a : {L.res2, L.res3}) hold(a, BT * C);
  }
}

Gpt2::~Gpt2() {
  be_.release(arena_);
  be_.release(held_);
  be_.release(tokens_);
  be_.release(targets_);
  be_.release(frozen_ln_grads_);
}

float* Gpt2::take(size_t n, bool holdable) {
  // Counting, a holdable buffer is counted in the held region; placing, it goes there only if there is one.
  const bool held = holdable && (counting_ || held_ != nullptr);
  size_t& used = held ? held_used_ : arena_used_;
  const size_t at = used;
  used += arena_elems(n);
  if (counting_) return nullptr;
  return (held ? held_ : arena_) + at;
}

size_t Gpt2::activation_formula_bytes() const {
  const ModelConfig& c = table_.config();
  const size_t BT = size_t(B_) * T_, BTC = BT * size_t(c.d_model), L = size_t(c.n_layer), A = att_elems_;
  const size_t BTV = BT * size_t(c.padded_vocab());
  size_t n = 0;
  switch (recompute_) {
    case Recompute::none:
      n = L * (18 * BTC + 4 * BT + A) + 2 * BTC + 3 * BT + BTV;
      break;
    case Recompute::attention:
      n = L * (17 * BTC + 4 * BT) + 3 * BTC + A + 3 * BT + BTV;
      break;
    case Recompute::block:
      n = (L + 19) * BTC + 7 * BT + A + BTV;
      break;
  }
  return n * sizeof(float);
}

std::string Gpt2::activation_formula() const {
  switch (recompute_) {
    case Recompute::none:
      return "L(18BTC + 4BT + A) + 2BTC + 3BT + BTV";
    case Recompute::attention:
      return "L(17BTC + 4BT) + 3BTC + A + 3BT + BTV";
    case Recompute::block:
      return "(L + 19)BTC + 7BT + A + BTV";
  }
  return "?";
}

std::vector<ScheduleEntry> Gpt2::param_schedule(bool training) const {
  const int L = table_.config().n_layer;
  const int emb = table_.embedding_unit(), fin = table_.final_norm_unit();
  std::vector<ScheduleEntry> s;
  s.push_back({emb, PartOrder::whole});
  for (int l = 0; l < L; ++l) s.push_back({table_.block_unit(l), PartOrder::ascending});
  s.push_back({fin, PartOrder::ascending});
  s.push_back({emb, PartOrder::whole});  // tied LM head (forward and the backward's input gradient)
  if (training) {
    s.push_back({fin, PartOrder::descending});
    for (int l = L - 1; l >= 0; --l) {
      // Recomputation reads the block up to its MLP's first matmul (the output projection is not needed).
      if (recompute_ == Recompute::block)
        s.push_back({table_.block_unit(l), PartOrder::ascending, table_.block_offsets().fc_b});
      s.push_back({table_.block_unit(l), PartOrder::descending});
    }
  }
  return s;
}

void Gpt2::block_forward(Pass& p, LayerActs& A, const float* x_in, LayerActs* prev, bool project) {
  const ModelConfig& c = table_.config();
  const int B = B_, T = T_, C = c.d_model, NH = c.n_head, BT = B * T;
  const BlockOffsets& o = table_.block_offsets();
  if (prev != nullptr) {
    // The residual add that ends the previous block is fused into this block's first LayerNorm.
    be_.residual_layernorm_forward(prev->res3, A.ln1, A.ln1_mean, A.ln1_rstd, prev->res2, prev->fcproj, p.p(o.ln_1_w),
                                   p.p(o.ln_1_b), BT, C);
  } else {
    // The same bits as the fused op (the backend contract), from the kept input.
    be_.layernorm_forward(A.ln1, A.ln1_mean, A.ln1_rstd, x_in, p.p(o.ln_1_w), p.p(o.ln_1_b), BT, C);
  }
  be_.matmul_forward(A.qkv, A.ln1, p.p(o.attn_w), p.p(o.attn_b), BT, C, 3 * C, false);
  p.progress();
  be_.attention_forward(A.atty, A.att, A.qkv, B, T, C, NH);
  be_.matmul_forward(A.attproj, A.atty, p.p(o.attn_proj_w), p.p(o.attn_proj_b), BT, C, C, false);
  be_.residual_layernorm_forward(A.res2, A.ln2, A.ln2_mean, A.ln2_rstd, x_in, A.attproj, p.p(o.ln_2_w), p.p(o.ln_2_b),
                                 BT, C);
  p.progress();
  be_.matmul_gelu_forward(A.fch, A.fch_gelu, A.ln2, p.p(o.fc_w), p.p(o.fc_b), BT, C, 4 * C);
  p.progress();
  if (project) be_.matmul_forward(A.fcproj, A.fch_gelu, p.p(o.fc_proj_w), p.p(o.fc_proj_b), BT, 4 * C, C, false);
}

void Gpt2::block_backward(Pass& p, LayerActs& A, const float* x_in) {
  const ModelConfig& c = table_.config();
  const int B = B_, T = T_, C = c.d_model, NH = c.n_head, BT = B * T;
  const BlockOffsets& o = table_.block_offsets();
  // d_res holds d(res3); the skip path passes it on unchanged, the MLP path adds into it -> d(res2).
  be_.matmul_gelu_backward(d_fch_, d_fch_gelu_, p.g(o.fc_proj_w), p.g(o.fc_proj_b), d_res_, A.fch_gelu,
                           p.p(o.fc_proj_w), A.fch, BT, 4 * C, C);
  p.progress();
  be_.matmul_backward(d_ln_, p.g(o.fc_w), p.g(o.fc_b), d_fch_, A.ln2, p.p(o.fc_w), BT, C, 4 * C, false);
  float* ln_scratch = frozen_ln_grads_;
  be_.layernorm_backward(d_res_, p.g_or(o.ln_2_w, ln_scratch), p.g_or(o.ln_2_b, ln_scratch + C), d_ln_, A.res2,
                         p.p(o.ln_2_w), A.ln2_mean, A.ln2_rstd, BT, C);
  p.progress();
  // d_res now holds d(res2); the attention path adds into it -> d(x_in).
  be_.matmul_backward(d_atty_, p.g(o.attn_proj_w), p.g(o.attn_proj_b), d_res_, A.atty, p.p(o.attn_proj_w), BT, C, C,
                      false);
  be_.attention_backward(d_qkv_, d_atty_, A.qkv, A.att, B, T, C, NH);
  p.progress();
  be_.matmul_backward(d_ln_, p.g(o.attn_w), p.g(o.attn_b), d_qkv_, A.ln1, p.p(o.attn_w), BT, C, 3 * C, false);
  be_.layernorm_backward(d_res_, p.g_or(o.ln_1_w, ln_scratch), p.g_or(o.ln_1_b, ln_scratch + C), d_ln_, x_in,
                         p.p(o.ln_1_w), A.ln1_mean, A.ln1_rstd, BT, C);
}

void Gpt2::embedding_backward(UnitProvider& units) {
  const ModelConfig& c = table_.config();
  const int BT = B_ * T_, C = c.d_model, Vp = c.padded_vocab();
  // The LM head's weight gradient waited until now (dlogits and ln_f's output are kept anyway), so the embedding's
  // gradient buffer is needed only here and not through the whole backward. Same sum: LM head first, then tokens.
  // The provider freezes the embedding unit whole or not at all (one buffer holds wte and wpe); a frozen wte or wpe
  // in a unit that trains is computed here and discarded by the provider.
  Pass g(units, table_.embedding_unit(), PartOrder::whole, false, true);
  float* dwte = g.buf(table_.wte_offset());
  if (dwte != nullptr) {
    if (g.g(table_.wte_offset()) != nullptr)
      be_.matmul_backward(nullptr, dwte, nullptr, logits_, lnf_, nullptr, BT, C, Vp, true);
    be_.embedding_backward(dwte, g.buf(table_.wpe_offset()), d_res_, tokens_, B_, T_, C);
  }
  g.done();
}

namespace {

// Closes the micro-step's graph region (when one is open) and its provider's quiet spell, then reads back and sums
// the per-token losses.
double finish_micro_step(Backend& be, UnitProvider& units, bool graph, const float* losses, std::vector<float>& host) {
  if (graph) {
    be.end_graph();
    units.end_quiet();
  }
  be.to_host(host.data(), losses, host.size());
  double sum = 0.0;
  for (float v : host) sum += double(v);
  return sum;
}

}  // namespace

double Gpt2::step(UnitProvider& units, const int32_t* inputs, const int32_t* targets, bool backward, float dloss) {
  const ModelConfig& c = table_.config();
  const int B = B_, T = T_, C = c.d_model, NH = c.n_head, V = c.vocab, Vp = c.padded_vocab();
  const int BT = B * T;
  const int emb = table_.embedding_unit(), fin = table_.final_norm_unit();
  be_.tokens_from_host(tokens_, inputs, size_t(BT));
  be_.tokens_from_host(targets_, targets, size_t(BT));
  // A backend that records graphs gets the micro-step as one region when the provider can keep its gathers and
  // reductions out of it (ZeRO stages 0-1: before and after it); the uploads above read host memory that changes
  // every step, and the losses are read after it, so both stay outside.
  const bool graph = be_.records_graphs() && units.begin_quiet();
  if (graph) be_.begin_graph();

  // ---- forward ----
  {
    Pass p(units, emb, PartOrder::whole, true, false);
    be_.embedding_forward(encoded_, tokens_, p.p(table_.wte_offset()), p.p(table_.wpe_offset()), B, T, C);
    p.done();
  }
  for (int l = 0; l < c.n_layer; ++l) {
    Pass p(units, table_.block_unit(l), PartOrder::ascending, true, false);
    LayerActs* prev = l > 0 ? &layers_[size_t(l) - 1] : nullptr;
    block_forward(p, layers_[size_t(l)], l == 0 ? encoded_ : prev->res3, prev, true);
    p.done();
  }
  // The last block's output res3 comes from the final norm's fused add (ModelConfig requires n_layer >= 1).
  LayerActs& last = layers_.back();
  const float* x = last.res3;
  {
    Pass p(units, fin, PartOrder::ascending, true, false);
    be_.residual_layernorm_forward(last.res3, lnf_, lnf_mean_, lnf_rstd_, last.res2, last.fcproj, p.p(0), p.p(C), BT,
                                   C);
    p.done();
  }
  {
    Pass p(units, emb, PartOrder::whole, true, false);
    const float* wte = p.p(table_.wte_offset());
    be_.matmul_forward(logits_, lnf_, wte, nullptr, BT, C, Vp, true);
    units.progress();
    // Fused: losses, then logits become dlogits (scaled by dloss) in place.
    be_.softmax_cross_entropy(logits_, losses_, targets_, BT, V, Vp, backward ? dloss : 0.0f);
    if (backward) be_.matmul_backward(d_lnf_, nullptr, nullptr, logits_, lnf_, wte, BT, C, Vp, true);
    p.done();
  }
  // The losses are read once the backward is issued too (nothing in it writes them): no wait in mid-step.
  if (!backward) return finish_micro_step(be_, units, graph, losses_, losses_host_);

  // ---- backward ----
  // matmul, GELU and attention backward write their activation gradients (no zeroing first); layernorm_backward
  // accumulates into d_res, the residual stream's gradient, which starts from zero at the final norm.
  {
    Pass p(units, fin, PartOrder::descending, true, true);
    be_.zero(d_res_, size_t(BT) * C);
    be_.layernorm_backward(d_res_, p.g_or(0, frozen_ln_grads_), p.g_or(C, frozen_ln_grads_ + C), d_lnf_, x, p.p(0),
                           lnf_mean_, lnf_rstd_, BT, C);
    p.done();
  }
  for (int l = c.n_layer - 1; l >= 0; --l) {
    const int u = table_.block_unit(l);
    LayerActs& A = layers_[size_t(l)];
    const float* x_in = l == 0 ? encoded_ : layers_[size_t(l) - 1].res3;
    if (recompute_ == Recompute::block) {
      // The block's forward again from its kept input, up to what its backward reads (not the output projection).
      Pass r(units, u, PartOrder::ascending, true, false);
      block_forward(r, A, x_in, nullptr, false);
      r.done();
    } else if (recompute_ == Recompute::attention) {
      be_.attention_forward(A.atty, A.att, A.qkv, B, T, C, NH);
    }
    Pass p(units, u, PartOrder::descending, true, true);
    block_backward(p, A, x_in);
    p.done();
  }
  embedding_backward(units);
  return finish_micro_step(be_, units, graph, losses_, losses_host_);
}

std::string Gpt2::memory_report() const {
  auto mib = [](size_t b) { return fmt::format("{:.2f} MiB", double(b) / double(1 << 20)); };
  // Symbols as docs/sharding.md defines them: B·T tokens, C width, L blocks, V padded vocabulary, A attention state.
  std::string s = fmt::format("activations {} per rank (formula {} = {}, --recompute {}) + backward work {} (15BTC)",
                              mib(activation_bytes()), activation_formula(), mib(activation_formula_bytes()),
                              recompute_name(recompute_), mib(backward_work_bytes()));
  if (activation_copy_bytes() > 0)
    s += fmt::format(" + bf16 copies of the matmul operands {}", mib(activation_copy_bytes()));
  if (activation_bf16_elems_ > 0 && held_ != nullptr)
    s += fmt::format(" (of these, {} held in bf16 only, in half the memory: {} less allocated)",
                     mib(activation_bf16_elems_ * 4), mib(held_bf16_saved_bytes()));
  else if (activation_bf16_elems_ > 0)
    s += fmt::format(" (of these, {} held in bf16 only: {} of it unused)", mib(activation_bf16_elems_ * 4),
                     mib(activation_bf16_elems_ * 2));
  return s;
}

}  // namespace zt
