// ZeRO engine under mpirun: which stages agree bit for bit, recomputation and parts change no bit, the single-rank
// run within tolerance, parameter copies stay current, checkpoints written in parts load anywhere.
#include <mpi.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <vector>

#include "core/backend.hpp"
#include "core/forwarding_backend.hpp"
#include "core/model.hpp"
#include "launch/trainer.hpp"
#include "sharding/comm_mpi.hpp"
#include "sharding/zero_engine.hpp"

using namespace zt;

namespace {

ModelConfig small_model() {
  ModelConfig m;
  m.n_layer = 2;
  m.n_head = 2;
  m.d_model = 32;
  m.vocab = 200;  // not a multiple of 128: exercises the padded vocabulary
  m.seq_len = 16;
  return m;
}

// Units of small_model() cut into parts by kSmallBucketMb: each block into [ln_1 .. ln_2], [c_fc], [mlp.c_proj]
// (4352, 4224, 4128 elements), the embedding into [wte], [wpe].
constexpr double kSmallBucketMb = 0.02;

TrainConfig base_train(int stage, int steps, double bucket_mb = 32) {
  TrainConfig t;
  t.micro_batch_size = 1;
  t.global_batch_size = 12;  // divisible by 1, 2, 3 and 4 ranks (accumulation 12, 6, 4, 3)
  t.max_steps = steps;
  t.zero_bucket_mb = bucket_mb;
  t.learning_rate = 3e-3;
  t.warmup_steps = 3;
  t.zero_stage = stage;
  t.eval_interval = 0;
  t.output_dir = "/tmp/zt_test_zero_out";
  t.seed = 7;
  return t;
}

// The CPU backend keeping parameter copies as the CUDA backend does in bf16 mode, but exact (fp32, host memory):
// matmuls read the copy of a kept weight, AdamW rewrites the copy of what it updates. A copy the engine failed to
// refresh is stale, and the run's losses and parameters then differ from the plain backend's.
class CopyCheckingBackend final : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  long reads_from_copy = 0, reads_from_params = 0;  // matmul weight reads

  size_t param_copy_bytes() const override { return sizeof(float); }
  void keep_param_copy(const float* params, size_t n) override {
    REQUIRE(copies_.count(params) == 0);
    copies_[params].assign(params, params + n);
  }
  void refresh_param_copy(const float* params, size_t n) override {
    float* copy = copy_of(params, n);
    REQUIRE(copy != nullptr);
    std::copy(params, params + n, copy);
  }
  void release(void* p) override {
    copies_.erase(static_cast<const float*>(p));  // the engine keeps whole allocations
    inner_.release(p);
  }
  void adamw_update(float* param, const float* grad, float* m, float* v, size_t n, float lr, float beta1, float beta2,
                    float eps, float weight_decay, float grad_scale, int64_t step) override {
    inner_.adamw_update(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, grad_scale, step);
    if (float* copy = copy_of(param, n)) std::copy(param, param + n, copy);
  }
  void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int C, int OC,
                      bool weight_transposed) override {
    inner_.matmul_forward(out, inp, weight_read(weight, size_t(C) * OC), bias, N, C, OC, weight_transposed);
  }
  void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                       const float* weight, int N, int C, int OC, bool weight_transposed) override {
    // The weight is read for dinp only (the LM head's weight gradient runs alone, with no weight).
    const float* w = dinp != nullptr ? weight_read(weight, size_t(C) * OC) : weight;
    inner_.matmul_backward(dinp, dweight, dbias, dout, inp, w, N, C, OC, weight_transposed);
  }

 private:
  float* copy_of(const float* p, size_t n) {
    auto it = copies_.upper_bound(p);
    if (it == copies_.begin()) return nullptr;
    --it;
    const size_t offset = size_t(p - it->first);
    return offset + n <= it->second.size() ? it->second.data() + offset : nullptr;
  }
  const float* weight_read(const float* weight, size_t n) {
    const float* copy = copy_of(weight, n);
    (copy != nullptr ? reads_from_copy : reads_from_params) += 1;
    return copy != nullptr ? copy : weight;
  }
  std::map<const float*, std::vector<float>> copies_;
};

