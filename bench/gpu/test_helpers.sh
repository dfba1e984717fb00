# Sourced by the GPU check's own tests (check_test.sh, standin_test.sh): one assertion and one report reader.
failed=0
check() {  # WHAT CONDITION...: runs CONDITION, prints ok/FAIL with WHAT; a failure sets failed=1
  local what=$1
  shift
  if "$@"; then echo "ok: $what"; else echo "FAIL: $what"; failed=1; fi
}
field() { sed -n "s/^$2: //p" "$1/report.txt"; }  # RESULT_DIR FIELD: a field of standin.sh's report.txt
