// `zerotrain export`, `sample` and `eval`: models out to other tools, text out of a model, and its loss on a dataset.
#include "launch/model_commands.hpp"

#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "ckpt/model_source.hpp"
#include "core/data.hpp"
#include "core/errors.hpp"
#include "core/generate.hpp"
#include "core/tokenizer.hpp"
#include "launch/device_select.hpp"
#include "sharding/comm_mpi.hpp"
#include "sharding/evaluate.hpp"
#include "sharding/zero_engine.hpp"

namespace zt {

ModelConfig model_for_init_from(const std::string& path, const TrainSettings& settings) {
  const std::unique_ptr<ModelSource> src = open_model_source(path);
  const nlohmann::json have = to_json(src->config()), want = to_json(settings.model);
  std::vector<std::string> lines;
  for (const FieldSpec& f : config_fields())
    if (f.model && settings.explicit_keys.count(f.name) > 0 && have[f.name] != want[f.name])
      lines.push_back(fmt::format("{}: the model file has {} ({}), {} asks for {}", f.name, have[f.name].dump(),
                                  src->field_origin(f.name), settings.sources.at(f.name), want[f.name].dump()));
  ZT_CHECK(lines.empty(),
           "--init_from {} ({}) is not the model the other settings ask for: {}. The model file gives the "
           "architecture: drop those settings, or give a file of that shape",
           path, src->format(), fmt::join(lines, "; "));
  return src->config();
}

void add_model_commands(CLI::App& app, ModelCommands& c) {
  const char* model_help =
      "Model: a checkpoint directory (OUTPUT/checkpoint-<step>), a Hugging Face directory (model.safetensors + "
      "config.json), or an llm.c model file (gpt2_124M.bin)";
  c.export_cmd = app.add_subcommand("export", "Write a model as Hugging Face safetensors or an llm.c model file");
  c.export_cmd->add_option("model", c.model, model_help)->required();
  c.export_cmd->add_option("--format", c.format, "safetensors (a directory for transformers) or llmc (one file)")
      ->default_str("safetensors");
  c.export_cmd->add_option("--dtype", c.dtype, "fp32 or bf16 (rounded to nearest even)")->default_str("fp32");
  c.export_cmd->add_option("-o,--output", c.out, "Output directory (safetensors) or file (llmc)")->required();

  c.sample_cmd = app.add_subcommand("sample", "Generate text from a model (KV cache; deterministic for a seed)");
  c.sample_cmd->add_option("model", c.model, model_help)->required();
  c.sample_cmd->add_option("--prompt", c.prompt,
                           "Prompt text: bytes for a byte vocabulary, else encoded with --tokenizer");
  c.sample_cmd->add_option("--prompt_ids", c.prompt_ids, "Prompt as token ids, e.g. '15496 11 995'");
  c.sample_cmd->add_option("--max_new_tokens", c.max_new_tokens, "Tokens to generate")->default_str("64");
  c.sample_cmd->add_option("--temperature", c.temperature, "Softmax temperature (0: greedy)")->default_str("1");
  c.sample_cmd->add_option("--top_k", c.top_k, "Sample among the k most likely tokens (0: all)")->default_str("0");
  c.sample_cmd->add_option("--seed", c.seed, "Sampling seed")->default_str("1337");
  c.sample_cmd->add_option("--tokenizer", c.tokenizer, "llm.c tokenizer file (gpt2_tokenizer.bin) to decode with");
  c.sample_cmd->add_flag("--ids", c.print_ids, "Print token ids instead of text");
  c.sample_cmd->add_flag("--no_kv_cache", c.no_kv_cache, "Recompute the whole sequence per token (slow; a check)");

  c.eval_cmd = app.add_subcommand("eval", "Mean loss and perplexity of a model over a dataset (any world size)");
  c.eval_cmd->add_option("model", c.model, model_help)->required();
  c.eval_fields = std::make_unique<FieldFlags>(
      *c.eval_cmd,
      std::vector<std::string>{"data", "val_fraction", "micro_batch_size", "global_batch_size", "seq_len", "zero_stage",
                               "device", "dtype", "comm", "threads"},
      std::vector<std::pair<std::string, std::string>>{{"val_fraction", "0 (all of --data)"}});
  c.eval_fields->option("data")->required();
  c.eval_cmd
      ->add_option("--max_batches", c.max_batches,
                   "Global batches to evaluate, as train's --eval_batches (0: the whole dataset once)")
      ->default_str("0");
  c.eval_cmd->add_option("-o,--output", c.json_out, "Write the result as JSON to this file");
  c.sample_fields = std::make_unique<FieldFlags>(*c.sample_cmd, std::vector<std::string>{"device", "dtype", "threads"});
}

namespace {

int run_export(const ModelCommands& c, int rank) {
  if (rank != 0) return 0;  // one process streams the tensors; the others have nothing to do
  const std::unique_ptr<ModelSource> src = open_model_source(c.model);
  export_model(*src, c.format, c.dtype, c.out);
  const ModelConfig& m = src->config();
  fmt::print("exported {} ({}) to {} as {} {}: n_layer={} n_head={} d_model={} vocab={} seq_len={}, {} parameters\n",
             c.model, src->format(), c.out, c.format, c.dtype, m.n_layer, m.n_head, m.d_model, m.vocab, m.seq_len,
             ParamTable(m).n_params());
  return 0;
}

std::vector<int32_t> parse_ids(const std::string& text, int vocab) {
  std::string spaced = text;
  for (char& ch : spaced)
    if (ch == ',') ch = ' ';
  std::istringstream in(spaced);
  std::vector<int32_t> ids;
  std::string word;
  while (in >> word) {
    size_t used = 0;
    long v = -1;
    try {
      v = std::stol(word, &used);
    } catch (const std::exception&) {
    }
    ZT_CHECK(used == word.size() && v >= 0 && v < vocab, "--prompt_ids: '{}' is not a token id in [0, {})", word,
             vocab);
    ids.push_back(int32_t(v));
  }
  ZT_CHECK(!ids.empty(), "--prompt_ids '{}' holds no token id", text);
  return ids;
}

/// The prompt's tokens; without one, <|endoftext|> for GPT-2's vocabulary (as llm.c starts), else a newline.
std::vector<int32_t> prompt_tokens(const ModelCommands& c, int vocab, const Tokenizer* tok) {
  ZT_CHECK(c.prompt.empty() || c.prompt_ids.empty(), "give --prompt or --prompt_ids, not both");
  if (!c.prompt_ids.empty()) return parse_ids(c.prompt_ids, vocab);
  if (!c.prompt.empty()) {
    if (tok) return tok->encode(c.prompt);
    ZT_CHECK(vocab <= 256,
             "the model's vocabulary has {} tokens, not bytes: pass --tokenizer (llm.c's gpt2_tokenizer.bin) to "
             "encode --prompt, or give --prompt_ids",
             vocab);
    return encode_bytes(c.prompt, vocab);
  }
  if (tok && tok->eot() >= 0) return {tok->eot()};
  if (vocab == 50257) return {50256};
  return {vocab > 10 ? 10 : 0};
}

int run_sample(ModelCommands& c, int rank) {
  ModelConfig unused;
  TrainConfig t;
  c.sample_fields->apply(unused, t);
  RunDevice dev = make_run_device(t, resolve_threads(t.threads));
  ZT_CHECK(c.no_kv_cache || dev.backend->supports_attention_cached(),
           "sample --device {}: the KV-cache attention (attention_cached) has no {} kernel yet; use --device cpu, or "
           "--no_kv_cache to recompute the sequence for every token on the {}",
           t.device, dev.backend->name(), dev.backend->name());
  if (rank != 0) return 0;  // generation runs in one process
  const std::unique_ptr<ModelSource> src = open_model_source(c.model);
  const ModelConfig& m = src->config();
  std::unique_ptr<Tokenizer> tok;
  if (!c.tokenizer.empty()) {
    tok = std::make_unique<Tokenizer>(Tokenizer::load(c.tokenizer));
    ZT_CHECK(tok->vocab_size() >= m.vocab, "tokenizer '{}' has {} tokens, fewer than the model's vocab {}", c.tokenizer,
             tok->vocab_size(), m.vocab);
  }
  const std::vector<int32_t> prompt = prompt_tokens(c, m.vocab, tok.get());
  for (int32_t id : prompt) ZT_CHECK(id < m.vocab, "prompt token {} is outside the model's vocab {}", id, m.vocab);
  ZT_CHECK(int(prompt.size()) <= m.seq_len, "the prompt has {} tokens; the model's context (seq_len) holds {}",
           prompt.size(), m.seq_len);
  ZT_CHECK(c.max_new_tokens >= 0 && c.top_k >= 0, "--max_new_tokens and --top_k must be >= 0");
  const ParamTable table(m);
  FullParams params(table, *dev.backend);
  read_full_params(*src, params);
  const int max_T = std::min<int64_t>(m.seq_len, int64_t(prompt.size()) + c.max_new_tokens);
  if (int64_t(prompt.size()) + c.max_new_tokens > m.seq_len)
    fmt::print(stderr, "zerotrain: note: stopping at the model's context of {} tokens\n", m.seq_len);
  Generator gen(table, *dev.backend, max_T);
  SamplingOptions opts;
  opts.max_new_tokens = c.max_new_tokens;
  opts.temperature = c.temperature;
  opts.top_k = c.top_k;
  opts.seed = c.seed;
  opts.use_cache = !c.no_kv_cache;
  const bool ids = c.print_ids || (!tok && m.vocab > 256);
  if (ids && !c.print_ids)
    fmt::print(stderr, "zerotrain: note: no --tokenizer for vocab {}: printing token ids\n", m.vocab);
  // Streamed as chosen: the prompt, then each new token.
  auto emit = [&](int32_t id, bool first) {
    if (ids)
      fmt::print("{}{}", first ? "" : " ", id);
    else
      fmt::print("{}", tok ? tok->piece(id) : decode_bytes({id}));
    std::fflush(stdout);
  };
  for (size_t i = 0; i < prompt.size(); ++i) emit(prompt[i], i == 0);
  generate(gen, params, prompt, opts, [&](int32_t id) { emit(id, false); });
  fmt::print("\n");
  return 0;
}

int run_eval(ModelCommands& c, int rank) {
  const std::unique_ptr<ModelSource> src = open_model_source(c.model);
  const ModelConfig& m = src->config();
  // train's defaults, but the whole of --data (val_fraction 0) and the model's context unless the flags say else.
  ModelConfig asked = m;
  TrainConfig t;
  t.val_fraction = 0;
  c.eval_fields->apply(asked, t);
  RunDevice dev = make_run_device(t, resolve_threads(t.threads));
  MpiComm control(MPI_COMM_WORLD);
  const int N = control.world_size();
  const int T = asked.seq_len, B = t.micro_batch_size;
  ZT_CHECK(T <= m.seq_len, "--seq_len {} exceeds the model's seq_len {}", T, m.seq_len);
  const int G = t.global_batch(N);
  t.grad_accum_steps(N);  // a global batch that does not split over the ranks is refused, naming the flags
  ZT_CHECK(c.max_batches >= 0, "--max_batches must be >= 0 (0: the whole dataset once), got {}", c.max_batches);
  const auto data = std::shared_ptr<const TokenSource>(open_token_source(t.data, m.vocab));
  // The whole file is the validation split unless --val_fraction picks the tail that training holds out.
  const DataLoader loader =
      t.val_fraction > 0 ? DataLoader(data, nullptr, T, t.val_fraction, 0) : DataLoader(data, data, T, 0.0, 0);
  const int64_t n_seq = c.max_batches > 0 ? int64_t(c.max_batches) * G : loader.n_val_sequences();
  const ParamTable table(m);
  Gpt2 model(table, *dev.backend, B, T);
  ZeroEngine engine(table, *dev.backend, *dev.comm, t.zero_stage);
  init_params_from(*src, engine, control);
  const EvalResult r = evaluate(model, engine, loader, n_seq, G, control);  // the sum over control, as the trainer's
  if (rank != 0) return 0;
  const double ppl = std::exp(r.loss);
  fmt::print("eval {} on {}: loss {:.6f} | perplexity {:.4f} | {} sequences x {} tokens | {} rank(s)\n", c.model,
             data->describe(), r.loss, ppl, n_seq, T, N);
  if (!c.json_out.empty()) {
    const nlohmann::json j = {{"model", c.model},
                              {"format", src->format()},
                              {"data", t.data},
                              {"val_fraction", t.val_fraction},
                              {"sequences", n_seq},
                              {"seq_len", T},
                              {"tokens", r.n_tokens},
                              {"global_batch_size", G},
                              {"micro_batch_size", B},
                              {"world_size", N},
                              {"zero_stage", t.zero_stage},
                              {"loss", r.loss},
                              {"perplexity", ppl}};
    std::ofstream out(c.json_out);
    out << j.dump(1) << "\n";
    ZT_CHECK(out.good(), "cannot write '{}'", c.json_out);
  }
  return 0;
}

}  // namespace

int run_model_command(ModelCommands& c, int rank) {
  if (*c.export_cmd) return run_export(c, rank);
  if (*c.sample_cmd) return run_sample(c, rank);
  if (*c.eval_cmd) return run_eval(c, rank);
  return -1;
}

}  // namespace zt
