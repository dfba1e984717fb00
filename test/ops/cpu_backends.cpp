// The CPU backends the op tests run in the unit-test binary: the reference backend itself, and the profiling
// decorator over it (core/profiling_backend.hpp), which must pass every argument through unchanged. Both run the
// reference functions, so every op must give the reference's bits (the default tolerances).
#include <memory>

#include "core/backend.hpp"
#include "core/forwarding_backend.hpp"
#include "core/profiling_backend.hpp"
#include "test/ops/backends_under_test.hpp"

namespace {

// A ProfilingBackend that owns the CPU backend it profiles (the decorator itself only holds a reference). The
// bases are built in order: the CPU backend, the profiler over it, then the forwarding to the profiler.
struct CpuMember {
  std::unique_ptr<zt::Backend> cpu = zt::make_cpu_backend(0);
};
struct ProfilerMember : CpuMember {
  zt::ProfilingBackend profiler{*cpu};
};
class ProfiledCpuBackend final : private ProfilerMember, public zt::ForwardingBackend {
 public:
  ProfiledCpuBackend() : ForwardingBackend(profiler) {}
};

const zt::test::RegisterBackend cpu_backend{{"cpu", [] { return zt::make_cpu_backend(0); }, {}}};
const zt::test::RegisterBackend profiled_cpu_backend{
    {"profiling(cpu)", []() -> std::unique_ptr<zt::Backend> { return std::make_unique<ProfiledCpuBackend>(); }, {}}};

}  // namespace
