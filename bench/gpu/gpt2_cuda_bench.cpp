// GPT-2 training throughput on one GPU through the CUDA backend: Gpt2::step, global-norm clip and AdamW over
// unsharded buffers (no trainer, no ZeRO, no comm). Prints tokens/s and MFU as docs/gpu-results.md defines them.
//
// Usage: gpt2_cuda_bench [--preset gpt2] [--batch 16] [--seq_len 1024] [--steps 20] [--warmup 3] [--fp32]
//                        [--peak_tflops F] [--peak_gbs G] [--profile_steps K] [--cuda_epilogues auto|on|off]
//                        [--cuda_graphs auto|on|off] [--cuda_attention auto|fp32|fa2]
//                        [--cuda_activations auto|fp32|bf16|bf16_residual]
// --profile_steps K: after the timed steps, K more steps with every op timed (core/profiling_backend.hpp), and a
// table of where the step's time goes, each op beside what its flops and bytes would take at the card's peak
// rates (--peak_tflops, --peak_gbs; from the device name when known). --cuda_epilogues, --cuda_graphs,
// --cuda_attention, --cuda_activations: as zerotrain's flags; with graphs on it prints the backend ops per
// micro-step and how many of them a graph launch replaced (the profiled steps time each op between
// synchronizations, so they run op by op: their table is the eager one).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "core/errors.hpp"
#include "core/flat_units.hpp"
#include "core/gpt2.hpp"
#include "core/model.hpp"
#include "core/profiling_backend.hpp"
#include "cuda/cuda_backend.hpp"
#include "cuda/cuda_graph.hpp"

namespace {

struct Options {
  std::string preset = "gpt2";
  int batch = 16;
  int seq_len = 1024;
  int steps = 20;
  int warmup = 3;
  bool bf16 = true;
  double peak_tflops = 0;  // 0: from the device name
  double peak_gbs = 0;     // 0: from the device name
  int profile_steps = 0;
  std::string epilogues = "auto";
  std::string graphs = "auto";
  std::string attention = "auto";
  std::string activations = "auto";
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      ZT_CHECK(i + 1 < argc, "{} needs a value", a);
      return argv[++i];
    };
    if (a == "--preset")
      o.preset = value();
    else if (a == "--batch")
      o.batch = std::stoi(value());
    else if (a == "--seq_len")
      o.seq_len = std::stoi(value());
    else if (a == "--steps")
      o.steps = std::stoi(value());
    else if (a == "--warmup")
      o.warmup = std::stoi(value());
    else if (a == "--fp32")
      o.bf16 = false;
    else if (a == "--peak_tflops")
      o.peak_tflops = std::stod(value());
    else if (a == "--peak_gbs")
      o.peak_gbs = std::stod(value());
    else if (a == "--profile_steps")
      o.profile_steps = std::stoi(value());
    else if (a == "--cuda_epilogues")
      o.epilogues = value();
    else if (a == "--cuda_graphs")
      o.graphs = value();
    else if (a == "--cuda_attention")
      o.attention = value();
    else if (a == "--cuda_activations")
      o.activations = value();
    else
      ZT_FAIL("unknown argument {} (see the usage at the top of bench/gpu/gpt2_cuda_bench.cpp)", a);
  }
  ZT_CHECK(o.batch >= 1 && o.seq_len >= 1 && o.steps >= 1 && o.warmup >= 0 && o.profile_steps >= 0,
           "batch, seq_len, steps must be >= 1; warmup, profile_steps >= 0");
  return o;
}

// Dense bf16 tensor-core peak of the card, TFLOP/s (vendor datasheets); 0 when unknown (MFU is then not printed).
double default_peak_tflops(const std::string& device) {
  if (device.find("H100 PCIe") != std::string::npos) return 756.0;
  if (device.find("H100") != std::string::npos || device.find("H200") != std::string::npos) return 989.4;
  if (device.find("A100") != std::string::npos) return 312.0;
  return 0.0;
}

// HBM bandwidth of the card, GB/s (vendor datasheets); 0 when unknown (no predicted column then).
double default_peak_gbs(const std::string& device) {
  if (device.find("H200") != std::string::npos) return 4800.0;
  if (device.find("H100 PCIe") != std::string::npos) return 2000.0;
  if (device.find("H100") != std::string::npos) return 3350.0;
  if (device.find("A100") != std::string::npos) return 2039.0;
  return 0.0;
}

// With --cuda_graphs on: what the graphs replaced (backend ops: one or a few kernel or cuBLASLt launches each).
void print_graph_launches(const zt::CudaGraphStats& s) {
  if (s.regions == 0) return;
  const uint64_t graphed = s.captures + s.replays;
  std::printf(
      "zt_graphs: %llu micro-steps (%llu replayed, %llu captured, %llu op by op, %llu cut short) | %.0f backend "
      "ops per micro-step",
      (unsigned long long)s.regions, (unsigned long long)s.replays, (unsigned long long)s.captures,
      (unsigned long long)s.eager_regions, (unsigned long long)s.broken_regions, double(s.ops) / double(s.regions));
  if (graphed > 0)
    std::printf("; a graphed one launches %.0f graph(s) holding %.0f of them, the rest one by one",
                double(s.graph_launches) / double(graphed), double(s.ops_in_graphs) / double(graphed));
  std::printf("\n");
}

