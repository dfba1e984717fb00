// A few GPT-2 optimizer steps through the ZeRO engine on any backend and comm, as the trainer runs them (global
// batch split over ranks and micro-steps, loss all-reduced, global-norm clip, AdamW), keeping the losses, the first
// step's reduced gradients and the final parameters: what the CUDA comm tests compare across backends, comms and
// stages. Collective over `comm`.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "core/backend.hpp"
#include "core/gpt2.hpp"
#include "core/model.hpp"
#include "sharding/comm.hpp"
#include "sharding/zero_engine.hpp"
#include "test/test_util.hpp"

namespace zt::test {

struct ZeroRun {
  std::vector<double> losses;                    ///< mean loss of each step (identical on every rank)
  std::vector<std::vector<float>> first_grads;   ///< per unit: reduced gradients of step 1 (unit numel)
  std::vector<std::vector<float>> final_params;  ///< per unit: parameters after the last step (unit numel)
};

inline ZeroRun run_zero_steps(Backend& be, Comm& comm, int stage, int steps, float lr = 1e-3f) {
  const ModelConfig cfg = two_block_model();
  const ParamTable table(cfg);
  const int N = comm.world_size(), rank = comm.rank();
  const int B = 2, T = cfg.seq_len, G = 4 * N, per_rank = G / N, accum = per_rank / B;
  Gpt2 model(table, be, B, T);
  ZeroEngine engine(table, be, comm, stage);
  engine.init_params(1234);
  const size_t n_units = table.units().size();
  const float dloss = 1.0f / float(G * T);
  ZeroRun out;
  std::vector<int32_t> inputs(size_t(B) * T), targets(size_t(B) * T);
  for (int step = 0; step < steps; ++step) {
    // The step's global batch, the same on every rank; rank r takes sequences [r*per_rank, (r+1)*per_rank).
    std::mt19937_64 rng(uint64_t(1000 + step));
    std::uniform_int_distribution<int32_t> token(0, cfg.vocab - 1);
    std::vector<int32_t> batch(size_t(G) * (T + 1));
    for (auto& x : batch) x = token(rng);
    engine.begin_step();
    double loss_sum = 0;
    for (int m = 0; m < accum; ++m) {
      for (int b = 0; b < B; ++b) {
        const size_t seq = size_t(rank * per_rank + m * B + b);
        for (int t = 0; t < T; ++t) {
          inputs[size_t(b * T + t)] = batch[seq * size_t(T + 1) + size_t(t)];
          targets[size_t(b * T + t)] = batch[seq * size_t(T + 1) + size_t(t) + 1];
        }
      }
      engine.begin_micro_step(model, true);
      loss_sum += model.step(engine, inputs.data(), targets.data(), true, dloss);
      engine.end_micro_step();
    }
    comm.all_reduce_sum(&loss_sum, 1);
    out.losses.push_back(loss_sum / (double(G) * T));
    const double norm = std::sqrt(engine.grad_norm_squared());
    if (step == 0) {
      for (size_t u = 0; u < n_units; ++u) {
        out.first_grads.emplace_back(table.units()[u].numel);
        engine.gather_unit(int(u), true, out.first_grads.back().data());
      }
    }
    AdamwStep hp;
    hp.lr = lr;
    hp.weight_decay = 0.1f;
    hp.grad_scale = float(std::min(1.0, 1.0 / (norm + 1e-6)));  // clip at 1, as the trainer's default
    engine.optimizer_step(hp);
  }
  for (size_t u = 0; u < n_units; ++u) {
    out.final_params.emplace_back(table.units()[u].numel);
    engine.gather_unit(int(u), false, out.final_params.back().data());
  }
  return out;
}

}  // namespace zt::test