struct WeightReads {
  long from_copy = 0, from_params = 0;
};

// Runs `t`; with `reads`, through a CopyCheckingBackend, whose matmul weight reads are counted there.
// `shared_dir`: every rank uses t.output_dir itself (checkpoints), else each rank its own directory (so ranks of a
// MPI_COMM_SELF run do not collide).
TrainSummary run(const TrainConfig& t, MPI_Comm mpi_comm, WeightReads* reads = nullptr, bool shared_dir = false) {
  auto cpu = make_cpu_backend(1);
  std::unique_ptr<CopyCheckingBackend> copying;
  Backend* backend = cpu.get();
  if (reads != nullptr) {
    copying = std::make_unique<CopyCheckingBackend>(*cpu);
    backend = copying.get();
  }
  MpiComm comm(mpi_comm);
  RunOptions opts;
  opts.quiet = true;
  opts.collect_params = true;
  TrainConfig tt = t;
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (!shared_dir) tt.output_dir = fmt::format("{}-{}", t.output_dir, rank);
  TrainSummary summary = train(small_model(), tt, {comm, comm}, *backend, opts);
  if (reads != nullptr) {
    reads->from_copy += copying->reads_from_copy;
    reads->from_params += copying->reads_from_params;
  }
  return summary;
}

// Compares two runs' losses and final parameters bit for bit.
void require_same_bits(const TrainSummary& a, const TrainSummary& b) {
  REQUIRE(a.losses.size() == b.losses.size());
  for (size_t s = 0; s < a.losses.size(); ++s) REQUIRE(a.losses[s] == b.losses[s]);
  REQUIRE(a.final_params == b.final_params);
}

// Largest |a - b| over the final parameters, and over the losses relative to b's.
std::pair<double, double> max_diffs(const TrainSummary& a, const TrainSummary& b) {
  REQUIRE(a.final_params.size() == b.final_params.size());
  REQUIRE(a.losses.size() == b.losses.size());
  double param = 0, loss = 0;
  for (size_t i = 0; i < a.final_params.size(); ++i)
    param = std::max(param, double(std::abs(a.final_params[i] - b.final_params[i])));
  for (size_t s = 0; s < a.losses.size(); ++s) loss = std::max(loss, std::abs(a.losses[s] - b.losses[s]) / b.losses[s]);
  return {param, loss};
}

// Runs on other summation orders (more ranks, or stages that sum micro-steps before ranks) differ from each other
// only by fp32 rounding, ~1e-7 relative per sum; Adam's normalisation amplifies that where v is tiny. Measured over
// 20 steps with 1-4 ranks: loss rel diff <= 6e-9, param abs diff <= 3.3e-6 (params of scale 0.02-1).
// Tolerances: 1e-6 relative on the loss, 5e-5 absolute on parameters (about 15x the measured worst).
constexpr double kLossRtol = 1e-6, kParamAtol = 5e-5;

}  // namespace

