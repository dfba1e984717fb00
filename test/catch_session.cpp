// Catch2's implementation, compiled once per build for every test binary (it is most of a test binary's compile
// time: ~20 s at -O2, against ~5 s for a file of tests), and the runner the tests' main() functions call.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "test/catch_session.hpp"

namespace zt::test {

int run_catch(int argc, char** argv, bool compact_reporter) {
  Catch::Session session;
  if (compact_reporter) session.configData().reporterName = "compact";
  return session.run(argc, argv);
}

}  // namespace zt::test
