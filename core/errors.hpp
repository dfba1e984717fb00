// zt::Error and the check macros: every message names the statement, file:line, rank and host.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace zt {

/// A caller or configuration mistake: the message says what to change.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

/// Sets the rank shown in every error and log line (call once MPI is up).
void set_error_context(int rank, int world_size);
/// "rank R/N on HOST" for messages; "rank ?" before set_error_context.
std::string where();
/// Host name of this process.
const std::string& hostname();
/// This process's rank as given to set_error_context (0 before).
int context_rank();

/// `file` (a __FILE__) relative to the repository root: "core/config.cpp", not the build machine's absolute path.
std::string source_path(const char* file);

/// Seconds a rank other than 0 waits before reporting the error that ends the job (report_fatal_error).
constexpr double kFatalReportGraceS = 2.0;
/// Prints "zerotrain: error: <what>" for an error that ends the job, once per job when every rank fails alike (a bad
/// flag, a bad config file): rank 0 prints at once and aborts the job; any other rank first waits
/// kFatalReportGraceS, and is killed by rank 0's abort during that wait if rank 0 failed too. A rank failing alone
/// still reports, 2 s later. No communication: a dead or hung rank cannot block the report. `print` false: only the
/// wait (a message every rank holds alike, which rank 0 prints).
void report_fatal_error(const std::string& what, bool print = true);

[[noreturn]] void throw_error(const char* file, int line, const std::string& msg);
[[noreturn]] void abort_invariant(const char* file, int line, const char* cond, const std::string& msg);

}  // namespace zt

/// Throws zt::Error with a formatted message unless cond holds (user or configuration mistakes).
#define ZT_CHECK(cond, ...)                                                       \
  do {                                                                            \
    if (!(cond)) ::zt::throw_error(__FILE__, __LINE__, fmt::format(__VA_ARGS__)); \
  } while (0)

/// Throws zt::Error unconditionally with a formatted message.
#define ZT_FAIL(...) ::zt::throw_error(__FILE__, __LINE__, fmt::format(__VA_ARGS__))

/// Aborts the process when an internal invariant is broken (a bug, not a user mistake).
#define ZT_ASSERT(cond)                                                           \
  do {                                                                            \
    if (!(cond)) ::zt::abort_invariant(__FILE__, __LINE__, #cond, std::string()); \
  } while (0)

/// Generates a library check: `bad(rc)` decides failure, `describe(rc)` explains it.
#define ZT_LIB_CHECK_GEN(lib, stmt, bad, describe)                                                                \
  do {                                                                                                            \
    auto zt_rc_ = (stmt);                                                                                         \
    if (bad(zt_rc_))                                                                                              \
      ::zt::throw_error(__FILE__, __LINE__, fmt::format("{} call failed: {}: {}", lib, #stmt, describe(zt_rc_))); \
  } while (0)
