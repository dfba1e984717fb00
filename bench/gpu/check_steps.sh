# shellcheck shell=bash
# The GPU check's steps, sourced by run_check.sh (which sets bundle, repo, here, python, batch, mpirun, run and the
# check_lib.sh state): each runs one program under zt_run_step and turns its log into a row of the summary.

register_rows() {
  zt_row probe always "device probe: nvidia-smi, CUDA runtime, libraries"
  zt_row mpi always "bundled Open MPI: 2-rank smoke test"
  zt_row ops ops "CUDA op tests (all ops vs CPU, fp32+bf16, GPT-2 step)"
  zt_row gpt2 ops "one step at GPT-2 124M shapes vs CPU (fp32+bf16)"
  zt_row throughput throughput "zerotrain GPT-2 124M, B=$batch T=1024 bf16"
  zt_row profile throughput "zerotrain: where a step's time goes (top 3 ops)"
  zt_row nccl nccl "NCCL single-rank smoke test"
  zt_row zero1 zero "ZeRO on CUDA vs CPU, 1 rank (staged MPI comm)"
  zt_row sanprobe sanitizer "compute-sanitizer runs on this device"
  zt_row racecheck sanitizer "compute-sanitizer racecheck on attention"
  zt_row zero4 zero "4 ranks share the GPU: staged comm + ZeRO 0-3 vs CPU"
  zt_row ckpt ckpt "checkpoints: GPU save -> CPU load -> GPU load, bitwise"
  zt_row train train "trainer: 4-rank ZeRO-3 on the shared GPU (--comm mpi)"
  zt_row torch_compile torch "PyTorch torch.compile, same model and step, bf16"
  zt_row target torch "target: >= 1.1x torch.compile and MFU >= 0.55"
  zt_row memcheck sanitizer "compute-sanitizer memcheck on the op tests (subset)"
  zt_row var_epilogues variants "variant: --cuda_epilogues on (GELU, bias grads in cuBLASLt)"
  zt_row var_bf16act variants "variant: --cuda_activations bf16 (activations held in bf16)"
  zt_row var_all variants "variant: every issue-19 switch on (bf16 activations, epilogues, graphs, fa2)"
  zt_row var_bf16res variants "variant: --cuda_activations bf16_residual (the residual stream too)"
  zt_row var_copies variants "variant: ZT_CUDA_PARAM_COPY=0 (round per matmul)"
  zt_row var_fp32attn variants "variant: ZT_CUDA_ATTENTION=fp32 (no tensor cores)"
  zt_row var_dkv3 variants "variant: ZT_CUDA_ATTENTION_DKV_BLOCKS=3 (3 blocks/SM)"
  zt_row var_graphs variants "variant: --cuda_graphs on (one CUDA graph per micro-step)"
  zt_row var_fa2 variants "variant: --cuda_attention fa2 (128-row tiles, cp.async)"
  zt_row torch_eager torch "PyTorch eager, same model and step, bf16"
}

# The line a test printed about how it ended (Catch2's summary, PASSED / FAILED lines). Colour codes go first: under
# mpirun a rank's stdout is a pty, so Catch2 colours its summary.
summary_of() {
  sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -E "^(SKIPPED|All tests passed|test cases:|PASSED|FAILED|FAIL:)" | tail -1
}
skip_rows() {  # REASON KEY...: rows that cannot run (the first reason given stays)
  local why=$1 k
  shift
  for k in "$@"; do [[ -n ${zt_skip[$k]:-} ]] || zt_skip[$k]=$why; done
}

write_environment() {
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(hostname) $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ { print $2 / 1048576 " GiB" }' /proc/meminfo)"
    echo "limit: ${limit_s}s for the command, ${budget_s}s for the steps (time scale $zt_scale)"
    echo "cuBLAS from: ${ZT_CUBLAS_DIR:-not found}"
    echo "libcuda.so.1 from: ${ZT_CUDA_DRIVER_DIR:-not found}"
    echo "NCCL: ${ZT_NCCL_LIBRARY:-not found (the NCCL checks are skipped)}"
    echo "bundle unpacked in: $ZT_BUNDLE_ROOT"
    echo "library path of the bundle's programs: $ZT_BUNDLE_LIBRARY_PATH"
    echo "LD_LIBRARY_PATH of everything else: ${LD_LIBRARY_PATH:-(unset)}"
    echo "Open MPI / PMIx settings: $(env | grep -E '^(OMPI|PMIX)_MCA_' | sort | paste -sd' ')"
    echo "python: $(command -v "$python" || echo "$python: not found")"
    echo "compute-sanitizer: $(sanitizer_path || echo "not found")"
    echo "line buffering: ${zt_linebuf[*]:-none (no stdbuf)}"
    df -h /dev/shm "${TMPDIR:-/tmp}" 2>/dev/null
    echo
    cat "$bundle/MANIFEST.txt"
  } >"$zt_logs/environment.txt" 2>&1
}

