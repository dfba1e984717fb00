// The entry point into Catch2's implementation (test/catch_session.cpp, library zt_catch): test binaries link it
// instead of compiling Catch2's implementation themselves.
#pragma once

namespace zt::test {

/// Runs the registered test cases with the command line's options; compact_reporter for ranks other than 0.
int run_catch(int argc, char** argv, bool compact_reporter = false);

}  // namespace zt::test
