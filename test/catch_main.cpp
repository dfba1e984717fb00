// main() of the test binaries that need nothing before their cases run (the unit tests, the simulator's own tests).
#include "test/catch_session.hpp"

int main(int argc, char** argv) { return zt::test::run_catch(argc, argv); }