# ---- the device: nvidia-smi (and its full report: compute mode, memory), the libraries each bundled program
# resolves, then the CUDA runtime itself through the bundled test binary (it exits 77 without a device) ----
probe_device() {
  local query="" smi_card="" smi="not installed" f
  if command -v nvidia-smi >/dev/null 2>&1; then
    smi="failed (nvidia-smi.txt)"
    timeout -k 5 30 nvidia-smi >"$zt_logs/nvidia-smi.txt" 2>&1
    timeout -k 5 30 nvidia-smi -q >"$zt_logs/nvidia-smi-q.txt" 2>&1
    # Its answer only when it succeeded: without a driver it prints why on stdout.
    query=$(timeout -k 5 20 nvidia-smi --query-gpu=name,driver_version,compute_mode,memory.total \
              --format=csv,noheader 2>/dev/null) && query=$(head -1 <<<"$query") || query=""
    smi_card=$(cut -d, -f1 <<<"$query" | sed 's/ *$//')
    [[ -n $query ]] && smi=$query
  fi
  compute_mode=$(cut -s -d, -f3 <<<"$query" | tr -d ' ')
  for f in "$ZT_BUNDLE_ROOT"/bin/*; do
    echo "== $f"
    LD_LIBRARY_PATH=$ZT_BUNDLE_LIBRARY_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} timeout -k 5 30 ldd "$f"
  done >"$zt_logs/ldd.txt" 2>&1
  local missing
  missing=$(awk '/=> not found/ { print $1 }' "$zt_logs/ldd.txt" | sort -u | paste -sd' ')
  zt_run_step probe 60 device-probe.log "${run[@]}" test_cuda_ops --list-tests
  zt_card=$(sed -n 's/^CUDA device 0: //p' "$step_log" | head -1)
  # Catch2's exit status after --list-tests is the number of test cases listed; a device and a list is a pass.
  [[ -n $zt_card && $step_rc != 77 ]] && ((step_rc < 124)) && grep -q "test case" "$step_log" && step_rc=0
  local detail="${zt_card:-no CUDA device}; nvidia-smi: $smi; cuBLAS ${ZT_CUBLAS_DIR:-not found}"
  [[ -n $missing ]] && detail="$detail; not found: $missing"
  if [[ $step_rc == 0 && -n $zt_card ]]; then
    zt_finish_step probe "$detail"
  elif [[ -z $smi_card ]]; then
    no_device "$detail"
  else  # a GPU is there, but the bundle's programs cannot use it: the rest of the bundle cannot run
    zt_card=$smi_card
    [[ $step_rc == 77 ]] && step_rc=1 && detail="the CUDA runtime sees no device; $detail"
    zt_finish_step probe "$detail (device-probe.log, ldd.txt)"
    skip_rows "the device probe failed" mpi ops gpt2 throughput nccl zero1 sanprobe racecheck zero4 ckpt train \
      memcheck var_epilogues var_bf16act var_all var_bf16res var_copies var_fp32attn var_dkv3 var_graphs var_fa2
  fi
  # Ranks share the GPU only in the Default compute mode; the check measures the card as it finds it.
  [[ -n $compute_mode && $compute_mode != Default ]] &&
    skip_rows "compute mode $compute_mode: ranks cannot share the GPU" zero4 ckpt train
  return 0
}
no_device() {  # DETAIL: nothing else can run; the summary and logs still go to the output folder
  local k
  zt_card=""
  local why="no device: $1"
  zt_say "run_check.sh: $why. Nothing else was run."
  zt_set probe "no device" "$1" "$(zt_whole_secs "$step_ms")"
  for k in "${zt_order[@]}"; do [[ $k == probe ]] || zt_set "$k" "not run" "no device"; done
  zt_state="no device"
  zt_packer_stop
  zt_print_summary
  zt_pack_logs
  exit 3
}

# ---- the bundled Open MPI on this machine: 2 zerotrain ranks on the CPU. Should the defaults of env.sh fail,
# shared memory is swapped for TCP over loopback; without any working setting the MPI steps are not run ----
mpi_smoke() {
  local args=(-np 2 "$ZT_BUNDLE_ROOT/bin/zerotrain" train --device cpu --preset tiny --max_steps 2 --threads 1)
  zt_run_step mpi 30 mpi_smoke.log "${mpirun[@]}" "${args[@]}" --output_dir "$zt_scratch/work/mpi_smoke"
  if [[ $step_rc != 0 && $step_rc != 126 && $step_rc != 125 ]]; then
    local first_log=${step_log##*/}
    zt_say "   the MPI smoke test failed ($first_log); again with btl self,tcp over loopback"
    OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=lo zt_run_step mpi 30 mpi_smoke_tcp.log "${mpirun[@]}" \
      "${args[@]}" --output_dir "$zt_scratch/work/mpi_smoke_tcp"
    if [[ $step_rc == 0 ]]; then
      export OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=lo
      zt_finish_step mpi "with btl self,tcp over lo: self,vader failed ($first_log)"
      return
    fi
  fi
  zt_finish_step mpi "$(grep -m1 -E "^done: " "$step_log")"
  [[ $result == PASS || $result == "not selected" ]] ||
    skip_rows "the 2-rank MPI smoke test failed (mpi_smoke.log)" nccl zero1 zero4 ckpt train
}

