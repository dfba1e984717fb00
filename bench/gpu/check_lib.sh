# shellcheck shell=bash
# Helpers of the GPU check, sourced by run_check.sh: the clock and the per-step watchdog, the summary table (printed
# after every step and kept in the output folder), the logs packed into one archive there while the check runs,
# leftover processes of a step, and the faults that the check's own test injects. README.md beside this says more.
#
# The caller sets: zt_outdir (the output folder), zt_scratch (everything else), zt_scale (ZT_CHECK_TIME_SCALE),
# zt_deadline_ms (when the last step must have ended), and calls zt_init first.

# ---- time, in milliseconds since the check started ----
zt_clock_ms() {
  local t=${EPOCHREALTIME:-}
  if [[ -n $t ]]; then
    t=${t//[.,]/}  # seconds and microseconds, whatever the locale's decimal point
    echo $((10#$t / 1000))
  else
    echo $(($(date +%s%N) / 1000000))
  fi
}
zt_elapsed_ms() { echo $(($(zt_clock_ms) - zt_t0_ms)); }
zt_ms() { awk -v s="$1" -v k="$zt_scale" 'BEGIN { printf "%d", s * k * 1000 }'; }  # scaled seconds -> ms
zt_secs() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }                      # ms -> "S.mmm" for timeout
zt_whole_secs() { echo $((($1 + 500) / 1000)); }

zt_init() {
  zt_t0_ms=$(zt_clock_ms)
  zt_logs=$zt_scratch/logs
  mkdir -p "$zt_logs" "$zt_scratch/work"
  zt_failed=0
  zt_state="starting"
  zt_run_id=$$
  zt_step_pid="" zt_step_key="" zt_packer_pid=""
  zt_order=()
  declare -gA zt_name=() zt_group=() zt_result=() zt_detail=() zt_took=() zt_skip=()
  zt_linebuf=()
  # Test binaries write through C stdio: line-buffered, a step killed at its limit still leaves its log.
  command -v stdbuf >/dev/null 2>&1 && zt_linebuf=(stdbuf -oL -eL)
}

zt_say() { echo "$*" | tee -a "$zt_logs/console.log"; }

# ---- the summary: one row per step, registered in order before the first step runs ----
# zt_row KEY GROUP NAME: GROUP is what ZT_CHECK_ONLY selects (the key selects it too).
zt_row() {
  zt_order+=("$1")
  zt_group[$1]=$2 zt_name[$1]=$3 zt_result[$1]="pending" zt_detail[$1]="" zt_took[$1]=""
}
zt_selected() {  # group "always": whatever ZT_CHECK_ONLY says
  [[ -z ${ZT_CHECK_ONLY:-} || ${zt_group[$1]} == always || " $ZT_CHECK_ONLY " == *" $1 "* ||
    " $ZT_CHECK_ONLY " == *" ${zt_group[$1]} "* ]]
}
zt_set() { zt_result[$1]=$2; zt_detail[$1]=${3:-}; [[ -n ${4:-} ]] && zt_took[$1]=$4; return 0; }

zt_table_text() {
  printf '%-56s | %-12s | %5s | %s\n' "check" "result" "s" "detail"
  printf '%s-+-%s-+-%s-+-%s\n' "$(printf '%.0s-' {1..56})" "$(printf '%.0s-' {1..12})" "-----" "------"
  local k
  for k in "${zt_order[@]}"; do
    printf '%-56s | %-12s | %5s | %s\n' "${zt_name[$k]}" "${zt_result[$k]}" "${zt_took[$k]}" "${zt_detail[$k]}"
  done
}
zt_heading() {
  echo "GPU check: ${zt_card:-no device}, $(date -u +%Y-%m-%d), $(zt_whole_secs "$(zt_elapsed_ms)")s:" \
    "$zt_state${zt_rehearsal:+ (${zt_rehearsal})}"
}
# summary.md and summary.txt in the output folder, each replaced whole (a kill never leaves half a file there).
zt_write_summary() {
  local k tmp=$zt_outdir/.summary.partial
  {
    zt_heading
    echo
    echo "| check | result | s | detail |"
    echo "| --- | --- | --- | --- |"
    for k in "${zt_order[@]}"; do
      echo "| ${zt_name[$k]} | ${zt_result[$k]} | ${zt_took[$k]} | ${zt_detail[$k]//|/\\|} |"
    done
  } >"$tmp" && mv -f "$tmp" "$zt_outdir/summary.md"
  { zt_heading && zt_table_text; } >"$tmp" && mv -f "$tmp" "$zt_outdir/summary.txt"
}
# After every step: the table on stdout (a command killed at its limit still has it in its output's tail).
zt_print_summary() {
  zt_write_summary
  { echo && echo "== $(zt_heading)" && zt_table_text; } | tee -a "$zt_logs/console.log"
}

# ---- the logs archive: the scratch folder's logs/ as gpucheck-logs.tar.gz in the output folder ----
# A log over zt_log_max_bytes keeps its head and tail; the archive must stay far under the 16 MiB a file may have.
zt_log_max_bytes=$((4 * 1024 * 1024))
zt_pack_logs() {
  local stage=$zt_scratch/pack.$BASHPID max=$zt_log_max_bytes f rel size
  while :; do
    rm -rf "$stage" && mkdir -p "$stage/gpucheck-logs" || return 1
    while IFS= read -r -d '' f; do
      rel=${f#"$zt_logs"/}
      mkdir -p "$stage/gpucheck-logs/$(dirname "$rel")"
      size=$(stat -c %s "$f" 2>/dev/null || echo 0)
      if ((size > max)); then
        { head -c $((max / 4)) "$f" && printf '\n[... %s bytes in all; the middle is left out ...]\n' "$size" &&
            tail -c $((max * 3 / 4)) "$f"; } >"$stage/gpucheck-logs/$rel"
      else
        cp "$f" "$stage/gpucheck-logs/$rel" 2>/dev/null
      fi
    done < <(find "$zt_logs" -type f -print0)
    tar -czf "$stage.tar.gz" -C "$stage" gpucheck-logs 2>/dev/null
    size=$(stat -c %s "$stage.tar.gz" 2>/dev/null || echo 0)
    ((size > 12 * 1024 * 1024 && max > 65536)) || break
    max=$((max / 8))
  done
  cp "$stage.tar.gz" "$zt_outdir/.gpucheck-logs.partial" && mv -f "$zt_outdir/.gpucheck-logs.partial" \
    "$zt_outdir/gpucheck-logs.tar.gz"
  rm -rf "$stage" "$stage.tar.gz"
}
# Packs again every 30 s (scaled) while steps run: the machine's own kill at its limit leaves logs at most that old.
zt_packer_start() {
  local every_ms
  every_ms=$(zt_ms 30)
  rm -f "$zt_scratch/packer.stop"
  (
    trap - EXIT TERM INT
    while :; do
      local waited=0
      while ((waited < every_ms)); do
        [[ -e $zt_scratch/packer.stop ]] && exit 0
        sleep 0.2
        waited=$((waited + 200))
      done
      zt_pack_logs
    done
  ) &
  zt_packer_pid=$!
}
zt_packer_stop() {
  [[ -n ${zt_packer_pid:-} ]] || return 0
  touch "$zt_scratch/packer.stop"
  wait "$zt_packer_pid" 2>/dev/null
  zt_packer_pid=""
}

# A signal to the check (the machine's kill, Ctrl-C): the running step and what it started go, the summary says
# where it stopped, the logs are packed; then exit 128 + the signal's number.
zt_on_signal() {
  zt_state="stopped by SIG$1 after $(zt_whole_secs "$(zt_elapsed_ms)")s${zt_step_pid:+, during a step}"
  if [[ -n $zt_step_pid ]]; then
    kill -KILL -- "-$zt_step_pid" "$zt_step_pid" 2>/dev/null
    zt_set "$zt_step_key" "stopped" "the check was stopped by SIG$1 during this step"
  fi
  zt_kill_tagged "$zt_run_id\\..*" >/dev/null
  zt_packer_stop
  zt_print_summary
  zt_pack_logs
  exit $((128 + $(kill -l "$1")))
}

# ---- processes a step leaves behind: found by the tag in their environment, killed by pid ----
# Every step runs with ZT_CHECK_TAG=<pid of this check>.<step>; MPI ranks inherit it even when their launcher is
# killed first. zt_kill_tagged REGEX kills the processes whose tag matches and prints their pids.
zt_tagged_pids() {
  grep -lzxE "ZT_CHECK_TAG=$1" /proc/[0-9]*/environ 2>/dev/null | awk -F/ -v me=$$ '$3 != me { print $3 }'
}
zt_kill_tagged() {
  local pids
  pids=$(zt_tagged_pids "$1" | paste -sd' ')
  [[ -n $pids ]] || return 0
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null
  for _ in 1 2 3 4 5 6 7 8 9 10; do  # the GPU memory is free once they are gone
    [[ -z $(zt_tagged_pids "$1") ]] && break
    sleep 0.2
  done
  echo "$pids"
}
# Leftovers of an earlier check whose own process is gone (a command killed at the machine's limit, say).
zt_kill_stale() {
  local tag owner stale=()
  while read -r tag; do
    owner=${tag%%.*}
    [[ $owner == "$zt_run_id" ]] || kill -0 "$owner" 2>/dev/null || stale+=("$owner")
  done < <(grep -hzoE "^ZT_CHECK_TAG=[0-9]+\.[A-Za-z0-9_]+" /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' |
             sed 's/^ZT_CHECK_TAG=//' | sort -u)
  local owner_pid pids
  for owner_pid in $(printf '%s\n' "${stale[@]}" | sort -u); do
    pids=$(zt_kill_tagged "$owner_pid\\..*")
    [[ -n $pids ]] && zt_say "killed processes left by an earlier check (pid $owner_pid): $pids"
  done
  return 0
}

# ---- faults for the check's own test (bench/gpu/check_test.sh): ZT_CHECK_FAULT="STEP:KIND ...", KIND one of
# hang (deaf to SIGTERM), crash (SIGSEGV), orphan (leaves a process in its own session), fail (exit 1) ----
zt_fault_of() {
  local f
  for f in ${ZT_CHECK_FAULT:-}; do [[ ${f%%:*} == "$1" ]] && { echo "${f#*:}"; return; }; done
}
zt_fault_script() {
  case $1 in
    hang) echo 'trap "" TERM; echo "injected fault: hanging, deaf to SIGTERM"; while :; do sleep 1; done' ;;
    crash) echo 'echo "injected fault: crashing"; kill -SEGV $$' ;;
    orphan) echo 'echo "injected fault: a rank left behind"; setsid sleep 100000 </dev/null >/dev/null 2>&1 &
                  sleep 100000' ;;
    fail) echo 'echo "FAILED: injected fault"; exit 1' ;;
    *) echo "echo 'run_check.sh: unknown fault $1 in ZT_CHECK_FAULT'; exit 2" ;;
  esac
}