int run(const Options& o) {
  if (zt::cuda_device_count() == 0) {
    std::printf("no device: cuda_device_count() = 0\n");
    return 3;
  }
  const std::string device = zt::cuda_device_description(0);
  zt::ModelConfig cfg = zt::model_preset(o.preset);
  ZT_CHECK(o.seq_len <= cfg.seq_len, "--seq_len {} exceeds the preset's {}", o.seq_len, cfg.seq_len);
  const zt::ParamTable table(cfg);
  zt::CudaVariants variants{o.attention, "auto", "auto", o.epilogues, o.activations};
  variants.graphs = o.graphs;
  auto cuda = zt::make_cuda_backend(0, o.bf16, variants);
  zt::ProfilingBackend profiler(*cuda, false);  // forwards only, until the profiled steps
  zt::Backend* be = &profiler;
  zt::FlatUnits units(*be, table, 1234);
  std::vector<float*> m, v;
  for (size_t u = 0; u < units.n_units(); ++u) {
    m.push_back(be->alloc(units.numel(int(u))));
    v.push_back(be->alloc(units.numel(int(u))));
  }
  zt::Gpt2 model(table, *be, o.batch, o.seq_len);
  const size_t n_tokens = size_t(o.batch) * size_t(o.seq_len);
  const double n_params = double(table.n_params());
  // Per token: 6 N for the matmuls with the parameters (forward 2N, backward 4N) plus 6 L C T for attention's
  // Q K^T and P V (12 L C T forward + backward, halved by the causal mask); llm.c and nanoGPT count the same way.
  const double flops_per_token = 6.0 * n_params + 6.0 * cfg.n_layer * double(cfg.d_model) * o.seq_len;
  const double peak = o.peak_tflops > 0 ? o.peak_tflops : default_peak_tflops(device);
  const double peak_gbs = o.peak_gbs > 0 ? o.peak_gbs : default_peak_gbs(device);
  const double gib = double(1ull << 30);
  std::printf(
      "device %s | preset %s (%.1fM params) | B=%d T=%d | %s | epilogues %s | activations %.2f GiB + work %.2f GiB "
      "in fp32 (%.2f GiB of them held in bf16: %.2f GiB less allocated) + bf16 copies %.2f GiB | "
      "--cuda_activations %s\n",
      device.c_str(), o.preset.c_str(), n_params / 1e6, o.batch, o.seq_len, o.bf16 ? "bf16" : "fp32",
      o.epilogues.c_str(), double(model.activation_bytes()) / gib, double(model.backward_work_bytes()) / gib,
      double(model.activation_bf16_bytes()) / gib, double(model.held_bf16_saved_bytes()) / gib,
      double(model.activation_copy_bytes()) / gib, o.activations.c_str());
  std::fflush(stdout);

  std::mt19937 rng(42);
  std::uniform_int_distribution<int32_t> token(0, cfg.vocab - 1);
  std::vector<int32_t> inputs(n_tokens), targets(n_tokens);
  std::vector<double> step_s;
  for (int step = 0; step < o.warmup + o.steps + o.profile_steps; ++step) {
    const bool profiled = step >= o.warmup + o.steps;
    profiler.set_enabled(profiled);
    for (auto& t : inputs) t = token(rng);
    for (auto& t : targets) t = token(rng);
    be->synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    units.start_micro_step();
    const double loss =
        model.step(units, inputs.data(), targets.data(), true, 1.0f / float(n_tokens)) / double(n_tokens);
    double norm_sq = 0;
    for (size_t u = 0; u < units.n_units(); ++u) norm_sq += be->squared_norm(units.grads(int(u)), units.numel(int(u)));
    const double norm = std::sqrt(norm_sq);
    const float grad_scale = norm > 1.0 ? float(1.0 / norm) : 1.0f;  // clip the global norm at 1, as the trainer
    for (size_t u = 0; u < units.n_units(); ++u)
      be->adamw_update(units.params(int(u)), units.grads(int(u)), m[u], v[u], units.numel(int(u)), 6e-4f, 0.9f, 0.95f,
                       1e-8f, 0.0f, grad_scale, step + 1);
    be->synchronize();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    profiler.set_enabled(false);
    if (step >= o.warmup && !profiled) step_s.push_back(dt);
    // After the first step every buffer and scratch block has been allocated: what a step holds on the device.
    if (step == 0) std::printf("device memory in use after one step: %.2f GiB\n", zt::cuda_device_memory_used() / gib);
    std::printf("step %d loss %.4f grad_norm %.3f %.1f ms %.0f tok/s%s\n", step + 1, loss, norm, dt * 1e3,
                double(n_tokens) / dt,
                step < o.warmup ? " (warm-up)"
                : profiled      ? " (profiled)"
                                : "");
    std::fflush(stdout);
  }
  std::sort(step_s.begin(), step_s.end());
  const double median = step_s[step_s.size() / 2];
  const double tokens_per_s = double(n_tokens) / median;
  std::printf("zt_tokens_per_s=%.1f\n", tokens_per_s);
  if (peak > 0)
    std::printf("zt_mfu=%.4f (%.1f TFLOP/s of %.1f peak)\n", flops_per_token * tokens_per_s / (peak * 1e12),
                flops_per_token * tokens_per_s / 1e12, peak);
  else
    std::printf("zt_mfu=unknown (no peak for this card: pass --peak_tflops)\n");
  print_graph_launches(zt::cuda_graph_stats(*cuda));
  if (o.profile_steps > 0)
    std::printf(
        "\nwhere a step's time goes (%d profiled steps; each op timed between synchronizations; pred ms: its flops "
        "at %.0f TFLOP/s or its fp32 bytes at %.0f GB/s, the slower):\n%s",
        o.profile_steps, peak, peak_gbs, profiler.report(o.profile_steps, peak, peak_gbs).c_str());
  for (size_t u = 0; u < m.size(); ++u) {
    be->release(m[u]);
    be->release(v[u]);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpt2_cuda_bench: %s\n", e.what());
    return 1;
  }
}
