// --cuda_graphs on (cuda/cuda_graph.cu): training steps whose micro-steps replay CUDA graphs give the bits of the
// same steps launched op by op, through a changing learning rate, a micro-step with another dloss and an eval; a
// value a graph would freeze shows as different bits. Part of test_cuda_ops (and test_cuda_ops_sim).
#include <catch2/catch.hpp>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/flat_units.hpp"
#include "core/gpt2.hpp"
#include "core/model.hpp"
#include "cuda/cuda_backend.hpp"
#include "cuda/cuda_graph.hpp"
#include "test/test_util.hpp"

namespace {

std::unique_ptr<zt::Backend> graphs_backend(const char* graphs) {
  zt::CudaVariants v;
  v.graphs = graphs;
  return zt::make_cuda_backend(0, true, v);
}

struct Trace {
  std::vector<double> losses;              // every step's training loss, then the eval's
  std::vector<std::vector<float>> params;  // per unit, after the last step
};

// `steps` AdamW steps of the two-block model, one micro-step each, on random tokens from a fixed seed. The learning
// rate changes every step (AdamW runs outside the graph: its scalars must reach it fresh), step 3 weighs its tokens
// by another dloss (as a last partial batch does: a by-value argument of the loss kernel), and an eval (forward only)
// runs after step 2.
Trace train(zt::Backend& be, int steps) {
  const zt::ParamTable table(zt::test::two_block_model());
  const int B = 2, T = table.config().seq_len, V = table.config().vocab;
  zt::FlatUnits units(be, table, 4321);
  zt::Gpt2 model(table, be, B, T);
  std::vector<float*> m, v;
  for (size_t u = 0; u < units.n_units(); ++u) {
    m.push_back(be.alloc(units.numel(int(u))));
    v.push_back(be.alloc(units.numel(int(u))));
  }
  std::mt19937_64 rng(99);
  Trace out;
  for (int step = 0; step < steps; ++step) {
    const std::vector<int32_t> in = zt::test::random_tokens(rng, size_t(B) * T, V);
    const std::vector<int32_t> tg = zt::test::random_tokens(rng, size_t(B) * T, V);
    const float dloss = step == 3 ? 1.0f / float(B * T - 5) : 1.0f / float(B * T);
    units.start_micro_step();
    out.losses.push_back(model.step(units, in.data(), tg.data(), true, dloss));
    for (size_t u = 0; u < units.n_units(); ++u)
      be.adamw_update(units.params(int(u)), units.grads(int(u)), m[u], v[u], units.numel(int(u)),
                      1e-3f * float(step + 1), 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, step + 1);
    if (step == 2) out.losses.push_back(model.step(units, in.data(), tg.data(), false, 0.0f));
  }
  for (size_t u = 0; u < units.n_units(); ++u) {
    out.params.emplace_back(units.numel(int(u)));
    be.to_host(out.params.back().data(), units.params(int(u)), out.params.back().size());
    be.release(m[u]);
    be.release(v[u]);
  }
  return out;
}

}  // namespace

TEST_CASE("cuda_graphs on: training steps replayed from graphs give the bits of op-by-op launches", "[cuda][graphs]") {
  CHECK_THROWS_WITH(graphs_backend("yes"), Catch::Contains("--cuda_graphs yes: expected auto, on or off"));
  const int steps = 5;
  auto off = graphs_backend("off");
  auto on = graphs_backend("on");
  CHECK_FALSE(off->records_graphs());
  REQUIRE(on->records_graphs());
  const Trace want = train(*off, steps), got = train(*on, steps);
  REQUIRE(got.losses.size() == want.losses.size());
  for (size_t i = 0; i < want.losses.size(); ++i) {
    INFO("loss " << i << ": " << got.losses[i] << " with graphs, " << want.losses[i] << " without");
    CHECK(std::memcmp(&got.losses[i], &want.losses[i], sizeof(double)) == 0);
  }
  for (size_t u = 0; u < want.params.size(); ++u) {
    INFO("parameters of unit " << u);
    CHECK(std::memcmp(got.params[u].data(), want.params[u].data(), want.params[u].size() * sizeof(float)) == 0);
  }
  // The graphs ran: the first training micro-step warms up, a later one is captured and the rest replay it; the
  // eval and the step with another dloss are other keys, seen once, run op by op. Nothing forced a region open.
  const zt::CudaGraphStats s = zt::cuda_graph_stats(*on);
  INFO("regions " << s.regions << ", eager " << s.eager_regions << ", captures " << s.captures << ", replays "
                  << s.replays << ", broken " << s.broken_regions << ", failures " << s.capture_failures);
  CHECK(s.regions == uint64_t(steps + 1));
  CHECK(s.captures >= 1);
  CHECK(s.replays >= 2);
  CHECK(s.eager_regions + s.captures + s.replays == s.regions);
  CHECK(s.broken_regions == 0);
  CHECK(s.capture_failures == 0);
  CHECK(s.ops_in_graphs > 0);
  CHECK(zt::cuda_graph_stats(*off).regions == 0);
}

TEST_CASE("cuda_graphs on: a region that needs a result runs what it recorded first", "[cuda][graphs]") {
  auto be = graphs_backend("on");
  std::vector<float> a(64, 1.5f), b(64, 2.0f), out(64, 0.0f);
  float* d_a = be->alloc(64);
  float* d_b = be->alloc(64);
  float* d_out = be->alloc(64);
  be->from_host(d_a, a.data(), 64);
  be->from_host(d_b, b.data(), 64);
  be->begin_graph();
  be->residual_forward(d_out, d_a, d_b, 64);
  be->to_host(out.data(), d_out, 64);  // inside the region: the recorded add runs first
  be->end_graph();
  CHECK(out[0] == 3.5f);
  CHECK(out[63] == 3.5f);
  CHECK(zt::cuda_graph_stats(*be).broken_regions == 1);
  for (float* p : {d_a, d_b, d_out}) be->release(p);
}
