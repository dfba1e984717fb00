// Validation loss: the trainer's eval pass, shared with `zerotrain eval` so the two print the same numbers.
#include "sharding/evaluate.hpp"

#include <algorithm>
#include <vector>

#include "core/errors.hpp"

namespace zt {

EvalResult evaluate(Gpt2& model, ZeroEngine& engine, const DataLoader& loader, int64_t n_sequences, int global_batch,
                    Comm& comm) {
  const int N = comm.world_size(), rank = comm.rank(), B = model.batch(), T = model.seq_len(), G = global_batch;
  ZT_CHECK(G % (N * B) == 0,
           "the evaluation batch of {} sequences does not split into {} rank(s) x micro-batches of {}", G, N, B);
  ZT_CHECK(n_sequences >= 1, "nothing to evaluate: {} sequences", n_sequences);
  const int per_rank = G / N, accum = per_rank / B;
  std::vector<int32_t> inputs(size_t(B) * T), targets(size_t(B) * T);
  double sum = 0;
  const int64_t n_batches = (n_sequences + G - 1) / G;
  for (int64_t g = 0; g < n_batches; ++g)
    for (int m = 0; m < accum; ++m) {
      const int first = rank * per_rank + m * B;
      const int valid = int(std::clamp<int64_t>(n_sequences - (g * G + first), 0, B));
      if (valid > 0) loader.val_batch(g, G, first, valid, inputs.data(), targets.data());
      // Rows past the data (a partial last batch) still run, so every rank takes part in the engine's gathers;
      // they repeat sequence 0 and are not counted.
      for (int r = valid; r < B; ++r)
        loader.val_batch(0, G, 0, 1, inputs.data() + size_t(r) * T, targets.data() + size_t(r) * T);
      engine.begin_micro_step(model, false);
      const double step_sum = model.step(engine, inputs.data(), targets.data(), false, 0.0f);
      engine.end_micro_step();
      if (valid == B) {
        sum += step_sum;
      } else {
        double part = 0;
        for (size_t i = 0; i < size_t(valid) * T; ++i) part += double(model.token_losses()[i]);
        sum += part;
      }
    }
  comm.all_reduce_sum(&sum, 1);
  EvalResult r;
  r.n_tokens = n_sequences * T;
  r.loss = sum / double(r.n_tokens);
  return r;
}

}  // namespace zt
