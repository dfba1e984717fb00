// Validation loss over a dataset on any number of ranks and ZeRO stage: the trainer's val_loss and `zerotrain eval`.
#pragma once

#include <cstdint>

#include "core/data.hpp"
#include "core/gpt2.hpp"
#include "sharding/comm.hpp"
#include "sharding/zero_engine.hpp"

namespace zt {

/// Mean cross-entropy (natural log) and the tokens it averages.
struct EvalResult {
  double loss = 0;
  int64_t n_tokens = 0;
};

/// The loss of `model` over validation sequences [0, n_sequences) of `loader` (sequence k is the split's
/// k mod its size, as the trainer's --eval_batches reads them), in global batches of `global_batch` sequences split
/// over ranks and micro-steps as a training step splits them (rank r, micro-step m: sequences r·G/N + m·B, +B).
/// Each rank sums its micro-steps' losses in order, then the ranks' sums add in rank order: for the same world size,
/// batch sizes and data this is bitwise the trainer's val_loss. A last, partial global batch counts only its real
/// sequences. Collective over `comm` (and the engine's gathers).
EvalResult evaluate(Gpt2& model, ZeroEngine& engine, const DataLoader& loader, int64_t n_sequences, int global_batch,
                    Comm& comm);

}  // namespace zt