# ---- every CUDA op against its CPU twin (fp32 and bf16), whole GPT-2 steps; then one step at GPT-2 124M's shapes
# (2 of its layers, T = 1024, the 50257-token vocabulary), the sizes the throughput run meets ----
step_ops() {
  local filter=()
  [[ -n ${ZT_OPS_FILTER:-} ]] && filter=("$ZT_OPS_FILTER")
  zt_run_step ops 150 test_cuda_ops.log "${run[@]}" test_cuda_ops --durations yes "${filter[@]}"
  # The Catch2 summary, then the names of the failed test cases (printed by the test's listener).
  zt_finish_step ops "$(grep -hE "^(All tests passed|test cases:|FAILED CASES:)" "$step_log" | LC_ALL=C sort -r |
                          paste -sd' ')"
  zt_run_step gpt2 90 test_cuda_ops_gpt2.log "${run[@]}" test_cuda_ops --durations yes "[gpt2]"
  zt_finish_step gpt2 "$(summary_of "$step_log")"
}

# ---- zerotrain GPT-2 124M, T=1024, bf16: tokens/s and MFU (docs/gpu-results.md), then 2 profiled steps ----
bench_args=(gpt2_cuda_bench --preset gpt2 --seq_len 1024)
step_throughput() {
  zt_run_step throughput 120 zt_throughput.log "${run[@]}" "${bench_args[@]}" --batch "$batch" --steps 10 \
    --warmup 3 --profile_steps 2
  zt_tps=$(sed -n 's/^zt_tokens_per_s=//p' "$step_log")
  zt_mfu=$(sed -n 's/^zt_mfu=\([0-9.]*\).*/\1/p' "$step_log")
  local mem
  mem=$(sed -n 's/^device memory in use after one step: //p' "$step_log")
  zt_finish_step throughput "${zt_tps:-?} tokens/s, MFU ${zt_mfu:-?}, device memory ${mem:-?}" measured
  local top
  top=$(awk '/^where a step.s time goes/ { on = 1; next } on && $1 != "op" && $1 != "total" && NF >= 4 {
               printf "%s%s %s", (n++ ? ", " : ""), $1, $4; if (n == 3) exit }' "$step_log")
  if [[ -n $top ]]; then
    zt_set profile "measured" "$top"
  elif [[ $step_rc == 126 ]]; then
    zt_set profile "not selected" ""
  else
    zt_set profile "not measured" "no profile table in zt_throughput.log"
  fi
}

# ---- NCCL on one rank (skipped when no libnccl.so.2 is found: env.sh looks in the CUDA toolkit and PyTorch's
# wheels); the staged MPI comm and ZeRO stages 0-3 on CUDA against the CPU, on 1 rank and on 4 sharing the GPU ----
step_nccl() {
  zt_run_step nccl 60 nccl_np1.log "${mpirun[@]}" -np 1 "$ZT_BUNDLE_ROOT/bin/test_nccl_comm"
  zt_finish_step nccl "$(summary_of "$step_log")"
}
step_zero() {
  local np=$1
  zt_run_step "zero$np" $((np == 1 ? 60 : 120)) "cuda_zero_np$np.log" env OMP_NUM_THREADS=2 "${mpirun[@]}" \
    -np "$np" "$ZT_BUNDLE_ROOT/bin/test_cuda_zero"
  zt_finish_step "zero$np" "$(summary_of "$step_log")"
}

