// ZeRO engine under mpirun: per-rank memory equals its formula, the working pool bounds the live buffers (by the
// engine's own accounting during steps), and bytes sent per step follow the traffic theory, accumulation included.
#include <mpi.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "core/gpt2.hpp"
#include "core/model.hpp"
#include "launch/trainer.hpp"
#include "sharding/comm_mpi.hpp"
#include "sharding/zero_engine.hpp"

using namespace zt;

namespace {

ModelConfig small_model() {
  ModelConfig m;
  m.n_layer = 4;
  m.n_head = 2;
  m.d_model = 32;
  m.vocab = 200;
  m.seq_len = 16;
  return m;
}

// What each test here builds on: the MPI world, small_model()'s table and a one-thread CPU backend.
struct ZeroWorld {
  MpiComm comm{MPI_COMM_WORLD};
  int world = comm.world_size();
  const ParamTable table{small_model()};
  std::unique_ptr<Backend> backend = make_cpu_backend(1);
};

// Cuts each block of small_model() into three parts and the embedding into two (see test_zero.cpp).
constexpr size_t kSmallBucketBytes = size_t(0.02 * (1 << 20));

// Runs `steps` optimizer steps of `micro` micro-steps through the engine (as the trainer does) and returns it.
void train_steps(ZeroEngine& engine, Gpt2& model, int steps, int micro) {
  const ModelConfig& c = engine.table().config();
  const int BT = model.batch() * model.seq_len();
  std::vector<int32_t> in(static_cast<size_t>(BT)), tg(static_cast<size_t>(BT));
  for (int s = 0; s < steps; ++s) {
    engine.begin_step();
    for (int m = 0; m < micro; ++m) {
      for (int i = 0; i < BT; ++i) {
        in[size_t(i)] = (i * 7 + s * 3 + m + engine.comm().rank()) % c.vocab;
        tg[size_t(i)] = (i * 5 + s + 1) % c.vocab;
      }
      engine.begin_micro_step(model, true, m + 1 == micro);
      model.step(engine, in.data(), tg.data(), true, 1.0f / float(BT * micro));
      engine.end_micro_step();
    }
    AdamwStep hp;
    hp.lr = 1e-3f;
    hp.grad_scale = float(std::min(1.0, 1.0 / (std::sqrt(engine.grad_norm_squared()) + 1e-6)));
    engine.optimizer_step(hp);
  }
}

// Memory under a freeze list, against Ψ, Ψ_t and Ψ_a computed here from the table: gradients for the parts holding
// a tensor that trains, Adam state for those parts less their frozen tensors. `whole_parts`: the frozen tensors fill
// whole parts (then Ψ_a = Ψ_t).
void check_freeze_memory(ZeroEngine& engine, const std::vector<bool>& frozen, bool whole_parts) {
  const ParamTable& table = engine.table();
  const int stage = engine.stage();
  const size_t N = size_t(engine.comm().world_size());
  size_t psi = 0, psi_t = 0, psi_a = 0;
  for (size_t p = 0; p < engine.n_parts(); ++p) {
    const ZeroEngine::Part& P = engine.part(p);
    bool trains = false;
    size_t n_frozen = 0;
    // The embedding unit trains whole or not at all (its backward writes wte and wpe from one buffer).
    const bool whole_unit = P.unit == table.embedding_unit();
    for (int ti : table.units()[size_t(P.unit)].tensors) {
      const TensorSpec& t = table.tensors()[size_t(ti)];
      const bool inside = t.unit_offset >= P.begin && t.unit_offset < P.end;
      trains = trains || ((inside || whole_unit) && !frozen[size_t(ti)]);
      n_frozen += inside && frozen[size_t(ti)] ? t.storage_numel : 0;
    }
    psi += P.layout.padded_numel;
    psi_t += trains ? P.layout.padded_numel : 0;
    psi_a += trains ? P.layout.padded_numel - n_frozen : 0;
  }
  REQUIRE(psi_t < psi);
  REQUIRE((psi_a == psi_t) == whole_parts);
  const MemoryReport r = engine.memory_report();
  REQUIRE(r.psi == psi);
  REQUIRE(r.psi_t == psi_t);
  REQUIRE(r.psi_a == psi_a);
  REQUIRE(r.params_bytes == (stage <= 2 ? 4 * psi : 4 * psi / N));
  REQUIRE(r.grads_bytes == (stage <= 1 ? 4 * psi_t + 4 * psi_t / N : 4 * psi_t / N));
  REQUIRE(r.grads_bytes == r.formula_grads);
  // Stage 0 holds all of Ψ_a on every rank; stages 1-3 split it by where the frozen tensors fall, so the ranks'
  // shares are exact only in their sum.
  double optim_sum = double(r.optim_bytes);
  MPI_Allreduce(MPI_IN_PLACE, &optim_sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  REQUIRE(optim_sum == double(stage == 0 ? 8 * psi_a * N : 8 * psi_a));
  if (stage == 0 || whole_parts) REQUIRE(r.optim_bytes == r.formula_optim);
  REQUIRE(r.formula_text.find(whole_parts ? "optimizer 8Ψ_t" : "optimizer 8Ψ_a") != std::string::npos);
}

// Traffic of one step (one micro-step): reductions and the parameters' all-gather only for the parts that train
// (frozen parameters never change); stage 3 still gathers every part for the forward and the backward.
void check_freeze_traffic(ZeroEngine& engine, MpiComm& comm) {
  const size_t N = size_t(comm.world_size());
  const MemoryReport r = engine.memory_report();
  Gpt2 model(engine.table(), engine.backend(), 1, 16);
  engine.init_params(5);
  train_steps(engine, model, 1, 1);
  comm.reset_counters();
  train_steps(engine, model, 1, 1);
  const double f = double(N - 1) / double(N) * 4, sent = double(comm.bytes_sent());
  const double theory = engine.stage() <= 2 ? 2 * double(r.psi_t) * f : (2 * double(r.psi) + double(r.psi_t)) * f;
  INFO("sent " << sent << " theory " << theory);
  if (N == 1) {
    REQUIRE(sent == 0);
  } else {
    REQUIRE(sent <= 1.05 * theory);
    REQUIRE(sent >= 0.95 * theory);
  }
}

}  // namespace

TEST_CASE_METHOD(ZeroWorld, "per-rank memory equals the ZeRO formula; the pool bounds the live buffers",
                 "[zero][memory]") {
  const size_t N = size_t(world);
  for (size_t bucket : {ZeroEngine::kDefaultBucketBytes, kSmallBucketBytes}) {
    for (int stage = 0; stage <= 3; ++stage) {
      INFO("stage " << stage << " world " << world << " bucket " << bucket << " bytes");
      ZeroEngine engine(table, *backend, comm, stage, bucket);
      size_t psi = 0, shards = 0, max_part = 0, whole = 0, logical = 0;
      for (size_t p = 0; p < engine.n_parts(); ++p) {
        const ZeroEngine::Part& P = engine.part(p);
        psi += P.layout.padded_numel;
        shards += P.layout.shard_numel;
        if (P.unit == table.embedding_unit())
          whole += P.layout.padded_numel;
        else
          max_part = std::max(max_part, P.layout.padded_numel);
        REQUIRE(P.layout.numel == P.end - P.begin);
        // A part exceeds the bucket only when it is one op's tensors (here: wte, 8192 elements).
        if (4 * (P.end - P.begin) > bucket) {
          int groups = 0;
          for (int ti : table.units()[size_t(P.unit)].tensors) {
            const TensorSpec& t = table.tensors()[size_t(ti)];
            groups += t.unit_offset >= P.begin && t.unit_offset < P.end && !t.joins_previous;
          }
          REQUIRE(groups == 1);
        }
      }
      for (const auto& u : table.units()) logical += u.numel;
      REQUIRE(psi >= logical);
      REQUIRE(psi - logical < engine.n_parts() * 16 * N);  // each part pads by less than 16·N elements
      if (bucket == kSmallBucketBytes) REQUIRE(engine.n_parts() == 3 * 4 + 2 + 1);
      const MemoryReport r = engine.memory_report();
      REQUIRE(r.psi == psi);
      REQUIRE(shards * N == psi);
      REQUIRE(r.params_bytes == (stage <= 2 ? 4 * psi : 4 * psi / N));
      REQUIRE(r.grads_bytes == (stage <= 1 ? 4 * psi + 4 * psi / N : 4 * psi / N));
      REQUIRE(r.optim_bytes == (stage == 0 ? 8 * psi : 8 * psi / N));
      REQUIRE(r.params_bytes == r.formula_params);
      REQUIRE(r.grads_bytes == r.formula_grads);
      REQUIRE(r.optim_bytes == r.formula_optim);
      // The working pool: 4 parts at stage 3 (2 gathered, 2 being reduced), 2 at stage 2, or the embedding whole.
      const size_t regions = stage == 3 ? 4 : stage == 2 ? 2 : 0;
      REQUIRE(r.pool_bytes == (stage >= 2 ? 4 * std::max(regions * max_part, whole) : 0));
      REQUIRE(r.pool_bytes == r.formula_pool);

      // During training, what the engine has in use at once never exceeds the pool: the embedding whole, or two
      // gathered parts and two gradient buffers. Recomputation and gradient accumulation included.
      Gpt2 model(table, *backend, 2, 16, Recompute::block);
      engine.init_params(3);
      train_steps(engine, model, 2, 2);
      if (stage >= 2) {
        REQUIRE(engine.peak_live_bytes() <= r.pool_bytes);
        REQUIRE(engine.peak_live_bytes() >= 4 * whole);  // the embedding was held whole (the accounting counts)
      } else {
        REQUIRE(engine.peak_live_bytes() == 0);
      }
    }
  }
}

TEST_CASE_METHOD(ZeroWorld, "bytes sent per step follow the ZeRO traffic theory, with and without accumulation",
                 "[zero][traffic]") {
  const double N = world;
  for (size_t bucket : {ZeroEngine::kDefaultBucketBytes, kSmallBucketBytes}) {
    for (int stage = 0; stage <= 3; ++stage) {
      for (int micro : {1, 4}) {
        ZeroEngine engine(table, *backend, comm, stage, bucket);
        Gpt2 model(table, *backend, 1, 16);
        engine.init_params(5);
        train_steps(engine, model, 1, micro);  // first step (staging, slots) out of the count
        comm.reset_counters();
        train_steps(engine, model, 1, micro);
        const double psi = double(engine.memory_report().psi), sent = double(comm.bytes_sent());
        // Per micro-step, elements leaving one rank: a reduce-scatter Ψ(N-1)/N, an all-gather the same. Stages 0-1
        // reduce once per step (accumulating locally before), whatever the micro-steps: reduce + all-gather (of
        // gradients at 0, of parameters at 1). Stage 2 reduces every micro-step, then all-gathers parameters; stage
        // 3 gathers parameters for each micro-step's forward and backward and reduces. Plus 8 bytes per rank of
        // squared-norm partial.
        const double once = psi * (N - 1) / N * 4;
        const double theory = stage <= 1 ? 2 * once : stage == 2 ? (micro + 1) * once : 3 * micro * once;
        // Stage 3 skips the gather of a part still in its slot: between micro-steps, the backward's last part when
        // the embedding (gathered whole in between) does not overlap that slot; at most one part per micro-step.
        size_t max_part = 0;
        for (size_t p = 0; p < engine.n_parts(); ++p) max_part = std::max(max_part, engine.part(p).layout.padded_numel);
        const double reused = stage == 3 ? (micro - 1) * double(max_part) * (N - 1) / N * 4 : 0;
        INFO("stage " << stage << " world " << world << " micro-steps " << micro << " bucket " << bucket << " sent "
                      << sent << " theory " << theory << " (less up to " << reused << ")");
        if (world == 1) {
          REQUIRE(sent == 0);
        } else {
          REQUIRE(sent <= 1.05 * theory);
          REQUIRE(sent >= 0.95 * (theory - reused));
        }
      }
    }
  }
}

TEST_CASE_METHOD(ZeroWorld,
                 "with --freeze, gradients count Ψ_t, Adam state Ψ_a (no frozen tensor's); frozen parts send no "
                 "reduction",
                 "[zero][freeze]") {
  // Block 0 whole and block 1's MLP (whole parts with the small bucket, inside a training part with the default);
  // then a weight whose bias trains (they share a part at every bucket) and wte beside a trainable wpe.
  for (const auto& patterns : {std::vector<std::string>{"h.0.*", "h.1.mlp.*"},
                               std::vector<std::string>{"h.0.*", "h.1.attn.c_attn.weight", "wte"}}) {
    const std::vector<bool> frozen = match_frozen(table, patterns);
    for (size_t bucket : {ZeroEngine::kDefaultBucketBytes, kSmallBucketBytes}) {
      for (int stage = 0; stage <= 3; ++stage) {
        INFO("stage " << stage << " world " << world << " bucket " << bucket << " bytes, --freeze " << patterns[1]);
        ZeroEngine engine(table, *backend, comm, stage, bucket, ZeroEngine::kDefaultAlign, frozen);
        check_freeze_memory(engine, frozen, patterns[1] == "h.1.mlp.*" && bucket == kSmallBucketBytes);
        check_freeze_traffic(engine, comm);
      }
    }
  }
}
