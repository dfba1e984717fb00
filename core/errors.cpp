// Error context (rank, host) and the throw / abort helpers behind the check macros.
#include "core/errors.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace zt {
namespace {
int g_rank = -1;
int g_world = -1;
}  // namespace

const std::string& hostname() {
  static const std::string name = [] {
    char buf[256] = {0};
    if (gethostname(buf, sizeof(buf) - 1) != 0) return std::string("unknown-host");
    return std::string(buf);
  }();
  return name;
}

void set_error_context(int rank, int world_size) {
  g_rank = rank;
  g_world = world_size;
}

int context_rank() { return g_rank < 0 ? 0 : g_rank; }

std::string where() {
  if (g_rank < 0) return fmt::format("rank ? on {}", hostname());
  return fmt::format("rank {}/{} on {}", g_rank, g_world, hostname());
}

void throw_error(const char* file, int line, const std::string& msg) {
  throw Error(fmt::format("{} [{} at {}:{}]", msg, where(), file, line));
}

void abort_invariant(const char* file, int line, const char* cond, const std::string& msg) {
  std::fprintf(stderr, "zerotrain: internal error: assertion `%s` failed %s [%s at %s:%d]\n", cond, msg.c_str(),
               where().c_str(), file, line);
  std::fflush(stderr);
  std::abort();
}

}  // namespace zt