# ---- compute-sanitizer: first a short run that shows whether it works here at all (on some machines it refuses
# the device: "Device not supported", then error 999), then racecheck on the attention tests (the kernels that
# share memory between warps), later memcheck on the op tests without the whole-model cases ----
sanitizer_path() { command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null; }
# The tool itself keeps this machine's libraries: it starts run.sh, which execs the bundled test in the same process.
sanitizer_run() {  # KEY CAP LOG TOOL FILTER [TOOL OPTIONS...]
  zt_run_step "$1" "$2" "$3" "$sanitizer" --tool "$4" --target-processes all --print-limit 20 --error-exitcode 99 \
    "${@:6}" "${run[@]}" test_cuda_ops "$5"
}
sanitizer_row() {  # KEY
  zt_finish_step "$1" "$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$step_log" | tail -1 | sed 's/^=* *//')"
}
step_sanitizer_probe() {
  sanitizer=$(sanitizer_path)
  if [[ -z $sanitizer ]]; then
    local k
    for k in sanprobe racecheck memcheck; do zt_set "$k" "SKIP" "compute-sanitizer is not installed"; done
    return
  fi
  sanitizer_run sanprobe 45 sanitizer_probe.log memcheck "[squared_norm]"
  local refused
  refused=$(grep -m1 -iE "device not supported|error 999|unknown error" "$step_log")
  if [[ -n $refused ]]; then
    step_rc=77
    zt_finish_step sanprobe "refused: $refused"
    skip_rows "compute-sanitizer refused the device (sanitizer_probe.log)" racecheck memcheck
    zt_set racecheck "SKIP" "${zt_skip[racecheck]}"
    zt_set memcheck "SKIP" "${zt_skip[memcheck]}"
    return
  fi
  sanitizer_row sanprobe
  [[ $result == PASS || $result == "not selected" ]] ||
    skip_rows "the compute-sanitizer probe did not pass (sanitizer_probe.log)" racecheck memcheck
}
step_racecheck() {
  [[ -n ${sanitizer:-} && ${zt_result[racecheck]} == pending ]] || return 0
  sanitizer_run racecheck 90 racecheck.log racecheck "[attention]"
  sanitizer_row racecheck
}
step_memcheck() {
  [[ -n ${sanitizer:-} && ${zt_result[memcheck]} == pending ]] || return 0
  sanitizer_run memcheck 120 memcheck.log memcheck "~[model]~[copies]~[determinism]" --leak-check no
  sanitizer_row memcheck
}

# ---- checkpoints from device memory through the zerotrain binary: GPU save -> CPU load + save -> GPU load + save,
# all bitwise equal; a GPU run resumed from the CPU's file equals an uninterrupted one. Python (standard library)
# runs with this machine's libraries; its zerotrain ranks get the bundle's through mpirun.sh ----
step_ckpt() {
  zt_run_step ckpt 150 ckpt_roundtrip.log env ZEROTRAIN="$ZT_BUNDLE_ROOT/bin/zerotrain" \
    ZT_MPIEXEC="$bundle/mpirun.sh" "$python" "$repo/test/cuda/ckpt_device_roundtrip.py"
  zt_finish_step ckpt "$(summary_of "$step_log")"
}

# ---- the trainer: 4 ranks on this one GPU, ZeRO-3 through the staged MPI comm, bf16, the `small` preset; the loss
# must fall by more than 0.5 ----
step_train() {
  local out=$zt_scratch/work/train_zero3_np4
  zt_run_step train 90 train_zero3_np4.log env OMP_NUM_THREADS=2 "${mpirun[@]}" -np 4 \
    "$ZT_BUNDLE_ROOT/bin/zerotrain" train --device cuda --comm mpi --zero_stage 3 --preset small --max_steps 60 \
    --global_batch_size 16 --micro_batch_size 4 --learning_rate 3e-3 --log_interval 10 --threads 1 --output_dir "$out"
  mkdir -p "$zt_logs/train_zero3_np4"
  find "$out" -maxdepth 1 -type f \( -name '*.jsonl' -o -name '*.json' -o -name '*.toml' \) \
    -exec cp {} "$zt_logs/train_zero3_np4/" \; 2>/dev/null
  local done_line first last
  done_line=$(grep -E "^done: " "$step_log" | tail -1)
  read -r first last < <(sed -n 's/^done: .*loss \([0-9.]*\) -> \([0-9.]*\).*/\1 \2/p' "$step_log")
  if [[ $step_rc == 0 ]] && ! awk -v a="${first:-0}" -v b="${last:-9}" 'BEGIN { exit !(b < a - 0.5) }'; then
    step_rc=1
    done_line="loss did not fall by 0.5: $done_line"
  fi
  zt_finish_step train "${done_line:-no done line} | $(grep -m1 -E "^device " "$step_log" | cut -c1-60)"
}

