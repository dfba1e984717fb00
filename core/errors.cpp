// Error context (rank, host) and the throw / abort helpers behind the check macros.
#include "core/errors.hpp"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

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

std::string source_path(const char* file) {
  // __FILE__ holds the path the build machine compiled; the repository root is where this file's own path ends.
  static const std::string root = [] {
    const std::string self = __FILE__;
    const size_t at = self.rfind("core/errors.cpp");
    return at == std::string::npos ? std::string() : self.substr(0, at);
  }();
  const std::string path = file;
  return !root.empty() && path.compare(0, root.size(), root) == 0 ? path.substr(root.size()) : path;
}

void throw_error(const char* file, int line, const std::string& msg) {
  throw Error(fmt::format("{} [{} at {}:{}]", msg, where(), source_path(file), line));
}

void report_fatal_error(const std::string& what, bool print) {
  if (g_rank > 0) std::this_thread::sleep_for(std::chrono::duration<double>(kFatalReportGraceS));
  if (print) std::fprintf(stderr, "zerotrain: error: %s\n", what.c_str());
  std::fflush(stderr);
}

void abort_invariant(const char* file, int line, const char* cond, const std::string& msg) {
  std::fprintf(stderr, "zerotrain: internal error: assertion `%s` failed %s [%s at %s:%d]\n", cond, msg.c_str(),
               where().c_str(), source_path(file).c_str(), line);
  std::fflush(stderr);
  std::abort();
}

}  // namespace zt
