// GPT-2 forward/backward: the op sequence of the model (pre-LN blocks, tied LM head) over the Backend contract.
#include "core/gpt2.hpp"

#include "core/errors.hpp"

namespace zt {

Gpt2::Gpt2(const ParamTable& table, Backend& backend, int B, int T) : table_(table), be_(backend), B_(B), T_(T) {
  const ModelConfig& c = table.config();
  ZT_CHECK(T >= 1 && T <= c.seq_len, "sequence length {} exceeds the model's seq_len {}", T, c.seq_len);
  ZT_CHECK(B >= 1, "micro-batch size must be >= 1, got {}", B);
  const size_t BT = size_t(B) * T, C = size_t(c.d_model), NH = size_t(c.n_head), Vp = size_t(c.padded_vocab());
  // Every buffer starts kArenaAlign floats (256 bytes) into the arena: aligned for vectorised and tensor-core
  // kernels and cuBLASLt, whatever B, T and the head count.
  auto r = [](size_t n) { return arena_elems(n); };
  const size_t att_elems = backend.attention_state_elems(B, T, int(C), int(NH));
  const size_t per_layer = 7 * r(BT * C) + 4 * r(BT) + r(BT * 3 * C) + r(att_elems) + 2 * r(BT * 4 * C);
  activation_elems_ = r(BT * C) + per_layer * size_t(c.n_layer) + r(BT * C) + 2 * r(BT) + r(BT * Vp) + r(BT);
  const size_t scratch = 4 * r(BT * C) + 2 * r(BT * 4 * C) + r(BT * 3 * C);
  arena_ = be_.alloc(activation_elems_ + scratch);
  tokens_ = be_.alloc_int(BT);
  targets_ = be_.alloc_int(BT);
  encoded_ = take(BT * C);
  layers_.resize(size_t(c.n_layer));
  for (auto& L : layers_) {
    L.ln1 = take(BT * C);
    L.ln1_mean = take(BT);
    L.ln1_rstd = take(BT);
    L.qkv = take(BT * 3 * C);
    L.att = take(att_elems);
    L.atty = take(BT * C);
    L.attproj = take(BT * C);
    L.res2 = take(BT * C);
    L.ln2 = take(BT * C);
    L.ln2_mean = take(BT);
    L.ln2_rstd = take(BT);
    L.fch = take(BT * 4 * C);
    L.fch_gelu = take(BT * 4 * C);
    L.fcproj = take(BT * C);
    L.res3 = take(BT * C);
  }
  lnf_ = take(BT * C);
  lnf_mean_ = take(BT);
  lnf_rstd_ = take(BT);
  logits_ = take(BT * Vp);
  losses_ = take(BT);
  ZT_ASSERT(arena_used_ == activation_elems_);
  d_res_ = take(BT * C);
  d_lnf_ = take(BT * C);
  d_ln_ = take(BT * C);
  d_atty_ = take(BT * C);
  d_fch_gelu_ = take(BT * 4 * C);
  d_fch_ = take(BT * 4 * C);
  d_qkv_ = take(BT * 3 * C);
  ZT_ASSERT(arena_used_ == activation_elems_ + scratch);
  // What the matmuls read, each written last by an op that can also write a rounded copy (keep_activation_copy):
  // a backend that multiplies in bf16 keeps those copies, so no matmul rounds an operand again. The inputs (the
  // LayerNorm, attention and GELU outputs) are read by the forward and weight-gradient products and by nothing
  // else, so their fp32 values need not be written at all; nor need the dlogits'. The other output gradients (the
  // residual stream's, GELU's, attention's) are also read in fp32: by LayerNorm's backward and the bias gradients.
  auto keep = [&](float* a, size_t n, bool fp32_read) {
    be_.keep_activation_copy(a, n, fp32_read);
    activation_copy_elems_ += n;
  };
  for (LayerActs& L : layers_) {
    for (float* a : {L.ln1, L.atty, L.ln2}) keep(a, BT * C, false);
    keep(L.fch_gelu, BT * 4 * C, false);
  }
  keep(lnf_, BT * C, false);
  keep(logits_, BT * Vp, false);  // the forward's logits are the LM head's fp32 output; only their gradient is skipped
  keep(d_res_, BT * C, true);
  keep(d_fch_, BT * 4 * C, true);
  keep(d_qkv_, BT * 3 * C, true);
  losses_host_.resize(BT);
}

Gpt2::~Gpt2() {
  be_.release(arena_);
  be_.release(tokens_);
  be_.release(targets_);
}

float* Gpt2::take(size_t n) {
  float* p = arena_ + arena_used_;
  arena_used_ += arena_elems(n);
  return p;
}

std::vector<int> Gpt2::param_schedule(bool training) const {
  const int L = table_.config().n_layer;
  std::vector<int> s;
  s.push_back(table_.embedding_unit());
  for (int l = 0; l < L; ++l) s.push_back(table_.block_unit(l));
  s.push_back(table_.final_norm_unit());
  s.push_back(table_.embedding_unit());  // tied LM head (forward and its backward)
  if (training) {
    s.push_back(table_.final_norm_unit());
    for (int l = L - 1; l >= 0; --l) s.push_back(table_.block_unit(l));
  }
  return s;
}

double Gpt2::step(UnitProvider& units, const int32_t* inputs, const int32_t* targets, bool backward, float dloss) {
  const ModelConfig& c = table_.config();
  const int B = B_, T = T_, C = c.d_model, NH = c.n_head, V = c.vocab, Vp = c.padded_vocab();
  const int BT = B * T;
  const BlockOffsets& o = table_.block_offsets();
  const int emb = table_.embedding_unit(), fin = table_.final_norm_unit();
  be_.tokens_from_host(tokens_, inputs, size_t(BT));
  be_.tokens_from_host(targets_, targets, size_t(BT));

  // ---- forward ----
  {
    const float* p = units.unit_params(emb);
    be_.embedding_forward(encoded_, tokens_, p + table_.wte_offset(), p + table_.wpe_offset(), B, T, C);
    units.release_params(emb);
  }
  // The residual add that ends a block is fused into the LayerNorm that reads its sum: the next block's ln_1, or
  // the final norm. It needs only activations, so it runs once that LayerNorm's unit is gathered.
  for (int l = 0; l < c.n_layer; ++l) {
    const float* p = units.unit_params(table_.block_unit(l));
    LayerActs& A = layers_[size_t(l)];
    if (l == 0) {
      be_.layernorm_forward(A.ln1, A.ln1_mean, A.ln1_rstd, encoded_, p + o.ln_1_w, p + o.ln_1_b, BT, C);
    } else {
      LayerActs& prev = layers_[size_t(l) - 1];
      be_.residual_layernorm_forward(prev.res3, A.ln1, A.ln1_mean, A.ln1_rstd, prev.res2, prev.fcproj, p + o.ln_1_w,
                                     p + o.ln_1_b, BT, C);
    }
    const float* x = l == 0 ? encoded_ : layers_[size_t(l) - 1].res3;
    be_.matmul_forward(A.qkv, A.ln1, p + o.attn_w, p + o.attn_b, BT, C, 3 * C, false);
    units.progress();
    be_.attention_forward(A.atty, A.att, A.qkv, B, T, C, NH);
    be_.matmul_forward(A.attproj, A.atty, p + o.attn_proj_w, p + o.attn_proj_b, BT, C, C, false);
    be_.residual_layernorm_forward(A.res2, A.ln2, A.ln2_mean, A.ln2_rstd, x, A.attproj, p + o.ln_2_w, p + o.ln_2_b, BT,
                                   C);
    units.progress();
    be_.matmul_forward(A.fch, A.ln2, p + o.fc_w, p + o.fc_b, BT, C, 4 * C, false);
    be_.gelu_forward(A.fch_gelu, A.fch, size_t(BT) * 4 * C);
    units.progress();
    be_.matmul_forward(A.fcproj, A.fch_gelu, p + o.fc_proj_w, p + o.fc_proj_b, BT, 4 * C, C, false);
    units.release_params(table_.block_unit(l));
  }
  // The last block's output res3 comes from the final norm's fused add (ModelConfig requires n_layer >= 1).
  const LayerActs& last = layers_.back();
  const float* x = last.res3;
  {
    const float* p = units.unit_params(fin);
    be_.residual_layernorm_forward(last.res3, lnf_, lnf_mean_, lnf_rstd_, last.res2, last.fcproj, p, p + C, BT, C);
    units.release_params(fin);
  }
  {
    const float* p = units.unit_params(emb);
    const float* wte = p + table_.wte_offset();
    be_.matmul_forward(logits_, lnf_, wte, nullptr, BT, C, Vp, true);
    units.progress();
    // Fused: losses, then logits become dlogits (scaled by dloss) in place.
    be_.softmax_cross_entropy(logits_, losses_, targets_, BT, V, Vp, backward ? dloss : 0.0f);
    if (backward) {
      float* g = units.unit_grads(emb);
      be_.matmul_backward(d_lnf_, g + table_.wte_offset(), nullptr, logits_, lnf_, wte, BT, C, Vp, true);
    }
    units.release_params(emb);
  }
  be_.to_host(losses_host_.data(), losses_, size_t(BT));
  double loss_sum = 0.0;
  for (float v : losses_host_) loss_sum += double(v);
  if (!backward) return loss_sum;

  // ---- backward ----
  // matmul, GELU and attention backward write their activation gradients (no zeroing first); layernorm_backward
  // accumulates into d_res, the residual stream's gradient, which starts from zero at the final norm.
  {
    const float* p = units.unit_params(fin);
    float* g = units.unit_grads(fin);
    be_.zero(d_res_, size_t(BT) * C);
    be_.layernorm_backward(d_res_, g, g + C, d_lnf_, x, p, lnf_mean_, lnf_rstd_, BT, C);
    units.release_params(fin);
    units.grads_ready(fin);
  }
  for (int l = c.n_layer - 1; l >= 0; --l) {
    const int u = table_.block_unit(l);
    const float* p = units.unit_params(u);
    float* g = units.unit_grads(u);
    LayerActs& A = layers_[size_t(l)];
    const float* x_in = l == 0 ? encoded_ : layers_[size_t(l) - 1].res3;
    // d_res holds d(res3); the skip path passes it on unchanged, the MLP path adds into it -> d(res2).
    be_.matmul_backward(d_fch_gelu_, g + o.fc_proj_w, g + o.fc_proj_b, d_res_, A.fch_gelu, p + o.fc_proj_w, BT, 4 * C,
                        C, false);
    be_.gelu_backward(d_fch_, A.fch, d_fch_gelu_, size_t(BT) * 4 * C);
    units.progress();
    be_.matmul_backward(d_ln_, g + o.fc_w, g + o.fc_b, d_fch_, A.ln2, p + o.fc_w, BT, C, 4 * C, false);
    be_.layernorm_backward(d_res_, g + o.ln_2_w, g + o.ln_2_b, d_ln_, A.res2, p + o.ln_2_w, A.ln2_mean, A.ln2_rstd, BT,
                           C);
    units.progress();
    // d_res now holds d(res2); the attention path adds into it -> d(x_in).
    be_.matmul_backward(d_atty_, g + o.attn_proj_w, g + o.attn_proj_b, d_res_, A.atty, p + o.attn_proj_w, BT, C, C,
                        false);
    be_.attention_backward(d_qkv_, d_atty_, A.qkv, A.att, B, T, C, NH);
    units.progress();
    be_.matmul_backward(d_ln_, g + o.attn_w, g + o.attn_b, d_qkv_, A.ln1, p + o.attn_w, BT, C, 3 * C, false);
    be_.layernorm_backward(d_res_, g + o.ln_1_w, g + o.ln_1_b, d_ln_, x_in, p + o.ln_1_w, A.ln1_mean, A.ln1_rstd, BT,
                           C);
    units.release_params(u);
    units.grads_ready(u);
  }
  {
    float* g = units.unit_grads(emb);
    be_.embedding_backward(g + table_.wte_offset(), g + table_.wpe_offset(), d_res_, tokens_, B, T, C);
    units.grads_ready(emb);
  }
  return loss_sum;
}

}  // namespace zt
