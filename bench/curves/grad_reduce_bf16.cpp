// Issue 19's gradient-reduction experiment: `zerotrain train` on the CPU with each gradient rounded to bf16 where a
// bf16 reduction with fp32 accumulation would round it (bench/curves/README.md; never the product's CPU path).
#include <mpi.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "core/errors.hpp"
#include "core/forwarding_backend.hpp"
#include "launch/config_cli.hpp"
#include "launch/device_select.hpp"
#include "launch/model_commands.hpp"
#include "launch/session.hpp"
#include "sharding/comm_mpi.hpp"

namespace {

/// fp32 -> bf16 -> fp32, round to nearest even (what __float2bfloat16 does); NaN stays NaN.
float round_to_bf16(float x) {
  uint32_t u = 0;
  std::memcpy(&u, &x, sizeof(u));
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0) return x;
  u += 0x7fffu + ((u >> 16) & 1u);
  u &= 0xffff0000u;
  float y = 0;
  std::memcpy(&y, &u, sizeof(y));
  return y;
}

/// The CPU backend, except that `accumulate` rounds what it adds to bf16 first. The ZeRO engine calls accumulate for
/// one thing only (sharding/zero_pool.cpp, finish_reduction): adding a micro-step's reduced gradient shard into the
/// fp32 shard AdamW reads. With one rank the reduction is the identity, so what arrives there is this rank's own
/// contribution: rounding it is what sending it in bf16 and summing in fp32 would do.
class Bf16ReduceBackend final : public zt::ForwardingBackend {
 public:
  explicit Bf16ReduceBackend(std::unique_ptr<zt::Backend> inner)
      : zt::ForwardingBackend(*inner), owned_(std::move(inner)) {}
  std::string name() const override { return owned_->name() + " (gradients reduced in bf16)"; }
  void accumulate(float* x, const float* y, size_t n) override {
    rounded_.resize(n);
    std::transform(y, y + n, rounded_.begin(), round_to_bf16);
    owned_->accumulate(x, rounded_.data(), n);
  }

 private:
  std::unique_ptr<zt::Backend> owned_;
  std::vector<float> rounded_;
};

int run(int argc, char** argv) {
  CLI::App app{"zerotrain train on the CPU with gradients reduced in fp32 or (rounded as) bf16: issue 19's experiment"};
  // `train` as zerotrain spells it, so a script runs either binary with the same arguments.
  CLI::App* train = app.add_subcommand("train", "zerotrain train's flags, and --grad_reduce");
  app.require_subcommand(1);
  zt::TrainFlags flags(*train);
  std::string grad_reduce = "bf16";
  train->add_option("--grad_reduce", grad_reduce, "Precision of each rank's gradient contribution to the fp32 sum")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  zt::RunOptions opts;
  train->add_flag("--quiet", opts.quiet, "No progress lines");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  const zt::TrainSettings settings = flags.settings();
  int world_size = 1;
  ZT_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_size));
  // With several ranks the hook would round the summed shard, not each rank's part of it.
  ZT_CHECK(world_size == 1, "grad_reduce_bf16 runs on one rank only (it was started on {})", world_size);
  ZT_CHECK(settings.train.device != "cuda", "grad_reduce_bf16 wraps the CPU backend: drop --device cuda");
  zt::MpiComm control(MPI_COMM_WORLD);
  auto make_device = [&](zt::TrainConfig& t) {
    zt::RunDevice device = zt::make_run_device(t, zt::resolve_threads(t.threads));
    if (grad_reduce == "bf16") {
      device.backend = std::make_unique<Bf16ReduceBackend>(std::move(device.backend));
      device.description += " | gradients reduced in bf16 (test harness)";
    }
    if (!opts.quiet) std::printf("device %s\n", device.description.c_str());
    return device;
  };
  zt::run_train(settings, control, make_device, opts);
  return 0;
}

}  // namespace

// launch/main.cpp's definition is not linked here; one rank, so every usable CPU.
int zt::resolve_threads(int requested) {
  return requested > 0 ? requested : std::max(1, int(std::thread::hardware_concurrency()));
}

int main(int argc, char** argv) {
  int provided = 0;
  if (MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) return 2;
  int rc = 0;
  try {
    rc = run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "grad_reduce_bf16: error: %s\n", e.what());
    rc = 1;
  }
  MPI_Finalize();
  return rc;
}