# ---- one step ----
# zt_run_step KEY CAP_S LOG CMD...: runs CMD with its output in logs/LOG, killed (TERM, then KILL 10 s later) at the
# smaller of CAP_S and what is left before the deadline; then kills what it left behind. Sets step_rc (125: not
# started, the budget is spent; 126: not selected; 124/137: killed at its limit), step_ms, step_cut (1 when the
# limit was the budget's, not the step's own cap) and step_log.
zt_run_step() {
  local key=$1 cap_ms limit_ms left_ms kill_ms fault started
  cap_ms=$(zt_ms "$2")
  step_log=$zt_logs/$3
  shift 3
  step_rc=0 step_ms=0 step_cut=0 step_leftover=""
  if ! zt_selected "$key"; then
    echo "-- ${zt_name[$key]}: not selected" >"$step_log"
    step_rc=126
    return
  fi
  if [[ -n ${zt_skip[$key]:-} ]]; then
    echo "-- ${zt_name[$key]}: not run: ${zt_skip[$key]}" >"$step_log"
    step_rc=125
    return
  fi
  left_ms=$((zt_deadline_ms - $(zt_elapsed_ms)))
  limit_ms=$((cap_ms < left_ms ? cap_ms : left_ms))
  ((limit_ms < cap_ms)) && step_cut=1
  if ((limit_ms < $(zt_ms 15))); then
    echo "-- ${zt_name[$key]}: not run: the time budget is spent" >"$step_log"
    step_rc=125
    return
  fi
  fault=$(zt_fault_of "$key")
  [[ -n $fault ]] && set -- bash -c "$(zt_fault_script "$fault")"
  kill_ms=$(zt_ms 10)
  zt_state="running ${zt_name[$key]} (limit $(zt_whole_secs "$limit_ms")s)"
  zt_set "$key" "running" ""
  zt_write_summary
  zt_say "-- [+$(zt_whole_secs "$(zt_elapsed_ms)")s] ${zt_name[$key]} (limit $(zt_whole_secs "$limit_ms")s)" \
    "-> ${step_log#"$zt_scratch"/}"
  {
    [[ -n $fault ]] && echo "run_check.sh: injected fault '$fault' (ZT_CHECK_FAULT)"
    echo "\$ $*"
  } >"$step_log"
  started=$(zt_clock_ms)
  # In the background and waited for: a signal to this script is handled at once, not when the step ends.
  ZT_CHECK_TAG=$zt_run_id.$key timeout -k "$(zt_secs "$kill_ms")" "$(zt_secs "$limit_ms")" \
    "${zt_linebuf[@]}" "$@" >>"$step_log" 2>&1 </dev/null &
  zt_step_pid=$! zt_step_key=$key
  wait "$zt_step_pid"
  step_rc=$?
  zt_step_pid=""
  step_ms=$(($(zt_clock_ms) - started))
  # Timed out only if it ran to its limit: 137 is also what a process killed by the kernel's OOM killer returns.
  if [[ $step_rc == 124 || $step_rc == 137 ]] && ((step_ms < limit_ms - 50)); then step_rc=$((step_rc + 1000)); fi
  step_leftover=$(zt_kill_tagged "$zt_run_id\\.$key")
  [[ -n $step_leftover ]] && zt_say "   killed what ${zt_name[$key]} left running: pid $step_leftover" &&
    echo "run_check.sh: killed what this step left running: pid $step_leftover" >>"$step_log"
  step_limit_ms=$limit_ms
}