TEST_CASE("stages 0 = 1 and 2 = 3 bit for bit, all four with one micro-step; close to one rank", "[zero]") {
  int world = 1, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const int steps = 20;
  // 12 / world micro-steps per step: stages 0-1 sum them locally before the ranks, 2-3 after (docs/sharding.md).
  std::vector<TrainSummary> by_stage;
  for (int stage = 0; stage <= 3; ++stage) by_stage.push_back(run(base_train(stage, steps), MPI_COMM_WORLD));
  REQUIRE(by_stage[0].losses.size() == size_t(steps));
  require_same_bits(by_stage[1], by_stage[0]);
  require_same_bits(by_stage[3], by_stage[2]);
  const auto [stage_param, stage_loss] = max_diffs(by_stage[2], by_stage[0]);
  CHECK(stage_loss <= kLossRtol);
  CHECK(stage_param <= kParamAtol);
  // One micro-step per rank and step: every order is ranks-then-nothing, and all four stages agree.
  std::vector<TrainSummary> one_micro;
  for (int stage = 0; stage <= 3; ++stage) {
    TrainConfig t = base_train(stage, 6);
    t.global_batch_size = world;
    one_micro.push_back(run(t, MPI_COMM_WORLD));
  }
  for (int stage = 1; stage <= 3; ++stage) {
    INFO("one micro-step, stage " << stage << " vs 0");
    require_same_bits(one_micro[size_t(stage)], one_micro[0]);
  }

  const TrainSummary ref = run(base_train(0, steps), MPI_COMM_SELF);
  REQUIRE(ref.losses.back() < ref.losses.front() - 0.1);  // it trained
  for (const TrainSummary* s : {&by_stage[0], &by_stage[2]}) {
    const auto [param, loss] = max_diffs(*s, ref);
    if (rank == 0)
      WARN("world " << world << ": max |param(N) - param(1)| = " << param << ", max loss rel diff = " << loss
                    << (s == &by_stage[0] ? " (stage 0)" : " (stage 2)") << "; stage 2 vs 0: " << stage_param << ", "
                    << stage_loss);
    CHECK(loss <= kLossRtol);
    CHECK(param <= kParamAtol);
  }
}

TEST_CASE("recomputation and parts change no bit, at every stage", "[zero][recompute]") {
  int world = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  const int steps = 3;
  for (int stage = 0; stage <= 3; ++stage) {
    INFO("world " << world << " stage " << stage);
    const TrainSummary none = run(base_train(stage, steps), MPI_COMM_WORLD);
    for (const char* mode : {"attention", "block"}) {
      INFO("--recompute " << mode);
      TrainConfig t = base_train(stage, steps);
      t.recompute = mode;
      require_same_bits(run(t, MPI_COMM_WORLD), none);
    }
    // Parts: every block in three, the embedding in two; recomputation reads a block's parts twice at stage 3.
    const TrainSummary parted = run(base_train(stage, steps, kSmallBucketMb), MPI_COMM_WORLD);
    TrainConfig t = base_train(stage, steps, kSmallBucketMb);
    t.recompute = "block";
    require_same_bits(run(t, MPI_COMM_WORLD), parted);
    // Parts regroup the squared norm's per-rank partials (the last bits of grad_norm, in double); rounded to the
    // fp32 clip coefficient that almost never shows, but it is not promised: within the tolerance of another order.
    const auto [param, loss] = max_diffs(parted, none);
    CHECK(loss <= kLossRtol);
    CHECK(param <= kParamAtol);
  }
}

TEST_CASE("parameter copies (as bf16 CUDA keeps them) stay current at every stage, resumed or not", "[zero][copies]") {
  int world = 1, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const int steps = 6;
  for (int stage = 0; stage <= 3; ++stage) {
    // Stage 3 with parts: the copy of the pool is refreshed where each part lands.
    const double bucket = stage == 3 ? kSmallBucketMb : 32;
    INFO("world " << world << " stage " << stage << " bucket " << bucket << " MiB");
    const TrainSummary plain = run(base_train(stage, steps, bucket), MPI_COMM_WORLD);
    WeightReads reads;
    const TrainSummary copied = run(base_train(stage, steps, bucket), MPI_COMM_WORLD, &reads);
    // Every weight the matmuls read came from a kept copy, and every copy was current: the same bits.
    CHECK(reads.from_params == 0);
    CHECK(reads.from_copy > 0);
    require_same_bits(copied, plain);

    // Stopped after 3 steps with a checkpoint, resumed (the engine refreshes the copies after the load): the
    // uninterrupted run's bits.
    TrainConfig first = base_train(stage, steps, bucket);
    first.output_dir = fmt::format("/tmp/zt_test_zero_copies_{}_{}", world, stage);
    if (rank == 0) std::filesystem::remove_all(first.output_dir);
    MPI_Barrier(MPI_COMM_WORLD);
    first.save_interval = 3;
    first.exit_after_steps = 3;
    WeightReads resumed_reads;
    (void)run(first, MPI_COMM_WORLD, &resumed_reads, true);
    TrainConfig second = first;
    second.exit_after_steps = 0;
    second.resume_from_checkpoint = "latest";
    const TrainSummary resumed = run(second, MPI_COMM_WORLD, &resumed_reads, true);
    CHECK(resumed_reads.from_params == 0);
    REQUIRE(resumed.losses.size() == 3);
    for (int s = 0; s < 3; ++s) REQUIRE(resumed.losses[size_t(s)] == plain.losses[size_t(3 + s)]);
    REQUIRE(resumed.final_params == plain.final_params);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) std::filesystem::remove_all(first.output_dir);
  }
}

