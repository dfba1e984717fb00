# Shared helpers of the shell end-to-end tests. Usage, at the top of a test:
#   . "$(dirname "$0")/lib.sh"; zt_test_setup NAME [--mount]
# Sets ZT, MPIEXEC, PY, work (a fresh directory), mnt (with --mount: an empty mount point under work), the pass/fail
# counters and an EXIT trap that unmounts mnt and removes work (kept when a check failed). End with zt_test_finish.
ZT=${ZEROTRAIN:?ZEROTRAIN must point at the zerotrain binary}
MPIEXEC=${ZT_MPIEXEC:-mpirun}
PY=${ZT_PYTHON:-python3}
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
fails=0 checks=0 keep=0
t0=$SECONDS
zt_test_name=test
zt_test_setup() {
  zt_test_name=$1
  work=$(mktemp -d "/tmp/zt_$1.XXXXXX")
  mnt=
  if [ "${2:-}" = --mount ]; then mnt=$work/mnt; mkdir -p "$mnt"; fi
  trap zt_test_cleanup EXIT
}
zt_test_cleanup() {
  [ -n "$mnt" ] && mountpoint -q "$mnt" && umount "$mnt"
  [ "$keep" = 1 ] || rm -rf "$work"
}
zt_test_finish() {
  echo "${zt_test_name}_test: $((checks - fails)) of $checks checks passed in $((SECONDS - t0))s"
  [ "$fails" -eq 0 ] && exit 0
  keep=1
  echo "work dir kept: $work (logs)"
  exit 1
}
pass() { checks=$((checks + 1)); echo "  ok: $1"; }
fail() { checks=$((checks + 1)); fails=$((fails + 1)); echo "  FAIL: $1"; }
expect() { if [ "$1" = "$2" ]; then pass "$3 ($1)"; else fail "$3: got '$1', want '$2'"; fi; }
has() { if grep -qF -- "$2" "$1"; then pass "message: '$2'"; else fail "no '$2' in $1: $(grep -i error "$1" | head -3)"; fi; }
# Committed checkpoints in DIR, as "2 4 6" (ascending step).
steps_in() { ls -1 "$1" | sed -n 's/^checkpoint-\([0-9]*\)$/\1/p' | sort -n | tr '\n' ' ' | sed 's/ $//'; }
# Temporary files a save leaves behind in DIR (none after a commit or a cleaned-up failure).
leftovers() { find "$1" -mindepth 1 -maxdepth 1 \( -name '.checkpoint-*' -o -name '.latest.tmp' \) -printf '%f '; }
# The manifest's {dataset: xxh64} map of checkpoint DIR, sorted, as one comparable line.
xxh_map() {
  "$PY" -c 'import json,sys; m=json.load(open(sys.argv[1]+"/manifest.json")); print(json.dumps({k: v["xxh64"] for k, v in sorted(m["datasets"].items())}))' "$1" 2>&1
}
verify() { if "$ZT" ckpt verify "$1" >"$work/verify.log" 2>&1; then pass "ckpt verify $(basename "$1")"; else fail "ckpt verify $1: $(cat "$work/verify.log")"; fi; }
# Mounts a fresh tmpfs of BYTES on mnt (needs root).
mount_tmpfs() {
  mountpoint -q "$mnt" && umount "$mnt"
  mount -t tmpfs -o size="$1" tmpfs "$mnt" || { echo "FAIL: cannot mount a tmpfs (needs root)"; exit 1; }
}