# The result word for step_rc; a failure or a timeout at the step's own cap fails the check. Sets result and why.
zt_classify() {
  why=""
  case $step_rc in
    0) result="PASS" ;;
    77) result="SKIP" ;;
    124 | 137)
      if ((step_cut)); then
        result="not run" why="cut at $(zt_whole_secs "$step_limit_ms")s by the time budget"
      else
        result="TIMEOUT" why="no end within its $(zt_whole_secs "$step_limit_ms")s: killed"
        zt_failed=1
      fi
      ;;
    125) result="not run" why=$(sed -n 's/^-- .*: not run: //p' "$step_log" | head -1) ;;
    126) result="not selected" why="ZT_CHECK_ONLY=$ZT_CHECK_ONLY" ;;
    *)
      local rc=$((step_rc % 1000))
      if ((rc > 128)); then
        why="killed by signal $((rc - 128)) (SIG$(kill -l $((rc - 128)) 2>/dev/null))"
      else
        why="exit $rc"
      fi
      result="FAIL"
      zt_failed=1
      ;;
  esac
}
# zt_finish_step KEY DETAIL [WORD]: the step's row, its result (WORD in place of PASS, e.g. "measured") and DETAIL
# after the reason; then the table.
zt_finish_step() {
  local key=$1 detail=$2
  zt_classify
  [[ $result == PASS && -n ${3:-} ]] && result=$3
  [[ $step_rc == 125 || $step_rc == 126 ]] && detail=""  # nothing ran: only the reason
  [[ -n $step_leftover ]] && detail="${detail:+$detail; }killed what it left running (pid $step_leftover)"
  [[ -n $why ]] && detail="$why${detail:+; $detail}"
  local took=""
  [[ $step_rc == 125 || $step_rc == 126 ]] || took=$(zt_whole_secs "$step_ms")
  zt_set "$key" "$result" "$detail" "$took"
  zt_print_summary
}
