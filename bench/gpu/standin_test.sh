#!/usr/bin/env bash
# CTest gpu_check_standin: bench/gpu/standin.sh returns what the GPU machine's tool returns and nothing more (8 files,
# 16 MiB each, 64 MiB together, 2 folders down, plain names; the last 12,000 characters of output), kills the
# command at its limit with what it started, copies tracked files and carried paths only, and refuses a tree over
# 64 MiB. About 15 s.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
standin=$here/standin.sh
tmp=$(mktemp -d)
probe=build-standin-test.$$  # ignored by the repository's .gitignore (/build*/)
trap 'rm -rf "$tmp" "${repo:?}/$probe"' EXIT
. "$here/test_helpers.sh"

# 1. The limits on what comes back.
bash "$standin" --limit 60 --result "$tmp/r1" -- '
  mkdir -p $OUT/a/b/c "$OUT/bad name"
  for i in 1 2 3 4 5 6 7 8 9; do echo $i >$OUT/f$i; done
  echo x >$OUT/a/b/ok; echo y >$OUT/a/b/c/deep; echo z >"$OUT/bad name/f"
  ln -s f1 $OUT/link; mkfifo $OUT/fifo; head -c 17M /dev/zero >$OUT/a/big' >"$tmp/r1.txt"
check "exit status 0 passed through" [ "$(field "$tmp/r1" rc)" = 0 ]
check "8 files kept, in path order" [ "$(field "$tmp/r1" files)" = "a/b/ok f1 f2 f3 f4 f5 f6 f7" ]
check "2 folders down kept, their contents too" [ "$(cat "$tmp/r1/files/a/b/ok")" = x ]
left=$(field "$tmp/r1" files_left_out)
for want in "a/b/c/deep (a folder too deep)" "a/big (over 16 MiB)" "bad name/f (a name with odd characters)" \
            "f8 (over 8 files)" "f9 (over 8 files)" "fifo (not a plain file)" "link (a link)"; do
  check "left out and listed: $want" grep -qF "$want" <<<"$left"
done
check "nothing left out comes back" [ ! -e "$tmp/r1/files/f8" ] && [ ! -e "$tmp/r1/files/a/big" ]

# 2. 64 MiB together; the output's tail; an exit status.
bash "$standin" --result "$tmp/r2" -- '
  for i in 1 2 3 4 5; do head -c 15M /dev/zero >$OUT/g$i; done
  for i in $(seq 1 2000); do printf "line %05d\n" $i; done; exit 3' >"$tmp/r2.txt"
check "exit status 3 passed through" [ "$(field "$tmp/r2" rc)" = 3 ]
check "files up to 64 MiB together" [ "$(field "$tmp/r2" files)" = "g1 g2 g3 g4" ]
check "the file past 64 MiB listed" grep -qF "g5 (over 64 MiB together)" <<<"$(field "$tmp/r2" files_left_out)"
check "output tail: the last 12,000 characters" [ "$(wc -c <"$tmp/r2/output_tail.txt")" = 12000 ]
check "output tail ends with the last line" [ "$(tail -1 "$tmp/r2/output_tail.txt")" = "line 02000" ]

# 3. Killed at the limit, with what it started (in its group, and in a session of its own).
start=$SECONDS
PIDS=$tmp/pids bash "$standin" --limit 2 --result "$tmp/r3" -- '
  echo $OUT >$PIDS.out; sleep 300 & echo $! >>$PIDS; setsid sleep 300 & echo $! >>$PIDS; echo started; sleep 300' \
  >"$tmp/r3.txt"
check "killed at the limit: rc 137, timed_out" [ "$(field "$tmp/r3" rc)" = 137 ] &&
  [ "$(field "$tmp/r3" timed_out)" = true ]
check "killed within a few seconds of its 2 s limit" [ $((SECONDS - start)) -lt 15 ]
check "the output before the kill comes back" grep -qx started "$tmp/r3/output_tail.txt"
alive=""
while read -r p; do  # a zombie is dead (this machine's init may be slow to reap it)
  state=$(ps -o stat= -p "$p")
  [[ -n $state && $state != Z* ]] && alive="$alive $p"
done <"$tmp/pids"
check "nothing it started is left running" [ -z "$alive" ]
check "its working copy is removed" [ ! -e "$(cat "$tmp/pids.out")" ]

# 4. The tree: tracked files travel, ignored ones only when carried; over 64 MiB is refused.
mkdir -p "$repo/$probe" && echo carried >"$repo/$probe/file"
bash "$standin" --result "$tmp/r4" -- "test -f bench/gpu/standin.sh && ! test -e $probe/file" >/dev/null
check "tracked files travel, ignored ones do not" [ "$(field "$tmp/r4" rc)" = 0 ]
bash "$standin" --carry "$probe" --carry no-such-path --result "$tmp/r5" -- "grep -qx carried $probe/file" >/dev/null
check "a carried path travels" [ "$(field "$tmp/r5" rc)" = 0 ]
check "a carried path that is not here is listed" [ "$(field "$tmp/r5" not_carried)" = no-such-path ]
head -c 65M /dev/zero >"$repo/$probe/big"
bash "$standin" --carry "$probe" --result "$tmp/r6" -- true >/dev/null 2>"$tmp/r6.err"
check "a tree over 64 MiB is refused (exit 2)" [ $? = 2 ] && grep -q "larger than 64 MiB" "$tmp/r6.err"

[[ $failed == 0 ]] && echo "PASSED: standin.sh keeps to the device tool's limits"
exit $failed