# ---- the same step in PyTorch on this machine (KEY, then --compile or nothing), with this machine's libraries ----
step_torch() {
  local key=$1
  zt_run_step "$key" $([[ $key == torch_compile ]] && echo 180 || echo 90) "$key.log" "$python" \
    "$here/torch_gpt2_cuda.py" "${@:2}" --batch "$batch" --steps 10 --warmup 3
  # No CUDA in this machine's PyTorch is what a rehearsal on the CPU meets: a skip there, a failure on a GPU.
  [[ $step_rc == 3 && -n $zt_rehearsal ]] && step_rc=77
  local tps
  tps=$(sed -n 's/^torch_tokens_per_s=//p' "$step_log")
  [[ $key == torch_compile ]] && tc_tps=$tps
  zt_finish_step "$key" "${tps:-?} tokens/s$( [[ $step_rc == 77 ]] && echo "; $(grep -m1 '^no device' "$step_log")")" \
    measured
}
row_target() {
  if [[ -n ${zt_tps:-} && -n ${tc_tps:-} ]]; then
    local ratio met
    ratio=$(awk -v a="$zt_tps" -v b="$tc_tps" 'BEGIN { printf "%.2f", a / b }')
    met=$(awk -v r="$ratio" -v m="${zt_mfu:-0}" 'BEGIN { print (r >= 1.1 && m >= 0.55) ? "MET" : "NOT MET" }')
    zt_set target "$met" "${ratio}x torch.compile, MFU ${zt_mfu:-?}"
  else
    zt_set target "not measured" "a throughput run above did not finish"
  fi
}

# ---- what the bf16 mode's choices buy, with whatever budget is left: the throughput step again with the cuBLASLt
# epilogues folded in (first: the switch still off by default, with its own per-op table beside the main run's),
# without the bf16 operand copies, with the fp32 attention kernels, and with the dK/dV kernel capped at 3 blocks an
# SM (if a row is faster, make it the default): tokens/s and the main run's ratio to each ----
step_variants() {
  variant var_epilogues zt_throughput_epilogues.log --cuda_epilogues=on --profile_steps=1
  variant var_bf16act zt_throughput_bf16act.log --cuda_activations=bf16 --profile_steps=1
  # Every switch of issue 19 on together (the configuration it aims at), then the residual stream in bf16 too.
  variant var_all zt_throughput_all.log --cuda_activations=bf16 --cuda_epilogues=on --cuda_graphs=on \
    --cuda_attention=fa2
  variant var_bf16res zt_throughput_bf16res.log --cuda_activations=bf16_residual
  variant var_copies zt_throughput_no_copies.log ZT_CUDA_PARAM_COPY=0
  variant var_fp32attn zt_throughput_fp32_attention.log ZT_CUDA_ATTENTION=fp32
  variant var_dkv3 zt_throughput_dkv3.log ZT_CUDA_ATTENTION_DKV_BLOCKS=3
  # The step's ~300 launches as one graph replay (its log's zt_graphs line: ops per micro-step, how many the graph
  # held); no per-op table: the profiled steps run op by op, so theirs is the main run's.
  variant var_graphs zt_throughput_graphs.log --cuda_graphs=on
  variant var_fa2 zt_throughput_fa2.log --cuda_attention=fa2 --profile_steps=1
}
variant() {  # KEY LOG SETTING...: each VAR=VALUE (the environment) or --flag=value (a gpt2_cuda_bench flag)
  local setting env_args=() flag_args=()
  for setting in "${@:3}"; do
    if [[ $setting == --* ]]; then flag_args+=("${setting%%=*}" "${setting#*=}"); else env_args+=("$setting"); fi
  done
  zt_run_step "$1" 45 "$2" env "${env_args[@]}" "${run[@]}" "${bench_args[@]}" "${flag_args[@]}" --batch "$batch" \
    --steps 5 --warmup 2
  local tps mem ratio
  tps=$(sed -n 's/^zt_tokens_per_s=//p' "$step_log")
  mem=$(sed -n 's/^device memory in use after one step: //p' "$step_log")
  ratio=$(awk -v a="${zt_tps:-}" -v b="${tps:-}" 'BEGIN { if (a > 0 && b > 0) printf ", main run %.2fx this", a / b }')
  zt_finish_step "$1" "${tps:-?} tokens/s${ratio}, device memory ${mem:-?}" measured
}