TEST_CASE("a trainer refuses control and data communicators over different ranks", "[trainer]") {
  int world = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if (world == 1) return;  // MPI_COMM_SELF is the world: nothing differs
  MpiComm control(MPI_COMM_WORLD), data(MPI_COMM_SELF);
  auto backend = make_cpu_backend(1);
  RunOptions opts;
  opts.quiet = true;
  ResumePlan fresh;
  fresh.train = base_train(0, 1);
  // Every rank throws before any collective, so none waits for another.
  REQUIRE_THROWS_WITH(Trainer(small_model(), fresh, {control, data}, *backend, opts),
                      Catch::Contains("must hold the same ranks"));
}

TEST_CASE("a checkpoint written in parts loads bitwise at any stage and bucket, and resumes bitwise", "[zero][ckpt]") {
  int world = 1, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  // Written at stage 3 in parts after 3 steps; loaded with no step left to train (the state as loaded), by whole
  // units at stage 1 and in parts at stage 0.
  TrainConfig src = base_train(3, 3, kSmallBucketMb);
  src.output_dir = fmt::format("/tmp/zt_test_zero_parts_{}", world);
  if (rank == 0) std::filesystem::remove_all(src.output_dir);
  MPI_Barrier(MPI_COMM_WORLD);
  src.save_interval = 3;
  const TrainSummary saved = run(src, MPI_COMM_WORLD, nullptr, true);
  for (auto [stage, bucket] : {std::pair<int, double>{1, 32}, {0, kSmallBucketMb}}) {
    INFO("world " << world << " loaded at stage " << stage << ", bucket " << bucket << " MiB");
    TrainConfig load = src;
    load.zero_stage = stage;
    load.zero_bucket_mb = bucket;
    load.save_interval = 0;
    load.resume_from_checkpoint = src.output_dir + "/checkpoint-3";
    const TrainSummary loaded = run(load, MPI_COMM_WORLD, nullptr, true);
    REQUIRE(loaded.losses.empty());
    REQUIRE(loaded.final_params == saved.final_params);
  }
  // Resumed in the same configuration for 3 more steps: the uninterrupted 6 steps' bits.
  TrainConfig cont = src;
  cont.max_steps = 6;
  cont.save_interval = 0;
  cont.resume_from_checkpoint = src.output_dir + "/checkpoint-3";
  const TrainSummary resumed = run(cont, MPI_COMM_WORLD, nullptr, true);
  TrainConfig straight = base_train(3, 6, kSmallBucketMb);
  const TrainSummary whole_run = run(straight, MPI_COMM_WORLD);
  REQUIRE(resumed.losses.size() == 3);
  for (int s = 0; s < 3; ++s) REQUIRE(resumed.losses[size_t(s)] == whole_run.losses[size_t(3 + s)]);
  REQUIRE(resumed.final_params == whole_run.final_params);
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) std::filesystem::remove_all(src.output_dir);
}
