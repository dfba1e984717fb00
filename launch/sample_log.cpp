// SampleLog: --sample_interval's generated continuations, gathered to rank 0 and printed there.
#include "launch/sample_log.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstdio>

#include "core/generate.hpp"
#include "core/tokenizer.hpp"
#include "sharding/zero_engine.hpp"

namespace zt {

SampleLog::SampleLog(const ParamTable& table, Backend& backend, const DataLoader& loader, uint64_t seed, int interval,
                     bool lead, bool announce)
    : table_(table), be_(backend), seed_(seed), interval_(interval), lead_(lead), announce_(announce) {
  if (interval_ <= 0) return;
  const int T = table.config().seq_len;
  std::vector<int32_t> in(static_cast<size_t>(T)), tg(static_cast<size_t>(T));
  if (loader.n_val_sequences() > 0)
    loader.val_batch(0, 1, 0, 1, in.data(), tg.data());
  else
    loader.train_batch(0, 1, 0, 1, in.data(), tg.data());
  prompt_.assign(in.begin(), in.begin() + std::max(1, std::min(16, T / 4)));
}

SampleLog::~SampleLog() = default;

void SampleLog::after_step(int steps_done, ZeroEngine& engine) {
  if (interval_ <= 0 || steps_done % interval_ != 0) return;
  const std::string text = sample(engine, uint64_t(steps_done));
  if (announce_) {
    fmt::print("sample at step {}: {}\n", steps_done, text);
    std::fflush(stdout);
  }
}

// The sample's text (rank 0; "" elsewhere): bytes escaped for a byte vocabulary, else token ids.
std::string SampleLog::sample(ZeroEngine& engine, uint64_t step) {
  if (lead_ && !params_) {
    params_ = std::make_unique<FullParams>(table_, be_);
    gen_ = std::make_unique<Generator>(table_, be_, table_.config().seq_len);
  }
  std::vector<float> host;
  for (size_t u = 0; u < table_.units().size(); ++u) {
    if (!lead_ && engine.stage() < 3) break;  // below stage 3 rank 0 has every parameter already
    host.resize(table_.units()[u].numel);
    engine.gather_unit(int(u), false, host.data());
    if (lead_) be_.from_host(params_->unit(int(u)), host.data(), host.size());
  }
  if (!lead_) return std::string();
  SamplingOptions opts;
  opts.max_new_tokens = std::min(64, gen_->max_T() - int(prompt_.size()));
  opts.top_k = 40;
  opts.seed = seed_ ^ (step << 32);
  opts.use_cache = be_.supports_attention_cached();  // else the whole prefix is recomputed per token
  const std::vector<int32_t> seq = generate(*gen_, *params_, prompt_, opts);
  const std::vector<int32_t> fresh(seq.begin() + long(prompt_.size()), seq.end());
  if (table_.config().vocab <= 256)
    return fmt::format("\"{}\" -> \"{}\"", escape_bytes(decode_bytes(prompt_)), escape_bytes(decode_bytes(fresh)));
  return fmt::format("[{}] -> [{}]", fmt::join(prompt_, " "), fmt::join(fresh, " "));
}

}  // namespace zt
