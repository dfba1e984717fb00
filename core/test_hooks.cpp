// Reads the ZT_TEST_* variables of core/test_hooks.hpp; a malformed value is refused, naming the variable.
#include "core/test_hooks.hpp"

#include <csignal>
#include <cstdio>
#include <cstdlib>

#include "core/errors.hpp"

namespace zt::test_hooks {
namespace {

std::optional<long long> integer(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  char* end = nullptr;
  const long long x = std::strtoll(v, &end, 10);
  ZT_CHECK(*end == '\0', "test hook {}={}: expected an integer", name, v);
  return x;
}

}  // namespace

const std::string& kill_at() {
  static const std::string spec = [] {
    const char* v = std::getenv("ZT_TEST_KILL_AT");
    return std::string(v != nullptr ? v : "");
  }();
  return spec;
}

void kill_point(const char* phase, long index, int rank) {
  const std::string& spec = kill_at();
  if (spec.empty()) return;
  const std::string here = fmt::format("{}:{}:{}", phase, index, rank);
  const bool stop = spec == here + ":stop";
  if (spec != here && !stop) return;
  std::fprintf(stderr, "zerotrain: test: %s rank %d at %s\n", stop ? "stopping" : "killing", rank, spec.c_str());
  std::fflush(stderr);
  std::raise(stop ? SIGSTOP : SIGKILL);
}

std::optional<uint64_t> free_bytes_override() {
  const auto v = integer("ZT_TEST_FREE_BYTES_OVERRIDE");
  return v ? std::optional<uint64_t>(uint64_t(*v)) : std::nullopt;
}

int async_copy_delay_ms() { return int(integer("ZT_TEST_ASYNC_COPY_DELAY_MS").value_or(0)); }

int save_delay_ms() { return int(integer("ZT_TEST_SAVE_DELAY_MS").value_or(0)); }

int fail_rank() { return int(integer("ZT_TEST_FAIL_RANK").value_or(-1)); }
bool freeze_compute_grads() { return integer("ZT_TEST_FREEZE_COMPUTE_GRADS").value_or(0) != 0; }
bool blocking_params_gather() { return integer("ZT_TEST_BLOCKING_PARAMS_GATHER").value_or(0) != 0; }

int fail_step() { return int(integer("ZT_TEST_FAIL_STEP").value_or(0)); }

}  // namespace zt::test_hooks
