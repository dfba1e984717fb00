#!/usr/bin/env bash
# Fails on a Catch TEST_CASE name that CTest cannot run as written: one starting with '-', which Catch reads as a flag
# when catch_discover_tests passes the name back to it ("Unrecognised token"), or, in the sources of the discovered
# binary zt_unit_tests (test/unit, test/ops), one holding ';', which CMake splits into two names that match nothing.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
bad=$(grep -rn -E 'TEST_CASE\("-' --include='*.cpp' --include='*.cu' core sharding ckpt launch cuda test bench
  grep -rn -E 'TEST_CASE\("[^"]*;' --include='*.cpp' test/unit test/ops)
n=$(grep -rh -E 'TEST_CASE\("' --include='*.cpp' --include='*.cu' core sharding ckpt launch cuda test bench | wc -l)
if [ -n "$bad" ]; then
  echo "test names CTest cannot run as written (a leading '-', or a ';' in test/unit, test/ops):"
  echo "$bad"
  exit 1
fi
echo "check_test_names: $n test case names, none starts with '-', none discovered holds ';'"
